// The second authorization path, proven like the first. SECURITY DEFINER functions in `crm` bypass
// row-level security and re-check rights in PL/pgSQL. Generated from the catalog: every such function
// that crm_user may execute is called (SQL as crm_user, committed) by
//   - the Administrator of another organization (B), and
//   - a member of the same organization (A) whose role gives no rights over the target's rows,
// with organization A's ids (and, for B's Administrator, with one argument from A and the others from
// B). Afterwards, A's rows — read as the owner — must be unchanged, and a call aimed at A's rows must be
// refused (NOT_FOUND / FORBIDDEN, or the refusal an entry point answers with).
//
// Arguments are derived from their names and types (see `derive`): `<noun>_id` / `<noun>` uuid → a row
// of A in the table named after the noun; a bare `id` → the table named after the function
// (`delete_customer(id)` → customers); text arguments by name (login, email, organization, …). A new
// function is covered without a test written for it. Where the rule cannot work, add an entry to
// ARG_OVERRIDES below (the failure message says which).
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import type pg from "pg";
import { asUser, createTestDb, type TestDb } from "../helpers/db.ts";
import { addMember } from "../helpers/identity.ts";
import { seedTenant, type SeededTenant } from "../helpers/tenant.ts";

let db: TestDb;
let a: SeededTenant;
let b: SeededTenant;
let outsider: string;

interface Fn {
  name: string;
  args: { name: string; type: string }[];
}

interface Ctx {
  /** The organization whose ids are used. */
  org: SeededTenant;
  username: string;
  email: string;
  customerName: string;
}

/**
 * Per-argument values where the name rule cannot work: `"crm.<function>.<argument>"`, given the
 * target's fixture and the calling user.
 */
const ARG_OVERRIDES: Record<string, (target: Ctx, caller: string) => unknown | Promise<unknown>> = {
  // The status a task can move to from its fixture state (an invalid one would stop at validation).
  "crm.update_task_status.status": () => "completed",
  // The task is the target; the assignee is someone the caller may assign (themselves), so the call
  // reaches the task's scope check instead of stopping at "not a member".
  "crm.assign_task.assignee_id": (_t, caller) => caller,
  // The reference guard's existence helper: asked about the target's customer.
  "crm.reference_exists.tbl": () => "crm.customers",
  "crm.reference_exists.cols": () => ["id"],
  "crm.reference_exists.vals": (t) => [t.org.customerId],
  // Lists of the target's records.
  "crm.score_leads.customer_ids": (t) => [t.org.customerId],
  "crm.score_leads.contact_ids": (t) => [t.org.contactId],
  // Finance: a valid line (an empty list stops at validation), the target's order and schedule.
  "crm.create_invoice.items": () => "{\"(Probe,1,10,0,)\"}",
  "crm.create_invoice.currency": () => "USD",
  "crm.create_invoice_from_orders.order_ids": (t) => [t.org.orderId],
  "crm.bill_schedule_period.schedule_id": async (t) =>
    (await db.owner.query("select id from crm.billing_schedules where organization_id = $1 limit 1", [t.org.id])).rows[0]?.id,
  // Campaigns: the target's campaign and customers.
  "crm.execute_campaign.id": (t) => t.org.campaignId,
  "crm.add_campaign_recipients.customer_ids": (t) => [t.org.customerId],
  "crm.remove_campaign_recipients.customer_ids": (t) => [t.org.customerId],
};

/** Functions that answer success by design whatever they are given; only "nothing of A changed" is checked. */
const ANSWERS_SUCCESS: Record<string, string> = {
  "crm.request_password_reset": "always answers success, so it does not reveal which addresses have accounts; the link goes to the address's owner",
};

/** Table named by an argument or function noun. */
const NOUN_TABLES: Record<string, string> = {
  membership: "organization_memberships",
  stage: "pipeline_stages",
  from_stage: "pipeline_stages",
  to_stage: "pipeline_stages",
  user: "users",
  owner: "users",
  assignee: "users",
  manager: "users",
  depends_on_task: "tasks",
  referred_by: "customers",
  organization: "organizations",
  delivery: "webhook_deliveries",
  level: "customer_levels",
  endpoint: "webhook_endpoints",
};

const TEXT_VALUES: [RegExp, (c: Ctx) => unknown][] = [
  [/^(login|identifier|username)$/, (c) => c.username],
  [/^email$/, (c) => c.email],
  [/^(organization|slug|wanted)$/, (c) => c.org.slug],
  [/^permission_code$/, () => "customers:read_all"],
  [/^(query|search)$/, (c) => c.customerName],
  [/password|token/, () => "not-the-right-secret-1"],
];

/** Text arguments that name the target (the call is "aimed at A"). */
const TARGETING_TEXT = /^(login|identifier|username|email|organization|slug|wanted)$/;

function nounOf(fn: string, arg: string): string {
  if (arg === "id") return fn.replace(/^crm\./, "").replace(/^(delete|restore|purge|archive|get|update|set|move|assign|make)_/, "");
  return arg.replace(/_id$/, "");
}

const tableCache = new Map<string, string | null>();
async function tableFor(noun: string): Promise<string | null> {
  if (tableCache.has(noun)) return tableCache.get(noun)!;
  const candidates = [NOUN_TABLES[noun], `${noun}s`, noun.replace(/y$/, "ies"), `${noun}es`, noun].filter(Boolean) as string[];
  let found: string | null = null;
  for (const c of candidates) {
    const { rows } = await db.owner.query("select to_regclass($1) is not null as ok", [`crm.${c}`]);
    if (rows[0].ok) {
      found = `crm.${c}`;
      break;
    }
  }
  tableCache.set(noun, found);
  return found;
}

async function rowOf(table: string, org: SeededTenant): Promise<string | undefined> {
  if (table === "crm.users") return org.memberId;
  if (table === "crm.organizations") return org.id;
  if (table === "crm.organization_memberships") {
    return (await db.owner.query("select id from crm.organization_memberships where organization_id = $1 and user_id = $2", [org.id, org.memberId])).rows[0]?.id;
  }
  // The fixture's rows are owned by its Sales Representative: out of scope for the outsider.
  const { rows } = await db.owner.query(`select id::text from ${table} where organization_id = $1 limit 1`, [org.id]);
  return rows[0]?.id;
}

interface Derived {
  values: unknown[];
  /** Whether some argument points at the target organization's rows or people. */
  aimed: boolean;
  problem?: string;
}

async function derive(fn: Fn, ctx: Ctx, caller: { userId: string; sameOrg: boolean }, own?: Ctx, ownIndex?: number): Promise<Derived> {
  const values: unknown[] = [];
  let aimed = false;
  for (const [i, arg] of fn.args.entries()) {
    // With `own`, every uuid argument but `ownIndex` comes from the caller's own organization.
    const c = own && ownIndex !== i && arg.type === "uuid" ? own : ctx;
    const override = ARG_OVERRIDES[`${fn.name}.${arg.name}`];
    if (override) {
      values.push(await override(c, caller.userId));
      continue;
    }
    if (arg.type === "uuid" || arg.type === "uuid[]") {
      const table = await tableFor(nounOf(fn.name, arg.name));
      const id = table ? await rowOf(table, c.org) : undefined;
      if (!id) return { values, aimed, problem: `cannot derive ${fn.name}(${arg.name} ${arg.type}): no table for "${nounOf(fn.name, arg.name)}" with a row in the fixture — add ARG_OVERRIDES["${fn.name}.${arg.name}"]` };
      values.push(arg.type === "uuid" ? id : [id]);
      if (c === ctx) aimed = true;
    } else if (arg.type === "text" || arg.type === "citext") {
      const rule = TEXT_VALUES.find(([re]) => re.test(arg.name));
      values.push(rule ? rule[1](c) : "probe");
      // Naming one's own organization is not aiming at someone else's.
      if (TARGETING_TEXT.test(arg.name) && !(caller.sameOrg && /^(organization|slug|wanted)$/.test(arg.name))) aimed = true;
    } else if (arg.type === "boolean") values.push(false);
    else if (/^(integer|smallint|bigint|numeric)/.test(arg.type)) values.push(1);
    else if (arg.type === "date") values.push(new Date().toISOString().slice(0, 10));
    else if (arg.type.startsWith("timestamp")) values.push(new Date().toISOString());
    else if (arg.type === "jsonb" || arg.type === "json") values.push("{}");
    else if (arg.type.endsWith("[]")) values.push([]);
    else return { values, aimed, problem: `cannot derive ${fn.name}(${arg.name} ${arg.type}) — add ARG_OVERRIDES["${fn.name}.${arg.name}"]` };
  }
  return { values, aimed };
}

/** A's rows as the owner sees them (excluding the caller's own account and sessions). */
async function snapshot(client: pg.Pool, org: SeededTenant, caller: string): Promise<string> {
  const tables = (
    await client.query<{ t: string }>(`
      select c.oid::regclass::text as t from pg_class c join pg_namespace n on n.oid = c.relnamespace
       where n.nspname = 'crm' and c.relkind in ('r', 'p')
         and exists (select 1 from pg_attribute x where x.attrelid = c.oid and x.attname = 'organization_id' and not x.attisdropped)
       order by 1`)
  ).rows.map((r) => r.t);
  const parts = tables.map((t) => `(select coalesce(md5(string_agg(to_jsonb(x)::text, ',' order by to_jsonb(x)::text)), '-') from ${t} x where x.organization_id = $1)`);
  parts.push(`(select md5(to_jsonb(o)::text) from crm.organizations o where o.id = $1)`);
  parts.push(`(select coalesce(md5(string_agg(to_jsonb(u)::text, ',' order by u.id)), '-') from crm.users u
                where u.id <> $2 and u.id in (select user_id from crm.organization_memberships where organization_id = $1))`);
  parts.push(`(select coalesce(md5(string_agg(s.id || ':' || coalesce(s.revoked_at::text, ''), ',' order by s.id)), '-') from crm_private.sessions s
                where s.user_id <> $2 and s.user_id in (select user_id from crm.organization_memberships where organization_id = $1))`);
  const { rows } = await client.query(`select concat_ws('|', ${parts.join(", ")}) as h`, [org.id, caller]);
  return rows[0].h;
}

const REFUSED = new Set(["CRNFD", "CRFBD", "42501", "P0002", "CRUNA", "CRCNF", "CRCRD", "CRTOK", "CRMDS", "CRDIS"]);

async function call(fn: Fn, values: unknown[], claims: { sub: string; org: string }): Promise<{ code?: string; message: string; result?: string }> {
  const params = fn.args.map((arg, i) => `${arg.name} => $${i + 1}::${arg.type}`).join(", ");
  try {
    const r = await asUser(db, claims, (c) => c.query(`select ${fn.name}(${params})::text as r`, values), { commit: true });
    const result = (r.rows as { r: string | null }[]).map((x) => x.r).join("\n");
    if (/"error"\s*:/.test(result)) return { code: "ANSWERED_ERROR", message: result, result };
    return { message: "answered without error", result };
  } catch (e) {
    const err = e as { code?: string; message: string };
    return { code: err.code, message: err.message };
  }
}

let functions: Fn[] = [];

beforeAll(async () => {
  db = await createTestDb();
  a = await seedTenant(db, "target-a");
  b = await seedTenant(db, "attacker-b");
  outsider = await addMember(db, a, "a-outsider", "Sales Representative");
  const { rows } = await db.owner.query<{ name: string; arg_names: string[] | null; arg_types: string[] }>(`
    select p.oid::regprocedure::text as sig, n.nspname || '.' || p.proname as name, p.proargnames as arg_names,
           array(select format_type(t, null) from unnest(p.proargtypes) t) as arg_types
      from pg_proc p join pg_namespace n on n.oid = p.pronamespace
     where n.nspname = 'crm' and p.prosecdef and has_function_privilege('crm_user', p.oid, 'execute')
     order by 1`);
  functions = rows.map((r) => ({ name: r.name, args: r.arg_types.map((t, i) => ({ name: r.arg_names?.[i] ?? `arg${i}`, type: t })) }));
});
afterAll(async () => {
  await db?.drop();
});

function ctxOf(org: SeededTenant, username: string): Ctx {
  return { org, username, email: `${username}@example.test`, customerName: `${org.slug} customer` };
}

describe("SECURITY DEFINER functions, generated from the catalog", () => {
  test("the catalog lists the exposed SECURITY DEFINER functions", () => {
    expect(functions.length).toBeGreaterThanOrEqual(40);
  });

  const attackers = [
    { who: "another organization's Administrator", claims: () => ({ sub: b.adminId, org: b.id }), own: () => ctxOf(b, `${b.slug}-rep`) },
    { who: "a member of the same organization without rights over the rows", claims: () => ({ sub: outsider, org: a.id }), own: () => undefined },
  ];

  for (const attacker of attackers) {
    test(`called by ${attacker.who} with A's ids: nothing of A changes, and calls aimed at A are refused`, async () => {
      const findings: string[] = [];
      const target = ctxOf(a, `${a.slug}-rep`);
      for (const fn of functions) {
        const own = attacker.own();
        // One argument from A, the others from the attacker's own organization.
        const uuidArgs = fn.args.map((x, i) => (x.type === "uuid" ? i : -1)).filter((i) => i >= 0);
        const plans: { own?: Ctx; index?: number }[] = [{}];
        if (own && uuidArgs.length > 1) for (const i of uuidArgs) plans.push({ own, index: i });
        for (const plan of plans) {
          const claims = attacker.claims();
          const d = await derive(fn, target, { userId: claims.sub, sameOrg: claims.org === a.id }, plan.own, plan.index);
          if (d.problem) {
            findings.push(d.problem);
            continue;
          }
          const before = await snapshot(db.owner, a, claims.sub);
          const res = await call(fn, d.values, claims);
          const after = await snapshot(db.owner, a, claims.sub);
          const label = `${fn.name}(${fn.args.map((x, i) => `${x.name}: ${JSON.stringify(d.values[i])}`).join(", ")})`;
          if (before !== after) findings.push(`${label} CHANGED organization A's rows (answer: ${res.code ?? "ok"} ${res.message.slice(0, 120)})`);
          if (!d.aimed || fn.name in ANSWERS_SUCCESS) continue;
          // With the caller's own row as the subject, a reference into A refused as invalid is a refusal.
          if (plan.own && (res.code === "CRVAL" || res.code === "23503")) continue;
          if (res.code === "CRVAL" || res.code === "22P02" || res.code === "23502") {
            findings.push(`${label} stopped at validation (${res.code}: ${res.message.slice(0, 100)}) before its scope check — add ARG_OVERRIDES entries so the call is valid`);
          } else if (res.code !== "ANSWERED_ERROR" && !REFUSED.has(res.code ?? "")) {
            findings.push(`${label} was not refused: ${res.code ?? "success"} ${res.message.slice(0, 160)}`);
          }
        }
      }
      expect(findings).toEqual([]);
    });
  }

  test("a function that does change another organization is caught (the test can fail)", async () => {
    const client = await db.owner.connect();
    try {
      await client.query("begin");
      await client.query(`create function crm.zz_rename_customer(customer_id uuid) returns void language sql security definer set search_path = pg_catalog
                          as $$ update crm.customers set name = name || '!' where id = customer_id $$`);
      const before = await snapshot(db.owner, a, b.adminId);
      await client.query("select crm.zz_rename_customer($1)", [a.customerId]);
      const { rows } = await client.query("select name from crm.customers where id = $1", [a.customerId]);
      expect(rows[0].name).toBe(`${a.slug} customer!`);
      // The snapshot taken inside the transaction differs from the one before.
      const inside = await client.query("select md5(string_agg(to_jsonb(x)::text, ',' order by to_jsonb(x)::text)) as h from crm.customers x where x.organization_id = $1", [a.id]);
      expect(before).not.toContain(inside.rows[0].h);
    } finally {
      await client.query("rollback");
      client.release();
    }
  });
});
