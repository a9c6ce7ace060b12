// Webhooks against a real local HTTP receiver: signed deliveries from the outbox, retries with
// backoff ending in the log, auto-disable with a notice to the admins, redelivery, outbound safety
// (loopback and link-local refused by default), and nothing delivered for a rolled-back change.
import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "@jest/globals";
import { asUser, createTestDb, type TestDb } from "../helpers/db.ts";
import { addMember, createOrg, startSession, type TestOrg } from "../helpers/identity.ts";
import { jobs, runJobs } from "../helpers/worker.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { verifyWebhook } from "../../worker/webhooks/signature.ts";
import { isBlockedAddress } from "../../worker/webhooks/safety.ts";

interface Hit {
  headers: http.IncomingHttpHeaders;
  body: string;
}

let db: TestDb;
let org: TestOrg;
let rep: string;
let receiver: http.Server;
let receiverUrl: string;
let hits: Hit[] = [];
let respond: (res: http.ServerResponse) => void = (res) => res.end("ok");

const DEV = { WEBHOOKS_ALLOW_HTTP: "true", WEBHOOKS_ALLOW_PRIVATE_NETWORKS: "true" };
const admin = () => ({ sub: org.adminId, org: org.id });

async function createEndpoint(url: string, eventTypes: string[] = ["*"]) {
  return asUser(db, admin(), async (c) => {
    await c.query("select set_config('cairn.webhooks.allow_http', 'true', true), set_config('cairn.webhooks.allow_private_networks', 'true', true)");
    return (await c.query<{ id: string; secret: string }>("insert into crm.webhook_endpoints (url, event_types) values ($1, $2) returning id, secret", [url, eventTypes])).rows[0]!;
  }, { commit: true });
}

const deliveries = async () =>
  (await db.owner.query<{ id: string; status: string; attempts: number; last_status_code: number | null; last_error: string | null; event_type: string; next_in: number | null }>(
    `select id, status, attempts, last_status_code, last_error, event_type,
            extract(epoch from next_attempt_at - now())::int as next_in
       from crm.webhook_deliveries order by created_at, id`,
  )).rows;

/** Make every scheduled delivery job due now (the worker's clock cannot be moved). */
const fastForward = () => db.owner.query("update graphile_worker._private_jobs set run_at = now() where run_at > now()");

beforeAll(async () => {
  db = await createTestDb();
  org = await createOrg(db, "hooks");
  rep = await addMember(db, org, "hooks-rep", "Sales Representative");
  receiver = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      hits.push({ headers: req.headers, body: Buffer.concat(chunks).toString("utf8") });
      respond(res);
    });
  });
  await new Promise<void>((r) => receiver.listen(0, "127.0.0.1", r));
  receiverUrl = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hooks`;
});
afterAll(async () => {
  receiver.closeAllConnections();
  await new Promise((r) => receiver.close(r));
  await db.drop();
});
beforeEach(async () => {
  hits = [];
  respond = (res) => res.end("ok");
  await db.owner.query("delete from crm.webhook_endpoints");
  await db.owner.query("delete from crm.webhook_events");
  await db.owner.query("delete from graphile_worker._private_jobs");
});

describe("signed deliveries from the outbox", () => {
  test("a receiver gets each event once, signed so that it can verify it", async () => {
    const ep = await createEndpoint(receiverUrl, ["customer.created", "deal.stage_changed"]);
    const customerId = await asUser(db, { sub: rep, org: org.id }, async (c) =>
      (await c.query("insert into crm.customers (name, email) values ('Hooked Ltd', 'hello@hooked.example') returning id")).rows[0].id as string,
    { commit: true });
    await runJobs(db, DEV);
    expect(hits).toHaveLength(1);
    const [hit] = hits;
    expect(hit!.headers["content-type"]).toBe("application/json");
    expect(hit!.headers["cairn-event-type"]).toBe("customer.created");
    // The documented check: HMAC-SHA256 over "<t>.<raw body>" with the endpoint's secret.
    expect(verifyWebhook(ep.secret, hit!.body, hit!.headers["cairn-signature"] as string)).toBe(true);
    expect(verifyWebhook(ep.secret, hit!.body.replace("Hooked", "Hacked"), hit!.headers["cairn-signature"] as string)).toBe(false);
    expect(verifyWebhook("whsec_wrong", hit!.body, hit!.headers["cairn-signature"] as string)).toBe(false);
    const event = JSON.parse(hit!.body);
    expect(event).toMatchObject({
      type: "customer.created",
      organizationId: org.id,
      data: { object: { id: customerId, name: "Hooked Ltd", email: "hello@hooked.example", owner_id: rep } },
    });
    expect(event.id).toBe(hit!.headers["cairn-event-id"]);
    expect(event.data.object.search_vector).toBeUndefined();
    expect(await deliveries()).toEqual([expect.objectContaining({ status: "succeeded", attempts: 1, last_status_code: 200 })]);
    // An update is not among this endpoint's event types: nothing is written for it.
    await db.owner.query("update crm.customers set phone = '+1 555' where id = $1", [customerId]);
    expect((await db.owner.query("select count(*)::int as n from crm.webhook_events")).rows[0].n).toBe(1);
  });

  test("an event rolled back with its transaction is never delivered", async () => {
    await createEndpoint(receiverUrl);
    await asUser(db, { sub: rep, org: org.id }, (c) => c.query("insert into crm.customers (name) values ('Ghost')")); // rolled back
    expect((await db.owner.query("select count(*)::int as n from crm.webhook_events")).rows[0].n).toBe(0);
    expect(await jobs(db, "webhooks:deliver")).toEqual([]);
    await runJobs(db, DEV);
    expect(hits).toEqual([]);
  });

  test("deal.stage_changed carries the previous stage; soft delete sends *.deleted", async () => {
    await createEndpoint(receiverUrl, ["deal.stage_changed", "customer.deleted"]);
    const customerId = (await db.owner.query("insert into crm.customers (organization_id, name, owner_id) values ($1, 'Staged', $2) returning id", [org.id, rep])).rows[0].id;
    const dealId = (await db.owner.query("insert into crm.deals (organization_id, customer_id, name, owner_id) values ($1, $2, 'D', $3) returning id", [org.id, customerId, rep])).rows[0].id;
    const [from, to] = (await db.owner.query("select id from crm.pipeline_stages s where organization_id = $1 order by position limit 2", [org.id])).rows.map((r) => r.id);
    await asUser(db, { sub: rep, org: org.id }, (c) => c.query("select crm.move_deal_stage($1, $2)", [dealId, to]), { commit: true });
    await asUser(db, admin(), (c) => c.query("select crm.delete_customer($1)", [customerId]), { commit: true });
    await runJobs(db, DEV);
    const types = hits.map((h) => JSON.parse(h.body)).map((e) => [e.type, e.data.previous?.stage_id ?? null, e.data.object.id]);
    expect(types).toEqual(expect.arrayContaining([["deal.stage_changed", from, dealId], ["customer.deleted", null, customerId]]));
    expect(types).toHaveLength(2);
  });
});

describe("failures", () => {
  test("failures retry with backoff for about a day and end in the log", async () => {
    respond = (res) => {
      res.statusCode = 503;
      res.end("x".repeat(5000));
    };
    await createEndpoint(receiverUrl);
    await db.owner.query("insert into crm.customers (organization_id, name, owner_id) values ($1, 'Unlucky', $2)", [org.id, rep]);
    const waits: number[] = [];
    for (let i = 0; i < 10; i++) {
      await runJobs(db, { ...DEV, WEBHOOK_DISABLE_AFTER_FAILURES: "100" });
      const [d] = await deliveries();
      if (d!.status === "retrying") waits.push(d!.next_in!);
      await fastForward();
    }
    expect(hits).toHaveLength(10);
    const [d] = await deliveries();
    expect(d).toMatchObject({ status: "failed", attempts: 10, last_status_code: 503, last_error: "HTTP 503", next_in: null });
    // 30 s, 2 min, 10 min, 30 min, 1 h, 2 h, 4 h, 8 h, 8 h (±10 %): about 23.7 hours in all.
    const expected = [30, 120, 600, 1800, 3600, 7200, 14400, 28800, 28800];
    expect(waits).toHaveLength(9);
    waits.forEach((w, i) => {
      expect(w).toBeGreaterThanOrEqual(Math.floor(expected[i]! * 0.9) - 2);
      expect(w).toBeLessThanOrEqual(Math.ceil(expected[i]! * 1.1) + 2);
    });
    const log = (await db.owner.query("select attempt, status_code, length(response_body) as kept, duration_ms >= 0 as timed from crm.webhook_delivery_attempts order by attempt")).rows;
    expect(log.map((l) => l.attempt)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(log.every((l) => l.status_code === 503 && l.kept === 2048 && l.timed)).toBe(true);
    expect(await jobs(db, "webhooks:deliver")).toEqual([]);
  });

  test("a run of failures disables the endpoint and tells the admins; redelivery works once it is back", async () => {
    respond = (res) => {
      res.statusCode = 500;
      res.end();
    };
    const ep = await createEndpoint(receiverUrl, ["customer.created"]);
    await db.owner.query("insert into crm.customers (organization_id, name, owner_id) values ($1, 'One', $2), ($1, 'Two', $2)", [org.id, rep]);
    for (let i = 0; i < 3; i++) {
      await runJobs(db, { ...DEV, WEBHOOK_DISABLE_AFTER_FAILURES: "3" });
      await fastForward();
    }
    const endpoint = (await db.owner.query("select is_active, disabled_reason from crm.webhook_endpoints where id = $1", [ep.id])).rows[0];
    expect(endpoint.is_active).toBe(false);
    expect(endpoint.disabled_reason).toMatch(/^3 failed delivery attempts in a row/);
    expect(hits).toHaveLength(3);
    // No more traffic once disabled: the pending retry is closed without sending.
    await runJobs(db, DEV);
    expect(hits).toHaveLength(3);
    expect((await deliveries()).map((d) => d.status)).toEqual(["failed", "failed"]);
    const notes = (await db.owner.query("select recipient_id, kind::text, channel::text from crm.notifications where kind = 'webhook_disabled'")).rows;
    expect(notes).toEqual([{ recipient_id: org.adminId, kind: "webhook_disabled", channel: "email" }]);

    // Over GraphQL: the log is readable by webhooks:manage only; re-enable and redeliver.
    let server: TestServer | undefined;
    try {
      server = await startServer(db);
      const adminToken = (await startSession(db, org.adminId, org.id)).accessToken;
      const repToken = (await startSession(db, rep, org.id)).accessToken;
      const logQuery = `{ webhookDeliveries(orderBy: PRIMARY_KEY_ASC) { nodes { rowId status attempts lastStatusCode eventType attemptLog { nodes { attempt statusCode durationMs } } } } }`;
      const log = await server.gql(logQuery, {}, { token: adminToken });
      expect(log.body.errors).toBeUndefined();
      const nodes = log.body.data!.webhookDeliveries.nodes;
      expect(nodes.flatMap((n: any) => n.attemptLog.nodes.map((a: any) => a.statusCode))).toEqual([500, 500, 500]);
      expect((await server.gql(logQuery, {}, { token: repToken })).body.data!.webhookDeliveries.nodes).toEqual([]);
      const refused = await server.gql(`mutation ($id: UUID!) { redeliverWebhook(input: { deliveryId: $id }) { result { rowId } } }`, { id: nodes[0].rowId }, { token: adminToken });
      expect(refused.body.errors?.[0]?.extensions?.code).toBe("INVALID_STATE");
      const enabled = await server.gql(`mutation ($id: UUID!) { updateWebhookEndpoint(input: { rowId: $id, patch: { isActive: true } }) { webhookEndpoint { isActive consecutiveFailures } } }`, { id: ep.id }, { token: adminToken });
      expect(enabled.body.data!.updateWebhookEndpoint.webhookEndpoint).toEqual({ isActive: true, consecutiveFailures: 0 });
      const forbidden = await server.gql(`mutation ($id: UUID!) { redeliverWebhook(input: { deliveryId: $id }) { result { rowId } } }`, { id: nodes[0].rowId }, { token: repToken });
      expect(forbidden.body.errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
      respond = (res) => res.end("ok");
      const again = await server.gql(`mutation ($id: UUID!) { redeliverWebhook(input: { deliveryId: $id }) { result { rowId status original { rowId } } } }`, { id: nodes[0].rowId }, { token: adminToken });
      expect(again.body.errors).toBeUndefined();
      expect(again.body.data!.redeliverWebhook.result).toMatchObject({ status: "pending", original: { rowId: nodes[0].rowId } });
    } finally {
      await server?.stop();
    }
    await runJobs(db, DEV);
    expect(hits).toHaveLength(4);
    // The same event again (same event id), as a new delivery.
    const redelivered = (await db.owner.query("select event_id from crm.webhook_deliveries where redelivery_of is not null")).rows[0].event_id;
    expect(JSON.parse(hits[3]!.body).id).toBe(redelivered);
    expect(hits.slice(0, 3).map((h) => JSON.parse(h.body).id)).toContain(redelivered);
    expect((await deliveries()).map((d) => d.status)).toEqual(["failed", "failed", "succeeded"]);
  });

  test("a receiver that does not answer times out (the time is bounded)", async () => {
    respond = () => undefined; // never answers
    await createEndpoint(receiverUrl, ["customer.created"]);
    await db.owner.query("insert into crm.customers (organization_id, name, owner_id) values ($1, 'Slow', $2)", [org.id, rep]);
    await runJobs(db, { ...DEV, WEBHOOK_TIMEOUT_MS: "300" });
    const [d] = await deliveries();
    expect(d).toMatchObject({ status: "retrying", attempts: 1, last_status_code: null, last_error: "timed out after 300 ms" });
    receiver.closeAllConnections();
  });
});

describe("outbound safety", () => {
  test("endpoints at 127.0.0.1 or 169.254.169.254 are refused by default", async () => {
    let server: TestServer | undefined;
    try {
      server = await startServer(db);
      const token = (await startSession(db, org.adminId, org.id)).accessToken;
      for (const url of ["https://127.0.0.1/hook", "https://169.254.169.254/latest/meta-data", "https://[::1]/x", "https://localhost/x", "https://10.1.2.3/x", "https://2130706433/x"]) {
        const r = await server.gql(`mutation ($url: String!) { createWebhookEndpoint(input: { webhookEndpoint: { url: $url } }) { webhookEndpoint { rowId } } }`, { url }, { token });
        expect([url, r.body.errors?.[0]?.extensions?.code, r.body.errors?.[0]?.extensions?.field]).toEqual([url, "VALIDATION", "url"]);
      }
      const plain = await server.gql(`mutation { createWebhookEndpoint(input: { webhookEndpoint: { url: "http://hooks.example.com/x" } }) { webhookEndpoint { rowId } } }`, {}, { token });
      expect(plain.body.errors?.[0]?.message).toBe("Webhook URLs must use https.");
      const ok = await server.gql(`mutation { createWebhookEndpoint(input: { webhookEndpoint: { url: "https://hooks.example.com/cairn", eventTypes: ["deal.stage_changed"] } }) { webhookEndpoint { url eventTypes isActive secret } } }`, {}, { token });
      expect(ok.body.data!.createWebhookEndpoint.webhookEndpoint).toMatchObject({ url: "https://hooks.example.com/cairn", eventTypes: ["deal.stage_changed"], isActive: true });
      expect(ok.body.data!.createWebhookEndpoint.webhookEndpoint.secret).toMatch(/^whsec_[0-9a-f]{64}$/);
      const types = await server.gql(`{ webhookEventTypes }`, {}, { token });
      expect(types.body.data!.webhookEventTypes).toContain("deal.stage_changed");
      const rep2 = (await startSession(db, rep, org.id)).accessToken;
      const notAllowed = await server.gql(`mutation { createWebhookEndpoint(input: { webhookEndpoint: { url: "https://hooks.example.com/rep" } }) { webhookEndpoint { rowId } } }`, {}, { token: rep2 });
      expect(notAllowed.body.errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
    } finally {
      await server?.stop();
    }
  });

  test("delivery checks the address after DNS resolution: a name resolving to loopback is refused", async () => {
    // Created while private networks were allowed (say, by a misconfigured server), delivered by a
    // worker that does not allow them: the receiver is never contacted.
    await createEndpoint(receiverUrl.replace("127.0.0.1", "localhost"), ["customer.created"]);
    await db.owner.query("insert into crm.customers (organization_id, name, owner_id) values ($1, 'Rebound', $2)", [org.id, rep]);
    await runJobs(db, { WEBHOOKS_ALLOW_HTTP: "true" });
    expect(hits).toEqual([]);
    const [d] = await deliveries();
    expect(d!.status).toBe("retrying");
    expect(d!.last_error).toMatch(/^localhost resolves to (127\.0\.0\.1|::1), a private, loopback or link-local address$/);
  });

  test("the address rules", () => {
    for (const ip of ["127.0.0.1", "10.0.0.8", "172.20.1.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1", "::ffff:7f00:1", "64:ff9b::a9fe:a9fe".replace("a9fe:a9fe", "169.254.169.254")]) {
      expect([ip, isBlockedAddress(ip)]).toEqual([ip, true]);
    }
    for (const ip of ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"]) {
      expect([ip, isBlockedAddress(ip)]).toEqual([ip, false]);
    }
  });
});
