// Consent: opted-out, suppressed and bounced recipients receive nothing — from a campaign, from an
// automation (welcome, birthday), nor when they opt out after queuing — and the unsubscribe link works
// over HTTP (GET shows the confirmation, POST records the opt-out), with a List-Unsubscribe header.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { createTestDb, sqlError, type TestDb } from "../helpers/db.ts";
import { createOrg, type TestOrg } from "../helpers/identity.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { runJobs } from "../helpers/worker.ts";
import { asAdmin, campaign, customer, EVERYONE, execute, messages, outbox, send, template } from "../helpers/messaging.ts";

let db: TestDb;
let org: TestOrg;
let server: TestServer;
const ids: Record<string, string> = {};
let templateId: string;

beforeAll(async () => {
  db = await createTestDb();
  org = await createOrg(db, "consent");
  server = await startServer(db, { PUBLIC_API_URL: "http://placeholder.invalid" });
  // The server records its public URL at start; the test server listens on a port chosen at start.
  for (let i = 0; i < 100; i++) {
    const { rows } = await db.owner.query("select public_url from crm_private.messaging_keys");
    if (rows[0].public_url === "http://placeholder.invalid") break;
    await new Promise((r) => setTimeout(r, 50));
  }
  await db.owner.query("select crm_private.set_messaging_public_url($1)", [server.url]);
  ids.ok = await customer(db, org, "Olga Okay", "olga@consent.test");
  ids.optedOut = await customer(db, org, "Otto Out", "otto@consent.test");
  ids.suppressed = await customer(db, org, "Sue Pressed", "sue@consent.test");
  ids.bounced = await customer(db, org, "Bob Bounce", "bob@consent.test");
  ids.noEmail = await customer(db, org, "Nina Nomail", null);
  templateId = await template(db, org, "News");
});

afterAll(async () => {
  await server?.stop();
  await db?.drop();
});

describe("consent and suppression", () => {
  test("setConsent needs consent:manage and records source and time", async () => {
    await asAdmin(db, org, "select crm.set_consent($1, 'email', false, 'phone call')", [ids.optedOut]);
    const { rows } = await db.owner.query("select status, source, recorded_at from crm.consents where customer_id = $1 and channel = 'email'", [ids.optedOut]);
    expect(rows).toEqual([{ status: "opted_out", source: "phone call", recorded_at: expect.any(Date) }]);
    await asAdmin(db, org, "insert into crm.suppressions (channel, address, reason) values ('email', 'SUE@consent.test', 'manual')");
  });

  test("a hard bounce suppresses the address", async () => {
    const first = await campaign(db, org, "First", templateId);
    await asAdmin(db, org, "select crm.add_campaign_recipients($1, $2)", [first, [ids.bounced]]);
    await execute(db, org, first);
    await send(db);
    const [m] = await messages(db, first);
    expect(m!.status).toBe("sent");
    await db.owner.query("select crm_private.record_provider_event($1, 'bounce', true, null, 'Permanent/General 550 no such user')", [m!.provider_message_id]);
    const { rows } = await db.owner.query("select reason from crm.suppressions where organization_id = $1 and address = 'bob@consent.test'", [org.id]);
    expect(rows).toEqual([{ reason: "hard_bounce" }]);
    expect((await messages(db, first))[0]!.status).toBe("bounced");
  });

  test("a campaign reaches only those who may receive it", async () => {
    const before = (await outbox(db)).length;
    const id = await campaign(db, org, "Everyone", templateId, EVERYONE);
    await execute(db, org, id);
    const queued = await messages(db, id);
    expect(queued.map((m) => m.recipient)).toEqual(["olga@consent.test"]);
    await send(db);
    const sent = (await outbox(db)).slice(before);
    expect(sent.map((s) => s.to_address)).toEqual(["olga@consent.test"]);
    const { rows } = await db.owner.query("select customer_id, status, skip_reason from crm.campaign_contacts where campaign_id = $1", [id]);
    const by = Object.fromEntries(rows.map((r) => [r.customer_id, r]));
    expect(by[ids.ok!]!.status).toBe("sent");
    for (const k of ["optedOut", "suppressed", "bounced"]) expect(by[ids[k]!]!).toMatchObject({ status: "skipped", skip_reason: "Opted out or suppressed." });
    expect(by[ids.noEmail!]).toMatchObject({ status: "skipped", skip_reason: "No address for the channel." });
  });

  test("opting out after queuing cancels the message before it is sent", async () => {
    const id = await campaign(db, org, "Later", templateId);
    const late = await customer(db, org, "Lara Late", "lara@consent.test");
    await asAdmin(db, org, "select crm.add_campaign_recipients($1, $2)", [id, [late]]);
    await execute(db, org, id);
    await asAdmin(db, org, "select crm.set_consent($1, 'email', false)", [late]);
    const before = (await outbox(db)).length;
    await send(db);
    expect((await outbox(db)).length).toBe(before);
    expect((await messages(db, id))[0]).toMatchObject({ status: "cancelled", error_message: "The recipient opted out or is suppressed." });
  });

  test("automations honour consent too: welcome and birthday", async () => {
    const welcome = await template(db, org, "Welcome", "<p>Welcome [FirstName]!</p>");
    const birthday = await template(db, org, "Birthday", "<p>Happy birthday [FirstName]!</p>");
    await asAdmin(db, org, "update crm.messaging_settings set welcome_enabled = true, welcome_template_id = $1, birthday_enabled = true, birthday_template_id = $2", [
      welcome,
      birthday,
    ]);
    // Welcome, queued with the customer: to a new customer, not to a suppressed address.
    await asAdmin(db, org, "insert into crm.suppressions (channel, address) values ('email', 'blocked@consent.test')");
    await asAdmin(db, org, "insert into crm.customers (name, email) values ('Wendy Welcome', 'wendy@consent.test'), ('Bea Blocked', 'blocked@consent.test')");
    const { rows: w } = await db.owner.query("select recipient, body from crm.messages where automation = 'welcome'");
    expect(w.map((r) => r.recipient)).toEqual(["wendy@consent.test"]);
    expect(w[0].body).toContain("Welcome Wendy!");
    // Birthday today (organization time zone UTC): to the customer who may receive it, not to the one who opted out.
    const today = new Date().toISOString().slice(5, 10);
    await db.owner.query(`update crm.customers set birth_date = ('1990-' || $2)::date where id = any ($1)`, [[ids.ok, ids.optedOut], today]);
    await db.owner.query("select crm_private.enqueue_tenant_job('messages:birthday', $1)", [org.id]);
    await runJobs(db);
    const { rows: b } = await db.owner.query("select recipient, status from crm.messages where automation = 'birthday'");
    expect(b.map((r) => r.recipient)).toEqual(["olga@consent.test"]);
    expect(b[0].status).toBe("sent"); // the tenant job woke the sender, which ran in the same worker pass
    // Once a year: running it again queues nothing.
    await db.owner.query("select crm_private.enqueue_tenant_job('messages:birthday', $1)", [org.id]);
    await runJobs(db);
    expect((await db.owner.query("select count(*)::int as n from crm.messages where automation = 'birthday'")).rows[0].n).toBe(1);
  });

  test("enqueue_message (for other modules) honours consent and suppression", async () => {
    const ok = await db.owner.query("select crm_private.enqueue_message($1, $2, 'email', 'Invoice overdue', '<p>Please pay.</p>') as id", [org.id, ids.ok]);
    expect(ok.rows[0].id).toEqual(expect.any(String));
    for (const k of ["optedOut", "suppressed", "noEmail"]) {
      const r = await db.owner.query("select crm_private.enqueue_message($1, $2, 'email', 'Invoice overdue', '<p>Please pay.</p>') as id", [org.id, ids[k]]);
      expect(r.rows[0].id).toBeNull();
    }
  });
});

describe("the unsubscribe link over HTTP", () => {
  test("GET asks, POST records the opt-out; the e-mail carries List-Unsubscribe", async () => {
    const reader = await customer(db, org, "Rita Reader", "rita@consent.test");
    const id = await campaign(db, org, "Newsletter", templateId);
    await asAdmin(db, org, "select crm.add_campaign_recipients($1, $2)", [id, [reader]]);
    await execute(db, org, id);
    await send(db);
    const messageId = (await messages(db, id))[0]!.id;
    // (Rita also got the welcome message: the welcome automation is on since an earlier test.)
    const mail = (await outbox(db)).find((m) => m.idempotency_key === messageId)!;
    const link = /href="(http:\/\/127\.0\.0\.1:\d+\/unsubscribe\/[0-9a-f]{32}\.[A-Za-z0-9_-]{22})"/.exec(mail.html!)![1]!;
    expect(mail.headers!["List-Unsubscribe"]).toBe(`<${link}>`);
    expect(mail.headers!["List-Unsubscribe-Post"]).toBe("List-Unsubscribe=One-Click");

    const page = await fetch(link);
    expect(page.status).toBe(200);
    const html = await page.text();
    expect(html).toContain("Stop receiving marketing e-mails from");
    expect(html).toContain('<form method="post"');
    // Looking is not unsubscribing (link scanners fetch GET links).
    expect((await db.owner.query("select count(*)::int as n from crm.consents where customer_id = $1", [reader])).rows[0].n).toBe(0);

    const done = await fetch(link, { method: "POST", headers: { "content-type": "application/x-www-form-urlencoded" }, body: "List-Unsubscribe=One-Click" });
    expect(done.status).toBe(200);
    expect(await done.text()).toContain("You are unsubscribed");
    const { rows } = await db.owner.query("select status, source from crm.consents where customer_id = $1 and channel = 'email'", [reader]);
    expect(rows).toEqual([{ status: "opted_out", source: "unsubscribe link" }]);
    const { rows: cc } = await db.owner.query("select status, unsubscribed_at from crm.campaign_contacts where campaign_id = $1", [id]);
    expect(cc[0]).toMatchObject({ status: "unsubscribed", unsubscribed_at: expect.any(Date) });

    // The next campaign skips them.
    const next = await campaign(db, org, "Next", templateId);
    await asAdmin(db, org, "select crm.add_campaign_recipients($1, $2)", [next, [reader]]);
    await execute(db, org, next);
    expect(await messages(db, next)).toEqual([]);

    // A forged or altered token is refused.
    const forged = link.replace(/.$/, (c) => (c === "A" ? "B" : "A"));
    expect((await fetch(forged)).status).toBe(404);
    expect((await fetch(`${server.url}/unsubscribe/not-a-token`, { method: "POST" })).status).toBe(404);
  });

  test("open pixel and click redirect are signed; clicks go only to the message's own links", async () => {
    const reader = await customer(db, org, "Carl Click", "carl@consent.test");
    const tpl = await template(db, org, "Links", '<p>Hi [FirstName], see <a href="https://example.com/offer?a=1&amp;b=2">the offer</a>.</p>');
    const id = await campaign(db, org, "Links", tpl);
    await asAdmin(db, org, "select crm.add_campaign_recipients($1, $2)", [id, [reader]]);
    await execute(db, org, id);
    await send(db);
    const messageId = (await messages(db, id))[0]!.id;
    const mail = (await outbox(db)).find((m) => m.idempotency_key === messageId)!;
    const pixel = /src="(http:\/\/127\.0\.0\.1:\d+\/t\/o\/[^"]+)"/.exec(mail.html!)![1]!;
    const click = /href="(http:\/\/127\.0\.0\.1:\d+\/t\/c\/[^"]+)"/.exec(mail.html!)![1]!.replace(/&amp;/g, "&");
    const img = await fetch(pixel);
    expect(img.headers.get("content-type")).toMatch(/image\/gif/);
    const go = await fetch(click, { redirect: "manual" });
    expect(go.status).toBe(302);
    expect(go.headers.get("location")).toBe("https://example.com/offer?a=1&b=2");
    const elsewhere = click.replace(/\?u=.*/, `?u=${encodeURIComponent("https://evil.example/")}`);
    expect((await fetch(elsewhere, { redirect: "manual" })).status).toBe(404);
    const { rows } = await db.owner.query("select status, opened_at, clicked_at from crm.campaign_contacts where campaign_id = $1", [id]);
    expect(rows[0]).toMatchObject({ status: "clicked", opened_at: expect.any(Date), clicked_at: expect.any(Date) });
    const metrics = (await asAdmin<Record<string, number>>(db, org, "select (crm.campaign_metrics($1)).*", [id]))[0]!;
    expect(metrics).toMatchObject({ queued: 1, sent: 1, opened: 1, clicked: 1 });
  });

  test("suppressions need consent:manage", async () => {
    const viewer = (await db.owner.query("select id from crm.roles where organization_id = $1 and name = 'Viewer'", [org.id])).rows[0].id;
    const { addMember } = await import("../helpers/identity.ts");
    const v = await addMember(db, org, "consent-viewer", "Viewer");
    expect(viewer).toBeTruthy();
    const { asUser } = await import("../helpers/db.ts");
    const e = await sqlError(asUser(db, { sub: v, org: org.id }, (c) => c.query("insert into crm.suppressions (channel, address) values ('email', 'x@y.test')")));
    expect(e.code).toBe("42501");
    const f = await sqlError(asUser(db, { sub: v, org: org.id }, (c) => c.query("select crm.set_consent($1, 'email', true)", [ids.ok])));
    expect(f.code).toBe("CRFBD");
  });
});
