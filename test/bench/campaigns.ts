// Campaigns benchmark: executeCampaign's fan-out of a 100,000-recipient campaign (one INSERT … SELECT
// with rendering, consent and suppression) beside a bare INSERT … SELECT of the same rows into a
// plain table (the floor), and messages:send throughput with the local provider beside a bare loop
// over the same provider (the floor). Its own scratch database (embedded PostgreSQL, or
// BENCH_DATABASE_URL's server as superuser). Prints tables; asserts nothing.
//
//   npm run bench -- campaigns [--small]     (--small: 10,000 recipients)
//
// BENCH_FANOUT_RUNS (default 3) fan-outs, BENCH_SEND_MESSAGES (default 20,000) messages sent.
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import { pino } from "pino";
import { applyCurrentMigration, ensureDatabase, ensureRoles, migrate, withCredentials, withDatabase } from "../../src/db/bootstrap.ts";
import { startEmbeddedPostgres, type EmbeddedServer } from "../../src/db/embedded.ts";
import { loadConfig } from "../../src/config.ts";
import type { TestDb } from "../helpers/db.ts";

const RUNS = Number(process.env.BENCH_FANOUT_RUNS ?? 3);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

export async function runCampaignsBench(opts: { small?: boolean } = {}): Promise<void> {
  const { createOrg } = await import("../helpers/identity.ts");
  const { makeProviders, sendMessages } = await import("../../worker/tasks/messages-send.ts");
  const { LocalEmailProvider } = await import("../../worker/providers/email.ts");
  const recipients = opts.small ? 10_000 : 100_000;
  const toSend = Math.min(recipients, Number(process.env.BENCH_SEND_MESSAGES ?? (opts.small ? 5_000 : 20_000)));
  const passwords = { owner: "bench-owner", authenticator: "bench-authenticator" };
  let embedded: EmbeddedServer | undefined;
  let dataDir: string | undefined;
  let rootUrl = process.env.BENCH_DATABASE_URL;
  if (!rootUrl) {
    dataDir = path.join(os.tmpdir(), `cairn-bench-campaigns-${process.pid}`);
    embedded = await startEmbeddedPostgres({ dataDir, port: Number(process.env.EMBEDDED_PG_PORT) || 56000 + (process.pid % 3000), durable: false });
    rootUrl = embedded.superuserUrl();
  }
  const name = "cairn_bench_campaigns";
  const admin = new pg.Client({ connectionString: rootUrl });
  await admin.connect();
  await admin.query(`drop database if exists ${name} with (force)`);
  await admin.end();
  await ensureRoles(rootUrl, passwords);
  await ensureDatabase(rootUrl, name);
  const dbUrl = withDatabase(rootUrl, name);
  const ownerUrl = withCredentials(dbUrl, "crm_owner", passwords.owner);
  const authUrl = withCredentials(dbUrl, "crm_authenticator", passwords.authenticator);
  await migrate(ownerUrl);
  await applyCurrentMigration(ownerUrl);
  const owner = new pg.Pool({ connectionString: ownerUrl, max: 20 });
  try {
    const db = { ownerUrl, authUrl, owner } as unknown as TestDb;
    const org = await createOrg(db, "bench-campaigns");
    // Recipients: persons with an e-mail, one in three with a primary contact, a level, some
    // loyalty points; 2 % opted out and 1 % suppressed (they are skipped).
    await owner.query("update crm.messaging_settings set send_rate_per_minute = 1000000 where organization_id = $1", [org.id]);
    await owner.query(
      `insert into crm.customers (organization_id, name, email, kind, status)
       select $1, 'Customer ' || g, 'c' || g || '@bench.example', 'person', (array['lead', 'prospect', 'customer'])[1 + g % 3]
         from generate_series(1, $2) g`,
      [org.id, recipients],
    );
    await owner.query(
      `insert into crm.contacts (organization_id, customer_id, first_name, last_name, email, is_primary)
       select c.organization_id, c.id, 'First' || row_number() over (), 'Last', null, true
         from crm.customers c where c.organization_id = $1 and abs(hashtext(c.id::text)) % 3 = 0`,
      [org.id],
    );
    await owner.query(
      `insert into crm.consents (organization_id, customer_id, channel, status)
       select organization_id, id, 'email', 'opted_out' from crm.customers where organization_id = $1 and abs(hashtext(id::text)) % 50 = 0`,
      [org.id],
    );
    await owner.query(
      `insert into crm.suppressions (organization_id, channel, address, reason)
       select organization_id, 'email', email, 'hard_bounce' from crm.customers where organization_id = $1 and abs(hashtext(id::text)) % 100 = 1`,
      [org.id],
    );
    await owner.query("vacuum analyze crm.customers, crm.contacts, crm.consents, crm.suppressions");
    const asAdmin = async (sql: string, params: unknown[]) => {
      const c = await owner.connect();
      try {
        await c.query("begin");
        await c.query("select set_config('jwt.claims.sub', $1, true), set_config('jwt.claims.org', $2, true)", [org.adminId, org.id]);
        const r = await c.query(sql, params);
        await c.query("commit");
        return r.rows;
      } catch (e) {
        await c.query("rollback");
        throw e;
      } finally {
        c.release();
      }
    };
    const template = (await asAdmin(
      "insert into crm.message_templates (name, channel, subject, body) values ('Offer', 'email', 'An offer for [FirstName]', '<p>Hello [FirstName] [LastName], as a [Level] member you have [Points] points. <a href=\"https://shop.example/\">Shop</a></p>') returning id",
      [],
    ))[0].id as string;
    const segment = (await asAdmin(
      `insert into crm.segments (name, filter) values ('Everyone', '{"all": [{"field": "status", "op": "in", "value": ["lead", "prospect", "customer", "churned"]}]}') returning id`,
      [],
    ))[0].id as string;

    process.stdout.write(`\ncampaigns: ${recipients.toLocaleString("en")} customers (2 % opted out, 1 % suppressed), ${RUNS} fan-outs, ${toSend.toLocaleString("en")} messages sent\n\n`);

    // Fan-out ------------------------------------------------------------------------------------------
    const fanout: number[] = [];
    let queued = 0;
    let lastCampaign = "";
    for (let r = 0; r < RUNS; r++) {
      const id = (await asAdmin("insert into crm.campaigns (name, template_id, segment_id) values ($1, $2, $3) returning id", [`Run ${r}`, template, segment]))[0].id as string;
      const t0 = performance.now();
      await asAdmin("select crm.execute_campaign($1)", [id]);
      fanout.push(performance.now() - t0);
      queued = (await owner.query("select count(*)::int as n from crm.messages where campaign_id = $1", [id])).rows[0].n;
      lastCampaign = id;
      if (r < RUNS - 1) await owner.query("update crm.messages set status = 'cancelled' where campaign_id = $1", [id]);
    }
    // Floor: the same rows (id, recipient, a body) into a plain table without indexes or rendering.
    await owner.query("create table public.bench_fanout_floor (id uuid, organization_id uuid, customer_id uuid, recipient text, subject text, body text, scheduled_for timestamptz)");
    const floor: number[] = [];
    for (let r = 0; r < RUNS; r++) {
      await owner.query("truncate public.bench_fanout_floor");
      const t0 = performance.now();
      await owner.query(
        `insert into public.bench_fanout_floor
         select gen_random_uuid(), c.organization_id, c.id, c.email, 'An offer for ' || c.name, '<p>Hello ' || c.name || '</p>', now()
           from crm.customers c where c.organization_id = $1 and c.deleted_at is null`,
        [org.id],
      );
      floor.push(performance.now() - t0);
    }
    process.stdout.write("| fan-out | rows | median | runs (ms) |\n|---|---:|---:|---|\n");
    process.stdout.write(`| executeCampaign (render, consent, suppression, campaign_contacts) | ${queued.toLocaleString("en")} queued | ${(median(fanout) / 1000).toFixed(2)} s | ${fanout.map((x) => Math.round(x)).join(", ")} |\n`);
    process.stdout.write(`| bare INSERT … SELECT into a plain table | ${recipients.toLocaleString("en")} | ${(median(floor) / 1000).toFixed(2)} s | ${floor.map((x) => Math.round(x)).join(", ")} |\n`);

    // Sending -------------------------------------------------------------------------------------------
    // Only `toSend` of the last campaign's messages are due; the rest wait.
    await owner.query(
      `update crm.messages set scheduled_for = now() + interval '1 day' where campaign_id = $1
          and id not in (select id from crm.messages where campaign_id = $1 order by id limit $2)`,
      [lastCampaign, toSend],
    );
    const config = loadConfig({ NODE_ENV: "production", DATABASE_URL: ownerUrl, AUTH_DATABASE_URL: authUrl, JWT_SECRET: "x".repeat(32) });
    const ctx = { config, logger: pino({ level: "silent" }), ownerPool: owner };
    const providers = makeProviders(ctx);
    let t0 = performance.now();
    const summary = await sendMessages(ctx, providers, { maxBatches: 1_000_000 });
    const sendMs = performance.now() - t0;
    // Floor: the same number of hand-overs to the same provider, same concurrency, no queue.
    const provider = new LocalEmailProvider(owner);
    const floorCount = summary.sent;
    let next = 0;
    t0 = performance.now();
    await Promise.all(
      Array.from({ length: config.messaging.concurrency }, async () => {
        while (next < floorCount) {
          const i = next++;
          await provider.send({ to: `floor${i}@bench.example`, subject: "Floor", text: "Hello", html: "<p>Hello</p>", template: "floor", idempotencyKey: `floor-${i}` });
        }
      }),
    );
    const floorMs = performance.now() - t0;
    process.stdout.write("\n| sending (local provider) | messages | time | messages/s |\n|---|---:|---:|---:|\n");
    process.stdout.write(`| messages:send (claim batches of ${config.messaging.batchSize}, ${config.messaging.concurrency} in flight, record) | ${summary.sent.toLocaleString("en")} | ${(sendMs / 1000).toFixed(2)} s | ${Math.round(summary.sent / (sendMs / 1000)).toLocaleString("en")} |\n`);
    process.stdout.write(`| bare provider loop (${config.messaging.concurrency} in flight) | ${floorCount.toLocaleString("en")} | ${(floorMs / 1000).toFixed(2)} s | ${Math.round(floorCount / (floorMs / 1000)).toLocaleString("en")} |\n`);
  } finally {
    await owner.end();
    const c = new pg.Client({ connectionString: rootUrl });
    await c.connect();
    await c.query(`drop database if exists ${name} with (force)`);
    await c.end();
    await embedded?.stop();
    if (dataDir) await fs.rm(dataDir, { recursive: true, force: true });
  }
}
