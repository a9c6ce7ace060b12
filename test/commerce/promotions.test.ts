// The promotions engine: the condition language validated by the database, event-driven assignment
// in the same transaction as its cause (and rolled back with it), the stacking rule, codes, limits,
// and assignPromotion / revokePromotion.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import type pg from "pg";
import { asUser, createTestDb, sqlError, type TestDb } from "../helpers/db.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { addMember, createOrg, startSession, type TestOrg } from "../helpers/identity.ts";
import { customer, level, product } from "../helpers/commerce.ts";

let db: TestDb;
let server: TestServer;
let org: TestOrg;
let manager: string;
let rep: string;
const tokens: Record<string, string> = {};
let book: string;
let shirt: string;
let n = 0;

type Body = { data?: any; errors?: { message: string; extensions?: Record<string, unknown> }[] };
const as = async (who: string, query: string, variables: Record<string, unknown> = {}): Promise<Body> =>
  (await server.gql(query, variables, { token: tokens[who] })).body as Body;
const code = (b: Body) => b.errors?.[0]?.extensions?.code;
const admin = () => ({ sub: org.adminId, org: org.id });

async function promotion(fields: Record<string, unknown>): Promise<string> {
  const f = { name: `Promotion ${++n}`, discount_type: "percent", discount_value: 10, ...fields };
  const cols = Object.keys(f);
  const { rows } = await db.owner.query(
    `insert into crm.promotions (organization_id, ${cols.join(", ")}) values ($1, ${cols.map((_, i) => `$${i + 2}`).join(", ")}) returning id`,
    [org.id, ...cols.map((c) => (c === "condition" ? JSON.stringify(f[c as keyof typeof f]) : f[c as keyof typeof f]))],
  );
  return rows[0].id;
}

/** createOrder as the admin inside `client`'s transaction. */
async function placeOrder(client: pg.PoolClient, c: string, items: [string, number][], codes: string[] | null = null) {
  const { rows } = await client.query(
    `select o.* from crm.create_order($1, (select array_agg(row(p, q, null)::crm.order_line) from unnest($2::uuid[], $3::numeric[]) x (p, q)),
                                      $4, $5) o`,
    [c, items.map((i) => i[0]), items.map((i) => i[1]), `k-${++n}`, codes],
  );
  return rows[0] as { id: string; subtotal: string; discount_total: string; final_amount: string };
}

const assignments = async (c: string) =>
  (await db.owner.query("select p.name, cp.source, cp.used_at is not null as used from crm.customer_promotions cp join crm.promotions p on p.id = cp.promotion_id where cp.customer_id = $1 order by p.name, cp.assigned_at", [c])).rows;

beforeAll(async () => {
  db = await createTestDb();
  org = await createOrg(db, "promo");
  manager = await addMember(db, org, "promo-manager", "Sales Manager");
  rep = await addMember(db, org, "promo-rep", "Sales Representative");
  tokens.admin = (await startSession(db, org.adminId, org.id)).accessToken;
  tokens.manager = (await startSession(db, manager, org.id)).accessToken;
  tokens.rep = (await startSession(db, rep, org.id)).accessToken;
  book = await product(db, org.id, { sku: "BOOK", price: "50.00" });
  shirt = await product(db, org.id, { sku: "SHIRT", price: "20.00" });
  server = await startServer(db);
});
afterAll(async () => {
  await server?.stop();
  await db?.drop();
});

describe("the condition language", () => {
  const CREATE = `mutation ($cond: JSON) { createPromotion(input: { promotion: { name: "Rule", discountType: "percent", discountValue: "5", condition: $cond } }) { promotion { rowId condition } } }`;

  test("the four types and all/any are accepted", async () => {
    const gold = await level(db, org.id, "Gold");
    for (const cond of [
      null,
      { type: "first_purchase" },
      { type: "customer_level", level_id: gold },
      { type: "referral" },
      { type: "referral", side: "referrer" },
      { type: "minimum_purchase", amount: 1000 },
      { type: "minimum_purchase", amount: 99.5, currency: "EUR" },
      { type: "all", conditions: [{ type: "first_purchase" }, { type: "any", conditions: [{ type: "referral" }, { type: "minimum_purchase", amount: 200 }] }] },
    ]) {
      const res = await as("manager", CREATE, { cond });
      expect([cond, res.errors]).toEqual([cond, undefined]);
      expect(res.data.createPromotion.promotion.condition).toEqual(cond);
    }
  });

  test.each([
    ["an unknown type", { type: "birthday" }, "condition.type \"birthday\" is unknown"],
    ["a missing type", { amount: 5 }, "condition.type is required"],
    ["a missing argument", { type: "minimum_purchase" }, "condition.amount must be a number"],
    ["a wrong-typed argument", { type: "minimum_purchase", amount: "1000" }, "condition.amount must be a number"],
    ["a negative amount", { type: "minimum_purchase", amount: -1 }, "condition.amount must be a number of at least 0"],
    ["an unknown argument", { type: "first_purchase", days: 3 }, "unknown argument \"days\""],
    ["a level id that is not a UUID", { type: "customer_level", level_id: 2 }, "condition.level_id must be the id"],
    ["an unknown level", { type: "customer_level", level_id: "00000000-0000-4000-8000-000000000000" }, "not a customer level of this organization"],
    ["a bad side", { type: "referral", side: "both" }, "condition.side must be"],
    ["an empty combinator", { type: "all", conditions: [] }, "condition.conditions must be an array of 1 to 20"],
    ["a bad nested condition", { type: "any", conditions: [{ type: "first_purchase" }, { type: "all", conditions: [{ type: "nope" }] }] }, "condition.conditions[1].conditions[0].type \"nope\" is unknown"],
    ["not an object", ["first_purchase"], "condition must be an object"],
  ])("%s is VALIDATION naming condition and the path", async (_what, cond, message) => {
    const before = (await db.owner.query("select count(*)::int as n from crm.promotions")).rows[0].n;
    const res = await as("manager", CREATE, { cond });
    expect(res.errors?.[0]?.extensions).toMatchObject({ code: "VALIDATION", field: "condition" });
    expect(res.errors?.[0]?.message).toContain(message);
    expect((await db.owner.query("select count(*)::int as n from crm.promotions")).rows[0].n).toBe(before);
  });

  test("promotions:create is needed; representatives read promotions (they take orders)", async () => {
    expect(code(await as("rep", CREATE, { cond: null }))).toBe("FORBIDDEN");
    expect((await as("rep", `{ promotions { totalCount } }`)).data.promotions.totalCount).toBeGreaterThan(0);
    // The rules above stay out of the event tests below.
    await db.owner.query("update crm.promotions set is_active = false where organization_id = $1 and name = 'Rule'", [org.id]);
  });
});

describe("event-driven assignment, in the transaction of its cause", () => {
  test("the first order assigns first_purchase; rolled back with the order; a second order does not", async () => {
    await promotion({ name: "First purchase reward", condition: { type: "first_purchase" }, duration_days: 30 });
    const c = await customer(db, org.id, manager, "First timer");
    await asUser(db, admin(), async (client) => {
      const o = await placeOrder(client, c, [[book, 1]]);
      const { rows } = await client.query(
        "select cp.source, cp.source_order_id, cp.expires_at - cp.assigned_at as validity from crm.customer_promotions cp where cp.customer_id = $1",
        [c],
      );
      expect(rows).toEqual([{ source: "first_purchase", source_order_id: o.id, validity: { days: 30 } }]);
    });
    // Rolled back: neither the order nor the assignment exists.
    expect(await assignments(c)).toEqual([]);
    expect((await db.owner.query("select count(*)::int as n from crm.orders where customer_id = $1", [c])).rows[0].n).toBe(0);
    await asUser(db, admin(), (client) => placeOrder(client, c, [[book, 1]]), { commit: true });
    await asUser(db, admin(), (client) => placeOrder(client, c, [[book, 1]]), { commit: true });
    // The reward of the first order was used by the second; the second earned nothing new.
    expect(await assignments(c)).toEqual([{ name: "First purchase reward", source: "first_purchase", used: true }]);
  });

  test("an order over the threshold assigns minimum_purchase, one under it does not", async () => {
    await promotion({ name: "Big spender", condition: { type: "minimum_purchase", amount: 100 } });
    await promotion({ name: "Big first", condition: { type: "all", conditions: [{ type: "first_purchase" }, { type: "minimum_purchase", amount: 100 }] } });
    const small = await customer(db, org.id, manager, "Small basket");
    const big = await customer(db, org.id, manager, "Big basket");
    await asUser(db, admin(), async (client) => {
      await placeOrder(client, small, [[book, 1]]); // 50
      await placeOrder(client, big, [[book, 2], [shirt, 1]]); // 120
      const { rows } = await client.query(
        "select c.name, p.name as promotion, cp.source from crm.customer_promotions cp join crm.customers c on c.id = cp.customer_id join crm.promotions p on p.id = cp.promotion_id where cp.customer_id = any ($1) order by 1, 2",
        [[small, big]],
      );
      expect(rows).toEqual([
        { name: "Big basket", promotion: "Big first", source: "first_purchase" },
        { name: "Big basket", promotion: "Big spender", source: "minimum_purchase" },
        { name: "Big basket", promotion: "First purchase reward", source: "first_purchase" },
        { name: "Small basket", promotion: "First purchase reward", source: "first_purchase" },
      ]);
    });
    expect([...(await assignments(small)), ...(await assignments(big))]).toEqual([]);
  });

  test("a failing handler rolls the order back with it", async () => {
    const c = await customer(db, org.id, manager, "Unlucky");
    const client = await db.owner.connect();
    try {
      await client.query("begin");
      await client.query("select set_config('jwt.claims.sub', $1, true), set_config('jwt.claims.org', $2, true)", [org.adminId, org.id]);
      await client.query(`create function pg_temp.boom() returns trigger language plpgsql as $$ begin raise exception 'handler failed' using errcode = 'XX000'; end $$`);
      await client.query("create trigger zz_boom before insert on crm.customer_promotions for each row execute function pg_temp.boom()");
      const err = await sqlError(placeOrder(client, c, [[book, 1]]));
      expect(err.message).toBe("handler failed");
    } finally {
      await client.query("rollback");
      client.release();
    }
    expect((await db.owner.query("select count(*)::int as n from crm.orders where customer_id = $1", [c])).rows[0].n).toBe(0);
  });

  test("a referral assigns the referred customer's and the referrer's promotions; rolled back with the customer", async () => {
    await promotion({ name: "Welcome, friend", condition: { type: "referral" } });
    await promotion({ name: "Thanks for referring", condition: { type: "referral", side: "referrer" } });
    const referrer = await customer(db, org.id, manager, "Referrer");
    const referred = await asUser(db, { sub: manager, org: org.id }, async (client) => {
      const { rows } = await client.query("insert into crm.customers (name, referred_by_id) values ('Referred', $1) returning id", [referrer]);
      const seen = await client.query(
        "select c.name, p.name as promotion, cp.source from crm.customer_promotions cp join crm.customers c on c.id = cp.customer_id join crm.promotions p on p.id = cp.promotion_id where cp.customer_id = any ($1) order by 1",
        [[referrer, rows[0].id]],
      );
      expect(seen.rows).toEqual([
        { name: "Referred", promotion: "Welcome, friend", source: "referral" },
        { name: "Referrer", promotion: "Thanks for referring", source: "referral" },
      ]);
      return rows[0].id as string;
    });
    expect(await assignments(referrer)).toEqual([]);
    expect(await assignments(referred)).toEqual([]);
    // An update that sets the referrer later fires the event too.
    const later = await customer(db, org.id, manager, "Referred later");
    await asUser(db, { sub: manager, org: org.id }, (client) => client.query("update crm.customers set referred_by_id = $1 where id = $2", [referrer, later]), { commit: true });
    expect(await assignments(later)).toEqual([{ name: "Welcome, friend", source: "referral", used: false }]);
  });

  test("a level change assigns customer_level, whoever makes it; rolled back with the change", async () => {
    const gold = await level(db, org.id, "Gold");
    await promotion({ name: "Gold welcome", condition: { type: "customer_level", level_id: gold }, duration_days: 60 });
    const c = await customer(db, org.id, manager, "Climber");
    await asUser(db, admin(), async (client) => {
      await client.query("select crm.set_customer_level($1, $2, 'Top buyer this quarter')", [c, gold]);
      const { rows } = await client.query(
        "select h.source, h.reason, fl.name::text as from_level, tl.name::text as to_level from crm.customer_level_changes h left join crm.customer_levels fl on fl.id = h.from_level_id left join crm.customer_levels tl on tl.id = h.to_level_id where h.customer_id = $1",
        [c],
      );
      expect(rows).toEqual([{ source: "manual", reason: "Top buyer this quarter", from_level: "Bronze", to_level: "Gold" }]);
      expect((await client.query("select source from crm.customer_promotions where customer_id = $1", [c])).rows).toEqual([{ source: "customer_level" }]);
    });
    expect(await assignments(c)).toEqual([]);
    expect((await db.owner.query("select count(*)::int as n from crm.customer_level_changes where customer_id = $1", [c])).rows[0].n).toBe(0);
    // Another writer (the RFM job, an import) updates level_id directly: the same path fires.
    const client = await db.owner.connect();
    try {
      await client.query("begin");
      await client.query("select set_config('cairn.level_change_source', 'rfm', true)");
      await client.query("update crm.customers set level_id = $1 where id = $2", [gold, c]);
      await client.query("commit");
    } finally {
      client.release();
    }
    expect(await assignments(c)).toEqual([{ name: "Gold welcome", source: "customer_level", used: false }]);
    const h = await db.owner.query("select source, reason from crm.customer_level_changes where customer_id = $1", [c]);
    expect(h.rows).toEqual([{ source: "rfm", reason: null }]);
    // Hand-set levels are flagged for the RFM job; the flag can be cleared.
    const silver = await level(db, org.id, "Silver");
    const res = await as("admin", `mutation ($c: UUID!, $l: UUID!) { setCustomerLevel(input: { customerId: $c, levelId: $l, reason: "Back to RFM", setByHand: false }) {
      result { level { name } levelSetByHand customerLevelChanges(orderBy: CHANGED_AT_ASC) { nodes { source changer { username } } } } } }`, { c, l: silver });
    expect(res.data.setCustomerLevel.result).toEqual({
      level: { name: "Silver" },
      levelSetByHand: false,
      customerLevelChanges: { nodes: [{ source: "rfm", changer: null }, { source: "manual", changer: { username: "promo-admin" } }] },
    });
    const audit = await db.owner.query("select changes from crm.audit_log where table_name = 'customers' and record_id = $1 and operation = 'UPDATE' order by id desc limit 1", [c]);
    expect(audit.rows[0].changes.level_id).toEqual({ old: gold, new: silver });
  });

  test("a level in use cannot be deleted", async () => {
    const bronze = await level(db, org.id, "Bronze");
    const res = await as("admin", `mutation ($id: UUID!) { deleteCustomerLevel(input: { rowId: $id }) { customerLevel { rowId } } }`, { id: bronze });
    expect(code(res)).toBe("INVALID_STATE");
  });
});

describe("stacking, codes and limits", () => {
  test("a non-stackable promotion applies alone when it is the best, and is skipped otherwise", async () => {
    const exclusive = await promotion({ name: "Exclusive 30", discount_value: 30, is_stackable: false, code: "EXCL30" });
    const small = await promotion({ name: "Small 5", discount_value: 5 });
    const fixed = await promotion({ name: "Fixed 2", discount_type: "fixed_amount", discount_value: 2, currency: "USD" });
    const c = await customer(db, org.id, manager, "Stacker");
    await asUser(db, admin(), async (client) => {
      for (const p of [small, fixed]) await client.query("select crm.assign_promotion($1, $2)", [c, p]);
      // Quoting the exclusive code: it is the best (30 % of 100), so it applies alone.
      const alone = await placeOrder(client, c, [[book, 2]], ["excl30"]);
      expect(alone.discount_total).toBe("30.00");
      const lines = await client.query("select promotion_id from crm.order_discounts where order_id = $1", [alone.id]);
      expect(lines.rows).toEqual([{ promotion_id: exclusive }]);
    });
    await asUser(db, admin(), async (client) => {
      for (const p of [small, fixed]) await client.query("select crm.assign_promotion($1, $2)", [c, p]);
      // Without it: 5 % of 100 = 5.00 first (best), then 2.00.
      const both = await placeOrder(client, c, [[book, 2]]);
      expect(both.discount_total).toBe("7.00");
      // An exclusive promotion that is not the best is skipped — an error when it was quoted.
      await client.query("update crm.promotions set discount_value = 1 where id = $1", [exclusive]);
      for (const p of [small, fixed]) await client.query("select crm.assign_promotion($1, $2)", [c, p]);
      await client.query("savepoint s");
      const err = await sqlError(placeOrder(client, c, [[book, 2]], ["EXCL30"]));
      expect([err.code, err.column]).toEqual(["CRVAL", "promotionCodes"]);
    });
  });

  test("free items and scopes: the cheapest unit in scope is free; a code that applies to nothing is refused", async () => {
    const cat = (await db.owner.query("insert into crm.product_categories (organization_id, name) values ($1, 'Shirts') returning id", [org.id])).rows[0].id;
    const tee = await product(db, org.id, { sku: "TEE", price: "12.00", categoryId: cat });
    const polo = await product(db, org.id, { sku: "POLO", price: "25.00", categoryId: cat });
    await promotion({ name: "Free shirt", code: "FREESHIRT", discount_type: "free_item", discount_value: 1, category_id: cat });
    await promotion({ name: "Book sale", code: "BOOK20", discount_value: 20, product_id: book });
    const c = await customer(db, org.id, manager, "Shopper");
    await asUser(db, admin(), async (client) => {
      const o = await placeOrder(client, c, [[polo, 1], [tee, 2], [shirt, 1]], ["FREESHIRT"]);
      expect([o.subtotal, o.discount_total]).toEqual(["69.00", "12.00"]);
      await client.query("savepoint s");
      const err = await sqlError(placeOrder(client, c, [[shirt, 1]], ["BOOK20"]));
      expect([err.code, err.column]).toEqual(["CRVAL", "promotionCodes"]);
    });
  });

  test("windows, usage limits and eligibility decide whether a code applies", async () => {
    await promotion({ name: "Ended", code: "ENDED", ends_at: new Date(Date.now() - 3600_000).toISOString(), starts_at: new Date(Date.now() - 7200_000).toISOString() });
    await promotion({ name: "Paused", code: "PAUSED", is_active: false });
    await promotion({ name: "Used up", code: "USEDUP", usage_limit: 1 });
    await promotion({ name: "Once each", code: "ONCEEACH", usage_limit_per_customer: 1 });
    const c = await customer(db, org.id, manager, "Code tester");
    const d = await customer(db, org.id, manager, "Other tester");
    await asUser(db, admin(), (client) => placeOrder(client, d, [[book, 1]], ["USEDUP"]), { commit: true });
    await asUser(db, admin(), (client) => placeOrder(client, c, [[book, 1]], ["ONCEEACH"]), { commit: true });
    // (Created after c's first order: a first_purchase promotion existing then would have been
    // awarded to c by that order's event, and so be usable now.)
    await promotion({ name: "Firsts only", code: "FIRSTS", condition: { type: "first_purchase" } });
    for (const [c2, expected] of [["ENDED", "CRVAL"], ["PAUSED", "CRVAL"], ["USEDUP", "CRCNF"], ["FIRSTS", "CRVAL"], ["ONCEEACH", "CRVAL"]] as const) {
      const err = await sqlError(asUser(db, admin(), (client) => placeOrder(client, c, [[book, 1]], [c2])));
      expect([c2, err.code, err.column]).toEqual([c2, expected, "promotionCodes"]);
    }
  });

  test("assignPromotion and revokePromotion by hand (promotions:update)", async () => {
    const promo = await promotion({ name: "Goodwill", duration_days: 7 });
    const c = await customer(db, org.id, manager, "Goodwill customer");
    const ASSIGN = `mutation ($c: UUID!, $p: UUID!) { assignPromotion(input: { customerId: $c, promotionId: $p }) { result { rowId source expiresAt assigner { username } } } }`;
    expect(code(await as("rep", ASSIGN, { c, p: promo }))).toBe("FORBIDDEN");
    const given = await as("manager", ASSIGN, { c, p: promo });
    expect(given.data.assignPromotion.result).toMatchObject({ source: "manual", assigner: { username: "promo-manager" } });
    expect(Date.parse(given.data.assignPromotion.result.expiresAt) - Date.now()).toBeGreaterThan(6.9 * 86400_000);
    expect(code(await as("manager", ASSIGN, { c, p: promo }))).toBe("CONFLICT");
    const REVOKE = `mutation ($id: UUID!) { revokePromotion(input: { customerPromotionId: $id }) { result { revokedAt revoker { username } } } }`;
    const revoked = await as("manager", REVOKE, { id: given.data.assignPromotion.result.rowId });
    expect(revoked.data.revokePromotion.result.revoker).toEqual({ username: "promo-manager" });
    expect(code(await as("manager", REVOKE, { id: given.data.assignPromotion.result.rowId }))).toBe("INVALID_STATE");
    // A used promotion cannot be deleted (deactivate it instead); an unused one can.
    const used = (await db.owner.query("select promotion_id from crm.customer_promotions where used_at is not null limit 1")).rows[0].promotion_id;
    expect(code(await as("admin", `mutation ($id: UUID!) { deletePromotion(input: { rowId: $id }) { promotion { rowId } } }`, { id: used }))).toBe("INVALID_STATE");
    expect((await as("admin", `mutation ($id: UUID!) { deletePromotion(input: { rowId: $id }) { promotion { rowId } } }`, { id: promo })).errors).toBeUndefined();
  });
});
