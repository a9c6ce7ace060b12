// Amazon SES through the real @aws-sdk/client-ses client against a local endpoint speaking SES's query
// API: the signed request (SigV4 with the configured credentials, region and service), the raw
// message (List-Unsubscribe, our message id, the rendered HTML), throttling retried with exponential
// backoff, a permanent rejection failing the message with SES's text; account e-mails through SES;
// SES bounce and complaint notifications (SNS format) suppressing addresses.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { createTestDb, type TestDb } from "../helpers/db.ts";
import { createOrg, type TestOrg } from "../helpers/identity.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { runJobs } from "../helpers/worker.ts";
import { decodeMime, SES_TEST_CREDENTIALS, startSesEndpoint, type SesEndpoint } from "../helpers/ses.ts";
import { asAdmin, campaign, customer, execute, messages, send, template } from "../helpers/messaging.ts";

let db: TestDb;
let org: TestOrg;
let ses: SesEndpoint;
let templateId: string;
const BASE_MS = 60_000;

beforeAll(async () => {
  db = await createTestDb();
  org = await createOrg(db, "ses");
  ses = await startSesEndpoint();
  templateId = await template(db, org, "Offer", "<p>Hello [FirstName] & friends, <a href=\"https://shop.example/sale\">shop now</a></p>");
});

afterAll(async () => {
  await ses?.stop();
  await db?.drop();
});

const env = () => ({ ...ses.env, MESSAGES_RETRY_BASE_MS: String(BASE_MS), MESSAGES_CONCURRENCY: "1", MESSAGES_MAX_ATTEMPTS: "4" });

async function oneRecipientCampaign(name: string, email: string) {
  const c = await customer(db, org, name, email);
  const id = await campaign(db, org, name, templateId);
  await asAdmin(db, org, "select crm.add_campaign_recipients($1, $2)", [id, [c]]);
  await execute(db, org, id);
  return id;
}

describe("SES with the real SDK client", () => {
  test("a signed SendRawEmail with our headers; the MessageId is recorded", async () => {
    const id = await oneRecipientCampaign("Sam&Co <Signed>", "sam@ses.test");
    const before = ses.requests.length;
    await send(db, env());
    const req = ses.requests[before]!;
    expect(req.signatureValid).toBe(true);
    expect(req.authorization).toMatch(
      new RegExp(`^AWS4-HMAC-SHA256 Credential=${SES_TEST_CREDENTIALS.accessKeyId}/\\d{8}/${SES_TEST_CREDENTIALS.region}/ses/aws4_request, SignedHeaders=[^,]*host[^,]*x-amz-date[^,]*, Signature=[0-9a-f]{64}$`),
    );
    expect(req.params).toMatchObject({ Action: "SendRawEmail", Version: "2010-12-01", ConfigurationSetName: "cairn-test" });
    const [m] = await messages(db, id);
    expect(Object.values(req.params)).toContain(m!.id); // the cairn-message-id tag
    const mime = decodeMime(req.raw);
    expect(mime.headers.to).toBe("sam@ses.test");
    expect(mime.headers.from).toBe("Cairn Test <news@cairn.test>");
    expect(mime.headers["x-cairn-message-id"]).toBe(m!.id);
    expect(mime.headers["list-unsubscribe"]).toMatch(/^<http:\/\/.+\/unsubscribe\/[0-9a-f]{32}\.[A-Za-z0-9_-]{22}>$/);
    expect(mime.headers["list-unsubscribe-post"]).toBe("List-Unsubscribe=One-Click");
    expect(mime.html).toContain("Hello Sam&amp;Co & friends"); // the value escaped, the template's own HTML as written
    expect(mime.html).toMatch(/href="http:\/\/[^"]+\/t\/c\/[^"]+\?u=https%3A%2F%2Fshop\.example%2Fsale"/);
    expect(mime.text).toContain("Hello Sam&Co & friends");
    expect(m).toMatchObject({ status: "sent", attempts: 1, provider_message_id: req.messageId });
  });

  test("throttling is retried with exponential backoff, then sent", async () => {
    const id = await oneRecipientCampaign("Tia Throttled", "tia@ses.test");
    ses.script.push({ kind: "throttle" });
    let t0 = Date.now();
    await send(db, env());
    let [m] = await messages(db, id);
    expect(m).toMatchObject({ status: "pending", attempts: 1 });
    expect(m!.error_message).toBe("SES Throttling: Maximum sending rate exceeded.");
    let wait = m!.next_attempt_at!.getTime() - t0;
    expect(wait).toBeGreaterThan(BASE_MS * 0.75);
    expect(wait).toBeLessThan(BASE_MS * 1.25 + 5_000);
    // Not due yet: a run now leaves it alone.
    const before = ses.requests.length;
    await send(db, env());
    expect(ses.requests.length).toBe(before);
    // The backoff passes (moved forward here); throttled again: the wait doubles.
    await db.owner.query("update crm.messages set next_attempt_at = now() where id = $1", [m!.id]);
    ses.script.push({ kind: "throttle" });
    t0 = Date.now();
    await send(db, env());
    [m] = await messages(db, id);
    expect(m).toMatchObject({ status: "pending", attempts: 2 });
    wait = m!.next_attempt_at!.getTime() - t0;
    expect(wait).toBeGreaterThan(2 * BASE_MS * 0.75);
    expect(wait).toBeLessThan(2 * BASE_MS * 1.25 + 5_000);
    // Third time lucky.
    await db.owner.query("update crm.messages set next_attempt_at = now() where id = $1", [m!.id]);
    await send(db, env());
    [m] = await messages(db, id);
    expect(m).toMatchObject({ status: "sent", attempts: 3, error_message: null });
    expect(ses.requests.slice(-3).map((r) => r.answered)).toEqual(["throttle", "throttle", "ok"]);
  });

  test("retries stop at MESSAGES_MAX_ATTEMPTS: the message fails", async () => {
    const id = await oneRecipientCampaign("Tom Toomany", "tom@ses.test");
    for (let i = 0; i < 4; i++) {
      ses.script.push({ kind: "throttle" });
      await db.owner.query("update crm.messages set next_attempt_at = now() where campaign_id = $1 and status = 'pending'", [id]);
      await send(db, env());
    }
    const [m] = await messages(db, id);
    expect(m).toMatchObject({ status: "failed", attempts: 4, error_message: "SES Throttling: Maximum sending rate exceeded." });
  });

  test("a permanent error fails the message with SES's text, at once", async () => {
    const id = await oneRecipientCampaign("Rex Rejected", "rex@ses.test");
    ses.script.push({ kind: "reject", message: "Email address is not verified. The following identities failed the check: rex@ses.test" });
    await send(db, env());
    const [m] = await messages(db, id);
    expect(m).toMatchObject({
      status: "failed",
      attempts: 1,
      error_message: "SES MessageRejected: Email address is not verified. The following identities failed the check: rex@ses.test",
    });
    const { rows } = await db.owner.query("select status, failed_at from crm.campaign_contacts where campaign_id = $1", [id]);
    expect(rows[0]).toMatchObject({ status: "failed", failed_at: expect.any(Date) });
  });

  test("account e-mails leave through SES too", async () => {
    await db.owner.query("select crm_private.queue_email('confirm_email', 'newuser@ses.test', '{\"token\": \"abc\", \"username\": \"newuser\"}')");
    const before = ses.requests.length;
    await runJobs(db, env());
    const req = ses.requests.slice(before).find((r) => decodeMime(r.raw).headers.to === "newuser@ses.test");
    expect(req?.signatureValid).toBe(true);
    expect(decodeMime(req!.raw).text).toContain("/confirm-email?token=abc");
  });
});

describe("SES notifications through SNS", () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startServer(db, { SES_NOTIFICATION_SECRET: "sns-shared-secret" });
  });
  afterAll(async () => {
    await server?.stop();
  });

  const sns = (message: unknown) => JSON.stringify({
    Type: "Notification",
    MessageId: crypto.randomUUID(),
    TopicArn: "arn:aws:sns:eu-central-1:123456789012:ses-notifications",
    Message: JSON.stringify(message),
    Timestamp: new Date().toISOString(),
  });
  const post = (body: string, secret = "sns-shared-secret") =>
    fetch(`${server.url}/messaging/ses-notifications?secret=${encodeURIComponent(secret)}`, { method: "POST", headers: { "content-type": "text/plain; charset=UTF-8" }, body });

  test("delivery, permanent bounce and complaint update the message, the recipient and the suppression list", async () => {
    const a = await oneRecipientCampaign("Dora Delivered", "dora@ses.test");
    const b = await oneRecipientCampaign("Ben Bounced", "ben@ses.test");
    const c = await oneRecipientCampaign("Cora Complains", "cora@ses.test");
    await send(db, env());
    const [ma] = await messages(db, a);
    const [mb] = await messages(db, b);
    const [mc] = await messages(db, c);
    expect((await post(sns({ notificationType: "Delivery", mail: { messageId: ma!.provider_message_id }, delivery: { recipients: ["dora@ses.test"] } }))).status).toBe(200);
    expect((await post(sns({
      notificationType: "Bounce",
      mail: { messageId: mb!.provider_message_id },
      bounce: { bounceType: "Permanent", bounceSubType: "General", bouncedRecipients: [{ emailAddress: "ben@ses.test", diagnosticCode: "smtp; 550 5.1.1 user unknown" }] },
    }))).status).toBe(200);
    expect((await post(sns({
      eventType: "Complaint",
      mail: { messageId: mc!.provider_message_id, tags: { "cairn-message-id": [mc!.id] } },
      complaint: { complainedRecipients: [{ emailAddress: "cora@ses.test" }], complaintFeedbackType: "abuse" },
    }))).status).toBe(200);
    expect((await messages(db, a))[0]!.status).toBe("delivered");
    expect((await messages(db, b))[0]).toMatchObject({ status: "bounced", error_message: "Permanent/General smtp; 550 5.1.1 user unknown" });
    const sup = await db.owner.query("select address::text, reason from crm.suppressions where organization_id = $1 order by address", [org.id]);
    expect(sup.rows).toEqual([{ address: "ben@ses.test", reason: "hard_bounce" }, { address: "cora@ses.test", reason: "complaint" }]);
    const cc = await db.owner.query(
      "select cc.status from crm.campaign_contacts cc where cc.campaign_id = any ($1) order by array_position($1, cc.campaign_id)",
      [[a, b, c]],
    );
    expect(cc.rows.map((r) => r.status)).toEqual(["delivered", "bounced", "unsubscribed"]);
    const metrics = (await asAdmin<Record<string, number>>(db, org, "select (crm.campaign_metrics($1)).*", [b]))[0]!;
    expect(metrics).toMatchObject({ sent: 1, bounced: 1 });
  });

  test("a message whose send was not recorded is reconciled by SES's notification (its tag)", async () => {
    const id = await oneRecipientCampaign("Una Unrecorded", "una@ses.test");
    // The worker handed it over and died: status sending, lease gone, no provider id.
    await db.owner.query("update crm.messages set status = 'sending', attempts = 1, lease_expires_at = now() - interval '1 minute' where campaign_id = $1", [id]);
    const before = ses.requests.length;
    await send(db, env());
    expect(ses.requests.length).toBe(before); // SES cannot be asked: never handed over a second time
    const [m] = await messages(db, id);
    expect(m!.status).toBe("sending");
    await post(sns({ eventType: "Send", mail: { messageId: "0100018cfeedface", tags: { "cairn-message-id": [m!.id] } } }));
    expect((await messages(db, id))[0]).toMatchObject({ status: "sent", provider_message_id: "0100018cfeedface" });
  });

  test("a wrong secret is refused", async () => {
    expect((await post(sns({ notificationType: "Delivery", mail: { messageId: "x" } }), "wrong")).status).toBe(403);
  });
});
