// Metrics from the data (conversions in the window, revenue, cost per conversion, ROI), the
// inactivity automation once per episode, quiet hours and the per-organization send rate, and SMS
// through the local outbox and a Twilio-shaped HTTP provider.
import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { createTestDb, type TestDb } from "../helpers/db.ts";
import { createOrg, type TestOrg } from "../helpers/identity.ts";
import { runJobs } from "../helpers/worker.ts";
import { asAdmin, campaign, customer, execute, messages, send, template } from "../helpers/messaging.ts";

let db: TestDb;
let org: TestOrg;
let orderNo = 0;

async function order(customerId: string, at: string, amount: number, status = "paid", refunded = 0) {
  await db.owner.query(
    `insert into crm.orders (organization_id, order_number, customer_id, status, currency, subtotal, final_amount, paid_amount, refunded_amount, ordered_at)
     values ($1, $2, $3, $4, 'USD', $5, $5, $6, $7, $8)`,
    [org.id, `IMP-${++orderNo}`, customerId, status, amount, status === "pending" ? 0 : amount, refunded, at],
  );
}

beforeAll(async () => {
  db = await createTestDb();
  org = await createOrg(db, "delivery");
});

afterAll(async () => {
  await db?.drop();
});

describe("metrics", () => {
  test("conversions within the window, attributed revenue, cost per conversion and ROI", async () => {
    const a = await customer(db, org, "Ann Buyer", "ann@delivery.test");
    const b = await customer(db, org, "Ben Late", "ben@delivery.test");
    const c = await customer(db, org, "Cid Before", "cid@delivery.test");
    const tpl = await template(db, org, "Sale");
    const id = await campaign(db, org, "Sale", tpl);
    await asAdmin(db, org, "update crm.campaigns set actual_cost = 100, conversion_window_days = 7 where id = $1", [id]);
    await asAdmin(db, org, "select crm.add_campaign_recipients($1, $2)", [id, [a, b, c]]);
    await execute(db, org, id);
    await send(db);
    const sentAt = (await db.owner.query("select min(sent_at) as t from crm.messages where campaign_id = $1", [id])).rows[0].t as Date;
    const plus = (days: number) => new Date(sentAt.getTime() + days * 86_400_000).toISOString();
    await order(a, plus(1), 120); // converts
    await order(a, plus(6), 80, "paid", 30); // converts, 50 net
    await order(a, plus(2), 500, "pending"); // not paid: no conversion
    await order(b, plus(30), 999); // after the window
    await order(c, plus(-3), 999); // before the send
    const [m] = await asAdmin<Record<string, unknown>>(db, org, "select (crm.campaign_metrics($1)).*", [id]);
    expect(m).toMatchObject({ recipients: 3, queued: 3, sent: 3, conversions: 2, conversion_window_days: 7 });
    expect(Number(m!.attributed_revenue)).toBe(170);
    expect(Number(m!.cost_per_conversion)).toBe(50);
    expect(Number(m!.roi)).toBe(0.7); // (170 − 100) / 100
    // The per-campaign field gives the same.
    const [f] = await asAdmin<Record<string, unknown>>(db, org, "select (crm.campaigns_metrics(c)).* from crm.campaigns c where c.id = $1", [id]);
    expect(f).toEqual(m);
    // Metrics need campaigns:read; they are never typed in (the type has no writable table).
  });
});

describe("inactivity automation", () => {
  test("once per inactivity episode", async () => {
    const tpl = await template(db, org, "Miss you", "<p>We miss you, [FirstName].</p>");
    await asAdmin(db, org, "update crm.messaging_settings set inactivity_enabled = true, inactivity_days = 90, inactivity_template_id = $1", [tpl]);
    const d = await customer(db, org, "Dee Dormant", "dee@delivery.test");
    await order(d, new Date(Date.now() - 100 * 86_400_000).toISOString(), 40);
    const run = async (asOf?: string) => {
      await db.owner.query("select crm_private.enqueue_tenant_job('messages:inactivity', $1, $2)", [org.id, asOf ? { asOf } : {}]);
      await runJobs(db);
      return (await db.owner.query("select count(*)::int as n from crm.messages where automation = 'inactivity' and customer_id = $1", [d])).rows[0].n;
    };
    expect(await run()).toBe(1);
    expect(await run()).toBe(1); // same episode
    await order(d, new Date().toISOString(), 10); // buys again: the episode ends
    expect(await run()).toBe(1);
    // 95 days later (payload asOf): inactive again, a new episode.
    expect(await run(new Date(Date.now() + 95 * 86_400_000).toISOString())).toBe(2);
    const { rows } = await db.owner.query("select body, status from crm.messages where automation = 'inactivity' and customer_id = $1", [d]);
    expect(rows[0].body).toContain("We miss you, Dee.");
    expect(rows.every((r) => r.status === "sent")).toBe(true);
  });
});

describe("quiet hours and the send rate", () => {
  test("nothing leaves in quiet hours (organization time zone); at most the rate per minute", async () => {
    const tpl = await template(db, org, "Rate");
    const id = await campaign(db, org, "Rate", tpl);
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push(await customer(db, org, `Rita Rate${i}`, `rate${i}@delivery.test`));
    await asAdmin(db, org, "select crm.add_campaign_recipients($1, $2)", [id, ids]);
    await db.owner.query(`update crm.organizations set settings = settings || '{"timezone": "Asia/Tokyo"}' where id = $1`, [org.id]);
    const tokyoHour = Number(new Intl.DateTimeFormat("en-GB", { hour: "numeric", hourCycle: "h23", timeZone: "Asia/Tokyo" }).format(new Date()));
    await asAdmin(db, org, "update crm.messaging_settings set quiet_hours_start = $1, quiet_hours_end = $2", [tokyoHour, (tokyoHour + 1) % 24]);
    await execute(db, org, id);
    await send(db);
    expect((await messages(db, id)).map((m) => m.status)).toEqual(Array(5).fill("pending"));
    // Out of quiet hours, with a rate of 3 a minute.
    await asAdmin(db, org, "update crm.messaging_settings set quiet_hours_start = $1, quiet_hours_end = $2, send_rate_per_minute = 3", [
      (tokyoHour + 2) % 24,
      (tokyoHour + 3) % 24,
    ]);
    // Messages sent earlier this minute by other tests count against the rate: start from a clean minute.
    await db.owner.query("delete from crm_private.send_counters where organization_id = $1", [org.id]);
    await send(db);
    const statuses = (await messages(db, id)).map((m) => m.status).sort();
    expect(statuses).toEqual(["pending", "pending", "sent", "sent", "sent"]);
    await asAdmin(db, org, "update crm.messaging_settings set send_rate_per_minute = 6000");
  });
});

describe("SMS", () => {
  test("the local provider and a Twilio-shaped HTTP provider behind one interface", async () => {
    const tpl = await template(db, org, "Text", "Hi [FirstName], [Points] points waiting. Reply STOP to opt out.", "sms");
    const s1 = await customer(db, org, "Sid Sms", null, { phone: "+15550001" });
    const s2 = await customer(db, org, "Sue Sms", null, { phone: "+15550002" });
    const s3 = await customer(db, org, "Sal Sms", null, { phone: "+15550003" });
    const local = await campaign(db, org, "Texts", tpl, undefined, "sms");
    await asAdmin(db, org, "select crm.add_campaign_recipients($1, $2)", [local, [s1]]);
    await execute(db, org, local);
    await send(db);
    const { rows } = await db.owner.query("select to_number, body from crm_private.sms_outbox");
    expect(rows).toEqual([{ to_number: "+15550001", body: "Hi Sid, 0 points waiting. Reply STOP to opt out." }]);

    // A Twilio-shaped endpoint: Basic auth, form body; 201 with a sid, 429 (retry), 400 (permanent).
    const seen: { auth: string; form: URLSearchParams }[] = [];
    const answers = [
      { status: 429, body: { code: 20429, message: "Too Many Requests" } },
      { status: 201, body: { sid: "SM0000000000000000000000000000001", status: "queued" } },
      { status: 400, body: { code: 21211, message: "The 'To' number +15550003 is not a valid phone number." } },
    ];
    const twilio = http.createServer((req, res) => {
      let data = "";
      req.on("data", (c) => (data += c));
      req.on("end", () => {
        seen.push({ auth: String(req.headers.authorization), form: new URLSearchParams(data) });
        const a = req.url === "/2010-04-01/Accounts/AC123/Messages.json" ? answers.shift()! : { status: 404, body: { message: "no" } };
        res.writeHead(a.status, { "content-type": "application/json" });
        res.end(JSON.stringify(a.body));
      });
    });
    await new Promise<void>((r) => twilio.listen(0, "127.0.0.1", r));
    const env = {
      SMS_PROVIDER: "twilio",
      TWILIO_ACCOUNT_SID: "AC123",
      TWILIO_AUTH_TOKEN: "secret-token",
      TWILIO_FROM: "+15559999",
      TWILIO_BASE_URL: `http://127.0.0.1:${(twilio.address() as AddressInfo).port}`,
      MESSAGES_RETRY_BASE_MS: "0",
      MESSAGES_CONCURRENCY: "1",
    };
    try {
      const remote = await campaign(db, org, "Texts 2", tpl, undefined, "sms");
      await asAdmin(db, org, "select crm.add_campaign_recipients($1, $2)", [remote, [s2]]);
      await execute(db, org, remote);
      await send(db, env); // 429, then (no backoff configured) sent on the next round of the same run
      expect((await messages(db, remote))[0]).toMatchObject({ status: "sent", attempts: 2, provider_message_id: "SM0000000000000000000000000000001" });
      const third = await campaign(db, org, "Texts 3", tpl, undefined, "sms");
      await asAdmin(db, org, "select crm.add_campaign_recipients($1, $2)", [third, [s3]]);
      await execute(db, org, third);
      await send(db, env);
      expect((await messages(db, third))[0]).toMatchObject({
        status: "failed",
        error_message: "SMS provider 400 (21211): The 'To' number +15550003 is not a valid phone number.",
      });
      expect(seen[0]!.auth).toBe(`Basic ${Buffer.from("AC123:secret-token").toString("base64")}`);
      expect(Object.fromEntries(seen[1]!.form)).toEqual({ To: "+15550002", From: "+15559999", Body: "Hi Sue, 0 points waiting. Reply STOP to opt out." });
    } finally {
      await new Promise((r) => twilio.close(r));
    }
  });
});
