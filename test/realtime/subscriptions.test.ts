// GraphQL subscriptions over a real websocket (graphql-ws + ws): tenant isolation, row-level
// security on every event, the end of a revoked or expired token's subscriptions, connection limits.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import type { Client } from "graphql-ws";
import { createTestDb, type TestDb } from "../helpers/db.ts";
import { signTestToken, startServer, type TestServer } from "../helpers/server.ts";
import { addMember, startSession } from "../helpers/identity.ts";
import { seedTenant, type SeededTenant } from "../helpers/tenant.ts";
import { record, untilLive, wsClient, type Recorder } from "../helpers/realtime.ts";

let db: TestDb;
let server: TestServer;
let a: SeededTenant;
let b: SeededTenant;
let otherRep: string;
const clients: Client[] = [];

const CUSTOMER_CHANGED = `subscription { customerChanged { event customerId customer { rowId name ownerId } } }`;

function client(token: string): Client {
  const c = wsClient(server.url, token);
  clients.push(c);
  return c;
}

async function token(userId: string, orgId: string) {
  return (await startSession(db, userId, orgId)).accessToken;
}

/** Flip a customer's `contacted` flag: an UPDATED event for whoever may see it. */
const touch = (customerId: string) => db.owner.query("update crm.customers set contacted = not contacted where id = $1", [customerId]);

const newCustomer = async (org: SeededTenant, name: string, ownerId: string) =>
  (await db.owner.query<{ id: string }>("insert into crm.customers (organization_id, name, owner_id) values ($1, $2, $3) returning id", [org.id, name, ownerId])).rows[0]!.id;

beforeAll(async () => {
  db = await createTestDb();
  a = await seedTenant(db, "sub-a");
  b = await seedTenant(db, "sub-b");
  otherRep = await addMember(db, a, "sub-a-rep2", "Sales Representative");
  server = await startServer(db, { SUBSCRIPTIONS_MAX_CONNECTIONS_PER_MEMBER: "2" });
});
afterAll(async () => {
  for (const c of clients) await c.dispose();
  await server?.stop();
  await db?.drop();
});

describe("tenant isolation", () => {
  test("a subscriber in organization A receives A's events and nothing of B's", async () => {
    const subA = record(client(await token(a.adminId, a.id)), CUSTOMER_CHANGED);
    const subB = record(client(await token(b.adminId, b.id)), CUSTOMER_CHANGED);
    await untilLive(subA, () => touch(a.customerId));
    await untilLive(subB, () => touch(b.customerId));

    const inA = await newCustomer(a, "Only in A", a.adminId);
    const created = await subA.next();
    expect(created.errors).toBeUndefined();
    expect(created.data!.customerChanged).toEqual({ event: "CREATED", customerId: inA, customer: { rowId: inA, name: "Only in A", ownerId: a.adminId } });

    // B's next event is B's own change: A's creation never reached it.
    const inB = await newCustomer(b, "Only in B", b.adminId);
    const seenByB = await subB.next();
    expect(seenByB.data!.customerChanged.customerId).toBe(inB);
    expect(subB.events.flatMap((e) => [e.data?.customerChanged?.customerId])).not.toContain(inA);
    expect(subA.events.map((e) => e.data?.customerChanged?.customerId)).not.toContain(inB);
    subA.stop();
    subB.stop();
  });
});

describe("row-level security on every event", () => {
  let rep: Recorder;
  beforeAll(async () => {
    rep = record(client(await token(a.memberId, a.id)), CUSTOMER_CHANGED);
    await untilLive(rep, () => touch(a.customerId)); // the seeded customer is the representative's own
  });
  afterAll(() => rep.stop());

  test("a Sales Representative's customerChanged carries only customers they may read", async () => {
    const hidden = await newCustomer(a, "Someone else's", otherRep);
    await touch(hidden);
    await db.owner.query("update crm.customers set deleted_at = now() where id = $1", [hidden]);
    const mine = await newCustomer(a, "Mine", a.memberId);
    const first = await rep.next();
    // The three changes to the other representative's customer were not announced at all.
    expect(first.data!.customerChanged).toEqual({ event: "CREATED", customerId: mine, customer: { rowId: mine, name: "Mine", ownerId: a.memberId } });
  });

  test("a customer handed to someone else leaves the view as DELETED, then goes quiet", async () => {
    const mine = await newCustomer(a, "Handed over", a.memberId);
    expect((await rep.next()).data!.customerChanged.customerId).toBe(mine);
    await db.owner.query("update crm.customers set owner_id = $2 where id = $1", [mine, otherRep]);
    expect((await rep.next()).data!.customerChanged).toEqual({ event: "DELETED", customerId: mine, customer: null });
    await touch(mine);
    await touch(a.customerId);
    expect((await rep.next()).data!.customerChanged.customerId).toBe(a.customerId);
  });

  test("a bulk change tells only those who can see some of the rows", async () => {
    const manager = record(client(await token(a.adminId, a.id)), CUSTOMER_CHANGED);
    await untilLive(manager, () => touch(a.customerId));
    rep.drain();
    // 150 customers of the other representative in one statement: a BULK event for the admin only.
    await db.owner.query(
      "insert into crm.customers (organization_id, name, owner_id) select $1, 'Bulk ' || g, $2 from generate_series(1, 150) g",
      [a.id, otherRep],
    );
    expect((await manager.next()).data!.customerChanged).toEqual({ event: "BULK", customerId: null, customer: null });
    await touch(a.customerId);
    expect((await rep.next()).data!.customerChanged).toMatchObject({ event: "UPDATED", customerId: a.customerId });
    manager.stop();
  });

  test("dealChanged(pipelineId) and taskChanged follow the same rules", async () => {
    const c = client(await token(a.memberId, a.id));
    const pipeline = (await db.owner.query("select id from crm.pipelines where organization_id = $1 and is_default", [a.id])).rows[0].id;
    const deals = record(c, `subscription ($p: UUID) { dealChanged(pipelineId: $p) { event dealId deal { name } } }`, { p: pipeline });
    const tasks = record(c, `subscription { taskChanged { event taskId task { title assigneeId } } }`);
    await untilLive(deals, () => db.owner.query("update crm.deals set amount = amount + 1 where id = $1", [a.dealId]));
    await untilLive(tasks, () => db.owner.query("update crm.tasks set priority = case priority when 'low' then 'high' else 'low' end where id = $1", [a.taskId]));
    await db.owner.query("insert into crm.deals (organization_id, customer_id, name, owner_id) values ($1, $2, 'Hidden deal', $3)", [a.id, a.customerId, otherRep]);
    await db.owner.query("insert into crm.deals (organization_id, customer_id, name, owner_id) values ($1, $2, 'My deal', $3)", [a.id, a.customerId, a.memberId]);
    expect((await deals.next()).data!.dealChanged).toMatchObject({ event: "CREATED", deal: { name: "My deal" } });
    await db.owner.query("insert into crm.tasks (organization_id, title, assignee_id) values ($1, 'Not mine', $2)", [a.id, otherRep]);
    await db.owner.query("insert into crm.tasks (organization_id, title, assignee_id) values ($1, 'Mine too', $2)", [a.id, a.memberId]);
    expect((await tasks.next()).data!.taskChanged).toMatchObject({ event: "CREATED", task: { title: "Mine too", assigneeId: a.memberId } });
    deals.stop();
    tasks.stop();
  });
});

describe("notifications", () => {
  test("notificationAdded delivers the member's own notifications with the unread count", async () => {
    const sub = record(client(await token(a.memberId, a.id)), `subscription { notificationAdded { unreadCount notification { kind title recipientId } } }`);
    const poke = () =>
      db.owner.query("insert into crm.notifications (organization_id, recipient_id, kind, title) values ($1, $2, 'follow_up_due', 'warm-up')", [a.id, a.memberId]);
    await untilLive(sub, poke);
    // Someone else's notification, then one for this member: a task the admin assigns.
    await db.owner.query("insert into crm.notifications (organization_id, recipient_id, kind, title) values ($1, $2, 'follow_up_due', 'not yours')", [a.id, otherRep]);
    const admin = await token(a.adminId, a.id);
    const created = await server.gql(
      `mutation ($a: UUID!) { createTask(input: { task: { title: "Call the buyer", assigneeId: $a } }) { task { rowId } } }`,
      { a: a.memberId },
      { token: admin },
    );
    expect(created.body.errors).toBeUndefined();
    const ev = await sub.next();
    const unread = (await db.owner.query("select count(*)::int as n from crm.notifications where recipient_id = $1 and organization_id = $2 and read_at is null", [a.memberId, a.id])).rows[0].n;
    expect(ev.data!.notificationAdded).toEqual({
      unreadCount: unread,
      notification: { kind: "task_assigned", title: "Task assigned to you: Call the buyer", recipientId: a.memberId },
    });
    sub.stop();
  });
});

describe("ending subscriptions", () => {
  test("a revoked token's subscription closes, and the token cannot subscribe again", async () => {
    const session = await startSession(db, otherRep, a.id);
    const c = client(session.accessToken);
    const sub = record(c, CUSTOMER_CHANGED);
    const mine = await newCustomer(a, "Rep two's", otherRep);
    await untilLive(sub, () => touch(mine));
    await new Promise((r) => setTimeout(r, 300)); // the session's LISTEN follows the data LISTEN
    // Logout revokes the session in the database; the server hears it and ends the subscription.
    await db.owner.query("update crm_private.sessions set revoked_at = now(), revoked_reason = 'logout' where id = $1", [session.sessionId]);
    const last = await sub.next();
    expect(last.errors?.[0]?.extensions?.code).toBe("UNAUTHENTICATED");
    await sub.end();
    const again = record(c, CUSTOMER_CHANGED);
    await again.end();
    expect(JSON.stringify(again.error ?? again.events)).toContain("no longer valid");
  });

  test("an expired token's subscription ends at its expiry", async () => {
    const session = await startSession(db, a.adminId, a.id);
    const short = signTestToken({ sub: a.adminId, sid: session.sessionId, org: a.id }, { expiresIn: 3 });
    const sub = record(client(short), CUSTOMER_CHANGED);
    const ended = await sub.next(20_000);
    expect(ended.errors?.[0]?.extensions?.code).toBe("UNAUTHENTICATED");
    expect(ended.errors?.[0]?.message).toMatch(/expired/);
    await sub.end();
  });

  test("anonymous connections cannot subscribe", async () => {
    const sub = record(wsClient(server.url), CUSTOMER_CHANGED);
    const first = await sub.next().catch(() => null);
    await sub.end();
    expect(JSON.stringify(first ?? sub.error)).toContain("UNAUTHENTICATED");
  });

  test("connections per member are limited (here 2)", async () => {
    const t = await token(b.memberId, b.id);
    const [c1, c2] = [client(t), client(t)];
    const subs = [record(c1, CUSTOMER_CHANGED), record(c2, CUSTOMER_CHANGED)];
    for (const s of subs) await untilLive(s, () => touch(b.customerId));
    const third = record(client(t), CUSTOMER_CHANGED);
    const refused = await third.next();
    expect(refused.errors?.[0]?.extensions?.code).toBe("RATE_LIMITED");
    await third.end();
    // More subscriptions on a connection the member already has are fine.
    const more = record(c1, `subscription { taskChanged { event } }`);
    await untilLive(more, () => db.owner.query("update crm.tasks set priority = case priority when 'low' then 'high' else 'low' end where id = $1", [b.taskId]));
    more.stop();
    // When a connection's subscriptions end, another connection may take its place.
    subs[0]!.stop();
    await new Promise((r) => setTimeout(r, 300));
    const afterOneLeft = record(client(t), CUSTOMER_CHANGED);
    await untilLive(afterOneLeft, () => touch(b.customerId));
    afterOneLeft.stop();
    subs[1]!.stop();
  });
});
