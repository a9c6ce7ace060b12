// Demo data (npm run seed:demo and the first npm start): the default volume in a fresh organization,
// the same as the database's own triggers and rules would have made it (histories, primary contacts,
// search vectors, audit rows), reproducible, and visible under row-level security as the roles say.
import crypto from "node:crypto";
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { asUser, createTestDb, type TestDb } from "../helpers/db.ts";
import { createOrg, type TestOrg } from "../helpers/identity.ts";
import { DEFAULT_VOLUME, SeedRefusedError, seedDemoData, type SeedSummary } from "../../src/db/seed-demo.ts";

let db: TestDb;
let org: TestOrg;
let summary: SeedSummary;

const SEED = 42;
const count = async (sql: string, params: unknown[] = [org.id]) => (await db.owner.query(sql, params)).rows[0].n as number;

beforeAll(async () => {
  db = await createTestDb();
  org = await createOrg(db, "seeded");
  summary = await seedDemoData(db.owner, org.id, { seed: SEED });
});
afterAll(async () => {
  await db?.drop();
});

describe("default volume", () => {
  test("members and teams: the extra managers and representatives, in two teams", async () => {
    const roles = await db.owner.query<{ role: string; n: number }>(
      `select r.name::text as role, count(*)::int as n from crm.organization_memberships m join crm.roles r on r.id = m.role_id
        where m.organization_id = $1 group by 1 order by 1`,
      [org.id],
    );
    // Besides the organization's system principal (every organization has one, with the System role).
    expect(Object.fromEntries(roles.rows.map((r) => [r.role, r.n]))).toEqual({ Administrator: 1, "Sales Manager": 1, "Sales Representative": 4, System: 1 });
    expect(await count("select count(*)::int as n from crm.teams where organization_id = $1")).toBe(2);
    expect(await count("select count(distinct team_id)::int as n from crm.team_members where organization_id = $1 and is_lead")).toBe(2);
  });

  test("counts: 100 customers, 2,000 tasks, 1,000 work logs, and the rest", async () => {
    expect(await count("select count(*)::int as n from crm.customers where organization_id = $1")).toBe(100);
    expect(await count("select count(*)::int as n from crm.tasks where organization_id = $1")).toBe(2000);
    expect(await count("select count(*)::int as n from crm.work_logs where organization_id = $1")).toBe(1000);
    expect(await count("select count(*)::int as n from crm.deals where organization_id = $1")).toBe(DEFAULT_VOLUME.deals);
    expect(await count("select count(*)::int as n from crm.projects where organization_id = $1")).toBe(DEFAULT_VOLUME.projects);
    expect(await count("select count(*)::int as n from crm.notes where organization_id = $1")).toBe(DEFAULT_VOLUME.notes);
    expect(await count("select count(*)::int as n from crm.task_dependencies where organization_id = $1")).toBe(DEFAULT_VOLUME.taskDependencies);
    expect(await count("select count(distinct customer_id)::int as n from crm.customer_tags where organization_id = $1")).toBeGreaterThan(30);
    expect(summary.counts.customers).toBe(100);
  });

  test("customers: both kinds, every status, owners spread over the sellers, addresses and scores", async () => {
    const { rows } = await db.owner.query(
      `select count(distinct kind)::int as kinds, count(distinct status)::int as statuses, count(distinct owner_id)::int as owners,
              count(*) filter (where kind = 'company' and (website is null or industry is null))::int as companies_without,
              count(*) filter (where billing_address is null)::int as without_address,
              count(distinct lead_score)::int as scores
         from crm.customers where organization_id = $1`,
      [org.id],
    );
    expect(rows[0]).toEqual({ kinds: 2, statuses: 4, owners: 5, companies_without: 0, without_address: 0, scores: expect.any(Number) });
    expect(rows[0].scores).toBeGreaterThan(20);
    // Status history: a chain from the first status to the current one.
    expect(
      await count(
        `select count(*)::int as n from crm.customers c where c.organization_id = $1 and c.status <> (
           select h.to_status from crm.customer_status_history h where h.customer_id = c.id order by h.changed_at desc, h.id desc limit 1)`,
      ),
    ).toBe(0);
  });

  test("contacts: 1 to 3 per customer, exactly one primary", async () => {
    const { rows } = await db.owner.query(
      `select min(n)::int as min, max(n)::int as max, count(*) filter (where p <> 1)::int as without_one_primary
         from (select c.id, count(ct.id) as n, count(ct.id) filter (where ct.is_primary) as p
                 from crm.customers c left join crm.contacts ct on ct.customer_id = c.id and ct.deleted_at is null
                where c.organization_id = $1 group by c.id) x`,
      [org.id],
    );
    expect(rows[0]).toEqual({ min: 1, max: 3, without_one_primary: 0 });
  });

  test("deals: every stage of the default pipeline; closed ones dated, lost ones with a reason", async () => {
    const { rows } = await db.owner.query(
      `select s.name::text, s.is_won, s.is_lost, count(d.id)::int as n,
              count(d.id) filter (where d.actual_close_date is null)::int as undated,
              count(d.id) filter (where d.lost_reason is null)::int as without_reason,
              count(d.id) filter (where d.probability <> s.probability)::int as off_probability
         from crm.pipeline_stages s join crm.pipelines p on p.id = s.pipeline_id and p.is_default
         left join crm.deals d on d.stage_id = s.id
        where s.organization_id = $1 group by s.id order by s.position`,
      [org.id],
    );
    expect(rows.length).toBe(6);
    for (const s of rows) {
      expect(s.n).toBeGreaterThan(0);
      expect(s.off_probability).toBe(0);
      expect(s.undated).toBe(s.is_won || s.is_lost ? 0 : s.n);
      expect(s.without_reason).toBe(s.is_lost ? 0 : s.n);
    }
  });

  test("deals: every deal has a stage history, chained from its first stage to its current one", async () => {
    expect(await count("select count(*)::int as n from crm.deals d where d.organization_id = $1 and not exists (select 1 from crm.deal_stage_history h where h.deal_id = d.id)")).toBe(0);
    const broken = await count(
      `select count(*)::int as n from (
         select h.deal_id, h.from_stage_id, h.to_stage_id, h.changed_at,
                lag(h.to_stage_id) over w as previous, lag(h.changed_at) over w as previous_at, row_number() over w as k,
                row_number() over (partition by h.deal_id order by h.changed_at desc, h.id desc) as from_end
           from crm.deal_stage_history h where h.organization_id = $1
         window w as (partition by h.deal_id order by h.changed_at, h.id)) x
       join crm.deals d on d.id = x.deal_id
      where (x.k = 1 and (x.from_stage_id is not null or x.changed_at <> d.created_at))
         or (x.k > 1 and (x.from_stage_id is distinct from x.previous or x.changed_at < x.previous_at))
         or (x.from_end = 1 and (x.to_stage_id <> d.stage_id or x.changed_at <> d.stage_changed_at))`,
    );
    expect(broken).toBe(0);
    expect(
      await count(
        `select count(*)::int as n from crm.deals d join crm.contacts c on c.id = d.contact_id
          where d.organization_id = $1 and c.customer_id <> d.customer_id`,
      ),
    ).toBe(0);
    // Closed deals were closed on the day of their last move.
    expect(
      await count(
        `select count(*)::int as n from crm.deals d where d.organization_id = $1 and d.actual_close_date is not null
            and d.actual_close_date <> (d.stage_changed_at at time zone 'UTC')::date`,
      ),
    ).toBe(0);
  });

  test("tasks: every type, status and priority; due dates past and future; completed ones stamped", async () => {
    const { rows } = await db.owner.query(
      `select count(distinct type)::int as types, count(distinct status)::int as statuses, count(distinct priority)::int as priorities,
              count(*) filter (where due_at < now())::int as past, count(*) filter (where due_at > now())::int as future,
              count(*) filter (where (status = 'completed') <> (completed_at is not null))::int as bad_completion,
              count(*) filter (where assignee_id is null)::int as unassigned,
              count(*) filter (where customer_id is not null)::int as on_customers, count(*) filter (where deal_id is not null)::int as on_deals
         from crm.tasks where organization_id = $1`,
      [org.id],
    );
    const t = rows[0];
    expect([t.types, t.statuses, t.priorities, t.bad_completion, t.unassigned]).toEqual([6, 5, 4, 0, 0]);
    expect(t.past).toBeGreaterThan(200);
    expect(t.future).toBeGreaterThan(200);
    expect(t.on_customers).toBeGreaterThan(1500);
    expect(t.on_deals).toBeGreaterThan(100);
  });

  test("projects: actual hours are the sum of their work logs", async () => {
    expect(
      await count(
        `select count(*)::int as n from crm.projects p where p.organization_id = $1 and p.actual_hours <>
           coalesce((select round(sum(w.minutes) / 60.0, 2) from crm.work_logs w where w.project_id = p.id), 0)`,
      ),
    ).toBe(0);
    expect(await count("select count(*)::int as n from crm.projects where organization_id = $1 and actual_hours > 0")).toBeGreaterThan(5);
  });
});

describe("the same as the triggers would have made it", () => {
  test("search vectors are filled and equal to what the search trigger computes", async () => {
    const client = await db.owner.connect();
    try {
      await client.query("begin");
      for (const [table, touch] of [["customers", "name = name"], ["contacts", "first_name = first_name"], ["deals", "name = name"], ["notes", "content = content"]]) {
        expect(await count(`select count(*)::int as n from crm.${table} where organization_id = $1 and search_vector is null`)).toBe(0);
        await client.query(`create temp table before_${table} as select id, search_vector from crm.${table} where organization_id = $1`, [org.id]);
        await client.query(`update crm.${table} set ${touch} where organization_id = $1`, [org.id]);
        const { rows } = await client.query(
          `select count(*)::int as n from crm.${table} t join before_${table} b using (id) where t.search_vector is distinct from b.search_vector`,
        );
        expect([table, rows[0].n]).toEqual([table, 0]);
      }
    } finally {
      await client.query("rollback");
      client.release();
    }
    // And search finds seeded records under the caller's row-level security.
    const name = (await db.owner.query("select name from crm.customers where organization_id = $1 and kind = 'company' order by name limit 1", [org.id])).rows[0].name as string;
    const hits = await asUser(db, { sub: org.adminId, org: org.id }, (c) => c.query("select entity, title from crm.search($1)", [name]));
    expect(hits.rows).toContainEqual({ entity: "customer", title: name });
  });

  test("one audit row per record, equal to what the audit trigger writes", async () => {
    for (const table of ["customers", "contacts", "customer_tags", "contact_tags", "deals", "deal_tags", "projects", "tasks", "task_dependencies", "work_logs", "notes"]) {
      const rows = await count(`select count(*)::int as n from crm.${table} where organization_id = $1`);
      const audited = await count(`select count(*)::int as n from crm.audit_log where organization_id = $1 and table_name = $2 and operation = 'INSERT'`, [org.id, table]);
      expect([table, audited]).toEqual([table, rows]);
    }
    // Insert a copy of a seeded row (or, for links, the same row again) with the trigger on, and
    // compare the two audit entries.
    const copies: [string, string][] = [
      ["customers", "true"],
      ["contacts", "not is_primary"],
      ["deals", "stage_id in (select id from crm.pipeline_stages where not is_won and not is_lost)"],
      ["projects", "status <> 'completed'"],
      ["tasks", "status in ('not_started', 'in_progress')"],
      ["work_logs", "true"],
      ["notes", "true"],
    ];
    const client = await db.owner.connect();
    try {
      await client.query("begin");
      const entry = async (table: string, recordId: string) =>
        (await client.query("select record_id, changes from crm.audit_log where table_name = $1 and record_id = $2 and operation = 'INSERT' order by id", [table, recordId])).rows;
      for (const [table, where] of copies) {
        const id = (await client.query(`select id from crm.${table} where organization_id = $1 and ${where} order by id limit 1`, [org.id])).rows[0].id as string;
        const copy = crypto.randomUUID();
        await client.query(
          `insert into crm.${table} select (jsonb_populate_record(null::crm.${table}, to_jsonb(x) || jsonb_build_object('id', $2::text)
             ${table === "customers" ? "|| jsonb_build_object('email', 'copy-' || x.email)" : ""})).* from crm.${table} x where x.id = $1`,
          [id, copy],
        );
        const [seeded] = await entry(table, id);
        const [fresh] = await entry(table, copy);
        const strip = (c: Record<string, unknown>) => Object.fromEntries(Object.entries(c).filter(([k]) => k !== "id" && k !== "email"));
        expect([table, strip(seeded.changes)]).toEqual([table, strip(fresh.changes)]);
      }
      const links: [string, string][] = [
        ["customer_tags", "customer_id, tag_id"],
        ["contact_tags", "contact_id, tag_id"],
        ["deal_tags", "deal_id, tag_id"],
        ["task_dependencies", "task_id, depends_on_task_id"],
      ];
      for (const [table, key] of links) {
        const row = (await client.query(`select ${key} from crm.${table} where organization_id = $1 order by ${key} limit 1`, [org.id])).rows[0];
        const [a, b] = Object.keys(row) as [string, string];
        await client.query(`delete from crm.${table} where ${a} = $1 and ${b} = $2`, [row[a], row[b]]);
        await client.query(`insert into crm.${table} (organization_id, ${key}) values ($1, $2, $3)`, [org.id, row[a], row[b]]);
        const recordId = [a, b].sort().map((k) => `${k}=${row[k]}`).join(":");
        const entries = await entry(table, recordId);
        expect([table, entries.length]).toEqual([table, 2]);
        expect(entries[0]).toEqual(entries[1]);
      }
    } finally {
      await client.query("rollback");
      client.release();
    }
  });
});

describe("row-level security", () => {
  test("a Sales Representative sees exactly the customers and deals they own", async () => {
    const rep = (
      await db.owner.query(
        `select m.user_id from crm.organization_memberships m join crm.roles r on r.id = m.role_id
          where m.organization_id = $1 and r.name = 'Sales Representative' order by m.user_id limit 1`,
        [org.id],
      )
    ).rows[0].user_id as string;
    const owned = await count("select count(*)::int as n from crm.customers where organization_id = $1 and owner_id = $2 and deleted_at is null", [org.id, rep]);
    const ownedDeals = await count("select count(*)::int as n from crm.deals where organization_id = $1 and owner_id = $2 and deleted_at is null", [org.id, rep]);
    expect(owned).toBeGreaterThan(0);
    expect(owned).toBeLessThan(100);
    const seen = await asUser(db, { sub: rep, org: org.id }, async (c) => ({
      customers: (await c.query("select count(*)::int as n, count(*) filter (where owner_id <> $1)::int as others from crm.customers", [rep])).rows[0],
      deals: (await c.query("select count(*)::int as n, count(*) filter (where owner_id <> $1)::int as others from crm.deals", [rep])).rows[0],
    }));
    expect(seen).toEqual({ customers: { n: owned, others: 0 }, deals: { n: ownedDeals, others: 0 } });
    // The administrator sees them all.
    const all = await asUser(db, { sub: org.adminId, org: org.id }, (c) => c.query("select count(*)::int as n from crm.customers"));
    expect(all.rows[0].n).toBe(100);
  });
});

describe("runs", () => {
  test("an organization with customers is refused unless appending", async () => {
    await expect(seedDemoData(db.owner, org.id)).rejects.toBeInstanceOf(SeedRefusedError);
    const small = { customers: 5, deals: 6, projects: 1, tasks: 10, taskDependencies: 0, workLogs: 5, notes: 5, managers: 1, reps: 4, teams: 2 };
    const more = await seedDemoData(db.owner, org.id, { seed: SEED, append: true, volume: small });
    expect(more.counts.customers).toBe(5);
    expect(await count("select count(*)::int as n from crm.customers where organization_id = $1")).toBe(105);
    // The existing members and teams are reused.
    expect(await count("select count(*)::int as n from crm.organization_memberships where organization_id = $1")).toBe(7); // 6 people + the system principal
  });

  test("the same seed gives the same data", async () => {
    const other = await createOrg(db, "seeded-again");
    const volume = { customers: 20, deals: 10, projects: 2, tasks: 50, taskDependencies: 2, workLogs: 20, notes: 10 };
    const now = new Date("2026-01-15T12:00:00Z");
    await seedDemoData(db.owner, other.id, { seed: 7, volume, now });
    const third = await createOrg(db, "seeded-third");
    await seedDemoData(db.owner, third.id, { seed: 7, volume, now });
    const fingerprint = async (orgId: string) =>
      (
        await db.owner.query(
          `select string_agg(concat_ws('|', c.name, c.status, c.lead_score, c.created_at, regexp_replace(u.username::text, '^.*-', ''),
                  (select string_agg(ct.first_name || ct.is_primary::text, ',' order by ct.created_at, ct.first_name) from crm.contacts ct where ct.customer_id = c.id)), ';' order by c.email)
             from crm.customers c join crm.users u on u.id = c.owner_id where c.organization_id = $1`,
          [orgId],
        )
      ).rows[0].string_agg as string;
    const tasks = async (orgId: string) =>
      (await db.owner.query("select string_agg(x, ';' order by x) as s from (select concat_ws('|', title, status, due_at, created_at) as x from crm.tasks where organization_id = $1) t", [orgId])).rows[0].s;
    expect(await fingerprint(third.id)).toBe(await fingerprint(other.id));
    expect(await tasks(third.id)).toBe(await tasks(other.id));
  });
});
