// Segments: the compiler refuses injection attempts (in field names, operators, keys and values) with
// VALIDATION naming the path, keeps every value bound, and its results equal hand-written queries on
// the demo data; segmentPreview answers under the caller's row-level security.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { asUser, createTestDb, sqlError, type TestDb } from "../helpers/db.ts";
import { addMember, createOrg, startSession, type TestOrg } from "../helpers/identity.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { seedDemoData } from "../../src/db/seed-demo.ts";
import { asAdmin } from "../helpers/messaging.ts";

let db: TestDb;
let org: TestOrg;
let server: TestServer;
let adminToken: string;
let repToken: string;
let repId: string;

/** Ids the compiled filter selects, as the Administrator (who sees every customer). */
async function compiled(filter: unknown): Promise<string[]> {
  const rows = await asAdmin<{ id: string }>(db, org, "select id from crm.segment_preview($1) order by id", [JSON.stringify(filter)]);
  return rows.map((r) => r.id);
}

/** Ids a hand-written query selects (as the owner, the organization's live customers). */
async function handWritten(where: string, params: unknown[] = []): Promise<string[]> {
  const { rows } = await db.owner.query(`select c.id from crm.customers c where c.organization_id = $1 and c.deleted_at is null and (${where}) order by c.id`, [
    org.id,
    ...params,
  ]);
  return rows.map((r) => r.id as string);
}

const PAID = "o.organization_id = c.organization_id and o.customer_id = c.id and o.status in ('paid', 'partially_paid')";

beforeAll(async () => {
  db = await createTestDb();
  org = await createOrg(db, "segments");
  await seedDemoData(db.owner, org.id, { seed: 42 });
  // RFM scores as the rfm:score job would leave them (deterministic here), some consent and suppressions.
  await db.owner.query("update crm.customers set rfm_score = (abs(hashtext(id::text)) % 500) / 100.0 where organization_id = $1", [org.id]);
  await db.owner.query(
    `insert into crm.consents (organization_id, customer_id, channel, status)
     select organization_id, id, 'email', 'opted_out' from crm.customers where organization_id = $1 and abs(hashtext(id::text)) % 7 = 0`,
    [org.id],
  );
  await db.owner.query(
    `insert into crm.suppressions (organization_id, channel, address, reason)
     select organization_id, 'email', email, 'hard_bounce' from crm.customers where organization_id = $1 and email is not null and abs(hashtext(id::text)) % 11 = 0`,
    [org.id],
  );
  repId = (await db.owner.query("select m.user_id from crm.organization_memberships m join crm.roles r on r.id = m.role_id where m.organization_id = $1 and r.name = 'Sales Representative' limit 1", [org.id])).rows[0].user_id;
  server = await startServer(db);
  adminToken = (await startSession(db, org.adminId, org.id)).accessToken;
  repToken = (await startSession(db, repId, org.id)).accessToken;
}, 180_000);

afterAll(async () => {
  await server?.stop();
  await db?.drop();
});

describe("the compiler's answers equal hand-written queries on demo data", () => {
  test("level and last purchase (seed 000's example)", async () => {
    const filter = { all: [{ field: "level", op: ">", value: "Bronze" }, { field: "last_purchase_days_ago", op: "<", value: 120 }] };
    const expected = await handWritten(
      `(select l.rank from crm.customer_levels l where l.id = c.level_id) > (select l.rank from crm.customer_levels l where l.organization_id = c.organization_id and l.name = 'Bronze')
       and (select max(o.ordered_at) from crm.orders o where ${PAID}) > now() - interval '120 days'`,
    );
    expect(expected.length).toBeGreaterThan(0);
    expect(await compiled(filter)).toEqual(expected);
  });

  test("any of: churned, or spent more than 5,000", async () => {
    const filter = { any: [{ field: "status", op: "=", value: "churned" }, { field: "total_spent", op: ">", value: 5000 }] };
    const expected = await handWritten(
      "c.status = 'churned' or (select coalesce(sum(o.paid_amount - o.refunded_amount), 0) from crm.orders o where o.organization_id = c.organization_id and o.customer_id = c.id) > 5000",
    );
    expect(expected.length).toBeGreaterThan(0);
    expect(await compiled(filter)).toEqual(expected);
  });

  test("order count, RFM score, birthday month, country, tags, custom fields, consent, not", async () => {
    const tag = (await db.owner.query("select t.name from crm.customer_tags ct join crm.tags t on t.id = ct.tag_id where ct.organization_id = $1 group by t.name order by count(*) desc limit 1", [org.id])).rows[0].name;
    const country = (await db.owner.query("select billing_address->>'country' as c from crm.customers where organization_id = $1 and billing_address is not null group by 1 order by count(*) desc limit 1", [org.id])).rows[0].c;
    const cases: [unknown, string, unknown[]][] = [
      [{ all: [{ field: "order_count", op: ">=", value: 3 }, { field: "rfm_score", op: ">", value: 2.5 }] },
        `(select count(*) from crm.orders o where ${PAID}) >= 3 and c.rfm_score > 2.5`, []],
      [{ all: [{ field: "birthday_month", op: "in", value: [1, 2, 3] }] }, "extract(month from c.birth_date) in (1, 2, 3)", []],
      [{ all: [{ field: "country", op: "=", value: country.toUpperCase() }, { field: "city", op: "!=", value: "Nowhere" }] },
        "lower(c.billing_address->>'country') = lower($2) and (c.billing_address->>'city') is distinct from 'nowhere'", [country]],
      [{ all: [{ field: "tag", op: "has", value: tag.toLowerCase() }] },
        "exists (select 1 from crm.customer_tags ct join crm.tags t on t.id = ct.tag_id where ct.customer_id = c.id and t.name = $2)", [tag]],
      [{ all: [{ field: "custom_field", key: "segment", op: "=", value: "SMB" }] }, "c.custom_fields->>'segment' = 'SMB'", []],
      [{ all: [{ field: "has_consent", op: "=", value: "email" }, { field: "status", op: "in", value: ["customer", "prospect"] }] },
        `c.status in ('customer', 'prospect') and c.email is not null
         and not exists (select 1 from crm.consents k where k.customer_id = c.id and k.channel = 'email' and k.status = 'opted_out')
         and not exists (select 1 from crm.suppressions s where s.organization_id = c.organization_id and s.channel = 'email' and s.address = c.email)`, []],
      [{ not: { any: [{ field: "status", op: "=", value: "lead" }, { field: "lead_score", op: "<", value: 50 }] } },
        "not (c.status = 'lead' or c.lead_score < 50)", []],
    ];
    for (const [filter, where, params] of cases) {
      const expected = await handWritten(where, params);
      expect(expected.length).toBeGreaterThan(0);
      expect({ filter, ids: await compiled(filter) }).toEqual({ filter, ids: expected });
    }
  });
});

describe("injection attempts are refused with VALIDATION naming the path", () => {
  const attempts: [string, unknown, string][] = [
    ["quote in a field name", { all: [{ field: "status'; drop table crm.customers; --", op: "=", value: "lead" }] }, "filter.all.0.field"],
    ["a field name closing the expression", { any: [{ field: "status", op: "=", value: "lead" }, { field: "rfm_score) or 1=1 --", op: ">", value: 1 }] }, "filter.any.1.field"],
    ["an operator with SQL in it", { all: [{ field: "rfm_score", op: "> 0 or 1=1; --", value: 1 }] }, "filter.all.0.op"],
    ["a quote in a status", { all: [{ field: "status", op: "=", value: "lead' or '1'='1" }] }, "filter.all.0.value"],
    ["SQL where a number belongs", { all: [{ field: "rfm_score", op: ">", value: "1) or 1=1 --" }] }, "filter.all.0.value"],
    ["a level that is SQL", { all: [{ field: "level", op: "=", value: "Gold' or 1=1 --" }] }, "filter.all.0.value"],
    ["an extra key", { all: [{ field: "status", op: "=", value: "lead", sql: "1=1" }] }, "filter.all.0"],
    ["a nested path", { all: [{ any: [{ field: "tag", op: "=", value: "VIP" }] }] }, "filter.all.0.any.0.op"],
    ["not a document", { where: "1=1" }, "filter"],
    // 17 nested nots: deeper documents would only exhaust the stack (INTERNAL) instead of a coded error.
    ["nested too deeply", Array.from({ length: 17 }).reduce<unknown>((inner) => ({ not: inner }), { field: "status", op: "=", value: "lead" }),
     `filter.${Array(17).fill("not").join(".")}`],
  ];
  for (const [name, filter, path] of attempts) {
    test(name, async () => {
      const e = await sqlError(asUser(db, { sub: org.adminId, org: org.id }, (c) => c.query("select count(*) from crm.segment_preview($1)", [JSON.stringify(filter)])));
      expect({ code: e.code, column: e.column }).toEqual({ code: "CRVAL", column: path });
    });
  }

  test("values are bound, never SQL: quotes in a city or a custom field key select nobody", async () => {
    for (const filter of [
      { all: [{ field: "city", op: "=", value: "x') or 1=1 --" }] },
      { all: [{ field: "custom_field", key: "segment') or ('1'='1", op: "=", value: "x' or '1'='1" }] },
      { all: [{ field: "tag", op: "has", value: "VIP')) or 1=1 --" }] },
    ]) {
      expect(await compiled(filter)).toEqual([]);
    }
    // The customers table is still there.
    expect((await db.owner.query("select count(*)::int as n from crm.customers where organization_id = $1", [org.id])).rows[0].n).toBeGreaterThan(0);
  });

  test("over GraphQL: segmentPreview and createSegment answer VALIDATION with the field", async () => {
    const bad = { all: [{ field: "status; delete from crm.customers", op: "=", value: "lead" }] };
    const r1 = await server.gql("query ($f: JSON!) { segmentPreview(filter: $f) { totalCount } }", { f: bad }, { token: adminToken });
    expect(r1.body.errors?.[0]?.extensions).toMatchObject({ code: "VALIDATION", field: "filter.all.0.field" });
    const r2 = await server.gql(
      "mutation ($f: JSON!) { createSegment(input: { segment: { name: \"Bad\", filter: $f } }) { segment { rowId } } }",
      { f: bad },
      { token: adminToken },
    );
    expect(r2.body.errors?.[0]?.extensions).toMatchObject({ code: "VALIDATION", field: "filter.all.0.field" });
  });
});

describe("segmentPreview", () => {
  test("the count and a first page, under the caller's row-level security", async () => {
    const filter = { all: [{ field: "status", op: "in", value: ["customer", "prospect"] }] };
    const q = "query ($f: JSON!) { segmentPreview(filter: $f, first: 5) { totalCount nodes { rowId name status ownerId } } }";
    const all = await server.gql(q, { f: filter }, { token: adminToken });
    const expected = await handWritten("c.status in ('customer', 'prospect')");
    expect(all.body.errors).toBeUndefined();
    expect(all.body.data!.segmentPreview.totalCount).toBe(expected.length);
    expect(all.body.data!.segmentPreview.nodes).toHaveLength(5);
    // A Sales Representative with campaigns:read would see only their own customers; the default role
    // has no campaigns:read, so grant it to see the row-level security at work.
    const repRole = (await db.owner.query("select role_id from crm.organization_memberships where organization_id = $1 and user_id = $2", [org.id, repId])).rows[0].role_id;
    await db.owner.query("insert into crm.role_permissions (organization_id, role_id, permission_code) values ($1, $2, 'campaigns:read') on conflict do nothing", [org.id, repRole]);
    const mine = await server.gql(q, { f: filter }, { token: repToken });
    expect(mine.body.errors).toBeUndefined();
    const own = await handWritten("c.status in ('customer', 'prospect') and c.owner_id = $2", [repId]);
    expect(mine.body.data!.segmentPreview.totalCount).toBe(own.length);
    expect(own.length).toBeLessThan(expected.length);
    for (const n of mine.body.data!.segmentPreview.nodes) expect(n.ownerId).toBe(repId);
  });

  test("a saved segment counts its customers", async () => {
    const r = await server.gql(
      "mutation ($f: JSON!) { createSegment(input: { segment: { name: \"Churned\", filter: $f } }) { segment { rowId customerCount } } }",
      { f: { all: [{ field: "status", op: "=", value: "churned" }] } },
      { token: adminToken },
    );
    expect(r.body.errors).toBeUndefined();
    expect(Number(r.body.data!.createSegment.segment.customerCount)).toBe((await handWritten("c.status = 'churned'")).length);
  });
});

void addMember;
void createOrg;
