// Campaign and message-queue fixtures: an organization with a template, customers with addresses,
// a worker context for messages:send, and the local outbox.
import { pino } from "pino";
import { loadConfig } from "../../src/config.ts";
import { makeProviders, sendMessages, type Providers, type SendHooks } from "../../worker/tasks/messages-send.ts";
import type { TaskContext } from "../../worker/types.ts";
import { asUser, type TestDb } from "./db.ts";
import type { TestOrg } from "./identity.ts";

export function workerContext(db: TestDb, env: Record<string, string> = {}): TaskContext {
  const config = loadConfig({ NODE_ENV: "test", DATABASE_URL: db.ownerUrl, AUTH_DATABASE_URL: db.authUrl, JWT_SECRET: "x".repeat(32), ...env });
  return { config, logger: pino({ level: "silent" }), ownerPool: db.owner, authPool: db.auth };
}

/** One messages:send run, as the worker does it (optionally with other providers or a hook). */
export async function send(db: TestDb, env: Record<string, string> = {}, opts: { providers?: Providers; hooks?: SendHooks } = {}) {
  const ctx = workerContext(db, env);
  return sendMessages(ctx, opts.providers ?? makeProviders(ctx), { hooks: opts.hooks });
}

/** SQL as the organization's Administrator, committed. */
export function asAdmin<T>(db: TestDb, org: TestOrg, sql: string, params: unknown[] = []): Promise<T[]> {
  return asUser(db, { sub: org.adminId, org: org.id }, async (c) => (await c.query(sql, params)).rows as T[], { commit: true });
}

export async function customer(db: TestDb, org: TestOrg, name: string, email: string | null, extra: Record<string, unknown> = {}): Promise<string> {
  const cols = ["organization_id", "name", "email", "kind", ...Object.keys(extra)];
  const vals = [org.id, name, email, "person", ...Object.values(extra)];
  const { rows } = await db.owner.query(
    `insert into crm.customers (${cols.join(", ")}) values (${cols.map((_, i) => `$${i + 1}`).join(", ")}) returning id`,
    vals,
  );
  return rows[0].id as string;
}

export async function template(db: TestDb, org: TestOrg, name: string, body = "<p>Hello [FirstName] [LastName], you are [Level] with [Points] points.</p>", channel = "email"): Promise<string> {
  const rows = await asAdmin<{ id: string }>(
    db,
    org,
    "insert into crm.message_templates (name, channel, subject, body) values ($1, $2, $3, $4) returning id",
    [name, channel, channel === "email" ? "News for [FirstName]" : null, body],
  );
  return rows[0]!.id;
}

export async function campaign(db: TestDb, org: TestOrg, name: string, templateId: string, segmentFilter?: unknown, type = "email"): Promise<string> {
  let segmentId: string | null = null;
  if (segmentFilter) {
    segmentId = (await asAdmin<{ id: string }>(db, org, "insert into crm.segments (name, filter) values ($1, $2) returning id", [`${name} segment`, JSON.stringify(segmentFilter)]))[0]!.id;
  }
  return (
    await asAdmin<{ id: string }>(db, org, "insert into crm.campaigns (name, type, template_id, segment_id) values ($1, $2, $3, $4) returning id", [
      name,
      type,
      templateId,
      segmentId,
    ])
  )[0]!.id;
}

export async function execute(db: TestDb, org: TestOrg, campaignId: string, scheduledFor: string | null = null) {
  return (await asAdmin<{ status: string }>(db, org, "select (crm.execute_campaign($1, $2)).*", [campaignId, scheduledFor]))[0]!;
}

export async function outbox(db: TestDb): Promise<{ to_address: string; subject: string; body: string; html: string | null; headers: Record<string, string> | null; idempotency_key: string | null }[]> {
  return (await db.owner.query("select to_address, subject, body, html, headers, idempotency_key from crm_private.email_outbox where template = 'message' order by id")).rows;
}

export async function messages(db: TestDb, campaignId?: string) {
  return (
    await db.owner.query<{ id: string; recipient: string; status: string; attempts: number; error_message: string | null; body: string; subject: string; provider_message_id: string | null; next_attempt_at: Date | null }>(
      "select * from crm.messages where $1::uuid is null or campaign_id = $1 order by recipient",
      [campaignId ?? null],
    )
  ).rows;
}

export const EVERYONE = { all: [{ field: "status", op: "in", value: ["lead", "prospect", "customer", "churned"] }] };
