// The fan-out and the queue's delivery guarantee: concurrent executeCampaign calls queue each customer
// exactly once; executing again after a pause queues only newcomers; a worker stopped between the
// provider's acceptance and the database write neither sends twice nor loses a message after restart.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { createTestDb, sqlError, asUser, type TestDb } from "../helpers/db.ts";
import { addMember, createOrg, type TestOrg } from "../helpers/identity.ts";
import { asAdmin, campaign, customer, execute, messages, outbox, send, template, workerContext } from "../helpers/messaging.ts";
import { makeProviders, type Providers } from "../../worker/tasks/messages-send.ts";
import { runJobs } from "../helpers/worker.ts";

let db: TestDb;
let org: TestOrg;
let templateId: string;

beforeAll(async () => {
  db = await createTestDb();
  org = await createOrg(db, "fanout");
  templateId = await template(db, org, "Offer");
  await db.owner.query("insert into crm.custom_field_definitions (organization_id, entity, key, label, field_type) values ($1, 'customer', 'wave', 'Wave', 'number')", [org.id]);
  await db.owner.query(
    `insert into crm.customers (organization_id, name, email, kind, custom_fields)
     select $1, 'Customer ' || g, 'c' || g || '@fanout.test', 'person', jsonb_build_object('wave', 1) from generate_series(1, 400) g`,
    [org.id],
  );
});

afterAll(async () => {
  await db?.drop();
});

class WorkerStopped extends Error {
  override name = "WorkerStopped";
}

describe("executeCampaign", () => {
  test("concurrent calls queue each customer exactly once", async () => {
    const id = await campaign(db, org, "Concurrent", templateId, { all: [{ field: "custom_field", key: "wave", op: "=", value: 1 }] });
    const results = await Promise.allSettled(Array.from({ length: 6 }, () => execute(db, org, id)));
    expect(results.every((r) => r.status === "fulfilled")).toBe(true);
    const { rows } = await db.owner.query("select count(*)::int as n, count(distinct customer_id)::int as customers from crm.messages where campaign_id = $1", [id]);
    expect(rows[0]).toEqual({ n: 400, customers: 400 });
    const cc = await db.owner.query("select status, count(*)::int as n from crm.campaign_contacts where campaign_id = $1 group by status", [id]);
    expect(cc.rows).toEqual([{ status: "queued", n: 400 }]);
    // Rendered on the message.
    const m = (await messages(db, id))[0]!;
    expect(m.subject).toMatch(/^News for Customer$/);
    expect(m.body).toContain("Hello Customer ");
  });

  test("after a pause, executing again queues only those not queued yet", async () => {
    await send(db); // the first test's messages
    const id = await campaign(db, org, "Waves", templateId, { all: [{ field: "custom_field", key: "wave", op: "=", value: 2 }] });
    await db.owner.query("update crm.customers set custom_fields = '{\"wave\": 2}' where organization_id = $1 and name in ('Customer 1', 'Customer 2')", [org.id]);
    expect((await execute(db, org, id)).status).toBe("active");
    await asAdmin(db, org, "update crm.campaigns set status = 'paused' where id = $1", [id]);
    await db.owner.query("update crm.customers set custom_fields = '{\"wave\": 2}' where organization_id = $1 and name = 'Customer 3'", [org.id]);
    // A paused campaign's queued messages wait.
    const sentBefore = (await outbox(db)).length;
    await send(db);
    expect((await outbox(db)).length).toBe(sentBefore);
    expect((await messages(db, id)).map((m) => m.status)).toEqual(["pending", "pending"]);
    expect((await execute(db, org, id)).status).toBe("active");
    expect((await messages(db, id)).map((m) => m.recipient)).toEqual(["c1@fanout.test", "c2@fanout.test", "c3@fanout.test"]);
  });

  test("a segment reaches only the customers its caller sees (a role with campaign codes and customers:read_own)", async () => {
    const role = (
      await db.owner.query("insert into crm.roles (organization_id, name, description) values ($1, 'Own campaigner', 'test') returning id", [org.id])
    ).rows[0].id as string;
    await db.owner.query(
      `insert into crm.role_permissions (organization_id, role_id, permission_code)
       select $1, $2, unnest(array['campaigns:read', 'campaigns:update', 'campaigns:execute', 'customers:read_own'])`,
      [org.id, role],
    );
    const rep = await addMember(db, { ...org, roles: { ...org.roles, "Own campaigner": role } }, "own-campaigner", "Own campaigner");
    await db.owner.query("update crm.customers set owner_id = $2, custom_fields = '{\"wave\": 3}' where organization_id = $1 and name in ('Customer 10', 'Customer 11')", [org.id, rep]);
    await db.owner.query("update crm.customers set custom_fields = '{\"wave\": 3}' where organization_id = $1 and name in ('Customer 12', 'Customer 13')", [org.id]);
    const id = await campaign(db, org, "Own wave", templateId, { all: [{ field: "custom_field", key: "wave", op: "=", value: 3 }] });
    const segmentId = (await db.owner.query("select segment_id from crm.campaigns where id = $1", [id])).rows[0].segment_id as string;
    const added = await asUser(db, { sub: rep, org: org.id }, async (c) => (await c.query("select crm.add_campaign_segment($1, $2) as n", [id, segmentId])).rows[0].n, { commit: true });
    expect(added).toBe(2);
    await asUser(db, { sub: rep, org: org.id }, (c) => c.query("select crm.execute_campaign($1)", [id]), { commit: true });
    expect((await messages(db, id)).map((m) => m.recipient).sort()).toEqual(["c10@fanout.test", "c11@fanout.test"]);
  });

  test("workflow: illegal moves are INVALID_STATE; completed campaigns cannot execute; soft delete cancels unsent messages", async () => {
    const id = await campaign(db, org, "Workflow", templateId);
    const claims = { sub: org.adminId, org: org.id };
    expect((await sqlError(asUser(db, claims, (c) => c.query("update crm.campaigns set status = 'completed' where id = $1", [id])))).code).toBe("CRSTA");
    expect((await sqlError(asUser(db, claims, (c) => c.query("update crm.campaigns set status = 'paused' where id = $1", [id])))).code).toBe("CRSTA");
    const [c1] = await db.owner.query("select id from crm.customers where organization_id = $1 and name = 'Customer 10'", [org.id]).then((r) => r.rows.map((x) => x.id));
    await asAdmin(db, org, "select crm.add_campaign_recipients($1, $2)", [id, [c1]]);
    await execute(db, org, id);
    await asAdmin(db, org, "select crm.delete_campaign($1)", [id]);
    expect((await messages(db, id))[0]!.status).toBe("cancelled");
    expect(await asAdmin(db, org, "select id from crm.campaigns where id = $1", [id])).toEqual([]);
    const done = await campaign(db, org, "Done", templateId);
    await asAdmin(db, org, "update crm.campaigns set status = 'active' where id = $1", [done]);
    await asAdmin(db, org, "update crm.campaigns set status = 'completed' where id = $1", [done]);
    expect((await sqlError(asUser(db, claims, (c) => c.query("select crm.execute_campaign($1)", [done])))).code).toBe("CRSTA");
    // Unknown placeholder in a template.
    const e = await sqlError(asUser(db, claims, (c) => c.query("insert into crm.message_templates (name, channel, subject, body) values ('x', 'email', 'Hi', 'Dear [Firstname]')")));
    expect(e).toMatchObject({ code: "CRVAL", column: "body" });
    expect(e.message).toContain("[Firstname]");
    // Tasks link to a campaign.
    await asAdmin(db, org, "insert into crm.tasks (title, campaign_id) values ('Design the banner', $1)", [done]);
  });
});

describe("a worker stopped between the provider's acceptance and the database write", () => {
  test("after restart: no message sent twice, none lost", async () => {
    const id = await campaign(db, org, "Crash", templateId, { all: [{ field: "custom_field", key: "wave", op: "=", value: 1 }] });
    // Only this campaign's messages are due (the first test's are already sent or will be below).
    await send(db); // drain earlier campaigns
    await execute(db, org, id);
    const total = (await messages(db, id)).length;
    expect(total).toBeGreaterThan(300);
    const env = { MESSAGES_BATCH_SIZE: "10", MESSAGES_CONCURRENCY: "1" };
    const real = makeProviders(workerContext(db, env));
    let calls = 0;
    // The first message of the batch is handed over and accepted, then the worker dies before it records
    // anything; the other nine claimed messages were never handed over.
    const dying: Providers = {
      ...real,
      email: {
        name: real.email.name,
        lookup: real.email.lookup!.bind(real.email),
        send: async (m) => {
          calls++;
          return real.email.send(m);
        },
      },
    };
    await expect(
      send(db, env, {
        providers: dying,
        hooks: {
          afterProviderCall: () => {
            throw new WorkerStopped("killed");
          },
        },
      }),
    ).rejects.toThrow("killed");
    expect(calls).toBe(1);
    const stuck = (await db.owner.query("select id from crm.messages where campaign_id = $1 and status = 'sending'", [id])).rows;
    expect(stuck).toHaveLength(10);
    // Restart: the leases run out (time passes), then the worker runs again.
    await db.owner.query("update crm.messages set lease_expires_at = now() - interval '1 second' where campaign_id = $1 and status = 'sending'", [id]);
    const summary = await send(db, { MESSAGES_BATCH_SIZE: "100" });
    expect(summary).toMatchObject({ reconciled: 1, released: 9, failed: 0 });
    const ms = await messages(db, id);
    expect(ms.every((m) => m.status === "sent")).toBe(true);
    const { rows } = await db.owner.query(
      `select count(*)::int as n, count(distinct idempotency_key)::int as distinct_keys
         from crm_private.email_outbox where idempotency_key = any ($1::text[])`,
      [ms.map((m) => m.id)],
    );
    expect(rows[0]).toEqual({ n: total, distinct_keys: total });
    // The reconciled message kept its single provider id.
    const reconciled = ms.find((m) => stuck.some((s) => s.id === m.id) && m.attempts === 1 && m.provider_message_id);
    expect(reconciled).toBeDefined();
  });

  test("messages:send runs through the worker and the campaign's recipients move to sent", async () => {
    const id = await campaign(db, org, "Through the worker", templateId);
    const ids = (await db.owner.query("select id from crm.customers where organization_id = $1 order by name limit 5", [org.id])).rows.map((r) => r.id);
    await asAdmin(db, org, "select crm.add_campaign_recipients($1, $2)", [id, ids]);
    await execute(db, org, id);
    await runJobs(db);
    const { rows } = await db.owner.query("select status, count(*)::int as n from crm.campaign_contacts where campaign_id = $1 group by status", [id]);
    expect(rows).toEqual([{ status: "sent", n: 5 }]);
    const metrics = (await asAdmin<Record<string, unknown>>(db, org, "select (crm.campaign_metrics($1)).*", [id]))[0]!;
    expect(metrics).toMatchObject({ recipients: 5, queued: 5, sent: 5, delivered: 0, conversions: 0 });
  });
});

void customer;
