// messages:send — drains the message queue (crm.messages). Each round:
//   1. reconciles messages whose lease ran out while "sending" (a worker stopped between handing a
//      message to the provider and recording it): a provider that can look a message up by its
//      idempotency key (the local outboxes) says whether it accepted it — yes: recorded as sent,
//      never sent again; no: released to be sent. A provider that cannot (SES, Twilio) keeps it out
//      of the queue until its notification arrives (docs/campaigns.md#delivery-guarantees);
//   2. claims a batch (crm_private.claim_messages: FOR UPDATE SKIP LOCKED, active campaigns only,
//      outside quiet hours, within the organization's send rate) under a lease;
//   3. hands each message to its channel's provider with the message id as idempotency key, a few
//      at a time;
//   4. records every outcome of the batch in one statement: sent, retry (transient: exponential
//      backoff, until MESSAGES_MAX_ATTEMPTS) or failed (permanent, with the provider's error text).
// Enqueued by executeCampaign, automations and enqueue_message; also every minute by the crontab.
import type { Task } from "graphile-worker";
import type { TaskContext } from "../types.ts";
import { emailProviderFor, ProviderError, type EmailProvider } from "../providers/email.ts";
import { smsProviderFor, type SmsProvider } from "../providers/sms.ts";

export interface ClaimedMessage {
  id: string;
  organization_id: string;
  channel: "email" | "sms";
  kind: string;
  recipient: string;
  subject: string | null;
  body: string;
  attempts: number;
  unsubscribe_token: string;
  open_token: string;
  click_token: string;
  public_url: string;
}

interface Outcome {
  id: string;
  outcome: "sent" | "retry" | "failed" | "released";
  provider?: string;
  providerMessageId?: string;
  error?: string;
  retryInMs?: number;
}

export interface Providers {
  email: EmailProvider;
  sms: SmsProvider;
}

export interface SendHooks {
  /** Called after the provider accepted a message, before it is recorded (tests stop the worker here). */
  afterProviderCall?: (messageId: string) => void | Promise<void>;
}

export interface SendSummary {
  sent: number;
  retried: number;
  failed: number;
  reconciled: number;
  released: number;
}

const unescapeHtml = (s: string) => s.replace(/&quot;/g, '"').replace(/&#39;/g, "'").replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&amp;/g, "&");

/** The e-mail as it leaves: links through the click redirect, an open pixel, a text version. */
export function prepareEmail(m: ClaimedMessage): { html: string; text: string; headers: Record<string, string> } {
  const base = m.public_url;
  const unsubscribe = `${base}/unsubscribe/${m.unsubscribe_token}`;
  let html = m.body.replace(/href="(https?:\/\/[^"]+)"/g, (whole, url: string) => {
    const target = unescapeHtml(url);
    if (target.startsWith(`${base}/unsubscribe/`)) return whole;
    return `href="${base}/t/c/${m.click_token}?u=${encodeURIComponent(target)}"`;
  });
  html += `\n<img src="${base}/t/o/${m.open_token}.gif" width="1" height="1" alt="" style="display:none">`;
  const text = unescapeHtml(
    m.body
      .replace(/<br\s*\/?>/gi, "\n")
      .replace(/<\/p>/gi, "\n\n")
      .replace(/<a\s[^>]*href="([^"]+)"[^>]*>([^<]*)<\/a>/gi, "$2 ($1)")
      .replace(/<[^>]+>/g, ""),
  ).trim();
  return {
    html,
    text,
    headers: { "List-Unsubscribe": `<${unsubscribe}>`, "List-Unsubscribe-Post": "List-Unsubscribe=One-Click" },
  };
}

export function makeProviders(ctx: TaskContext): Providers {
  return { email: emailProviderFor(ctx.config, ctx.ownerPool), sms: smsProviderFor(ctx.config, ctx.ownerPool) };
}

/** Runs `fn` over `items`, at most `limit` at a time. */
async function pool<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const item = items[next++]!;
      await fn(item);
    }
  });
  await Promise.all(workers);
}

export function backoffMs(base: number, attempts: number): number {
  const exp = base * 2 ** Math.max(0, attempts - 1);
  return Math.min(Math.round(exp * (0.8 + Math.random() * 0.4)), 3_600_000);
}

/** One send run: reconcile, then claim and send batches until none is due or `maxBatches` ran. */
export async function sendMessages(ctx: TaskContext, providers: Providers, opts: { maxBatches?: number; hooks?: SendHooks } = {}): Promise<SendSummary> {
  const cfg = ctx.config.messaging;
  const summary: SendSummary = { sent: 0, retried: 0, failed: 0, reconciled: 0, released: 0 };
  const record = async (outcomes: Outcome[]) => {
    if (outcomes.length) await ctx.ownerPool.query("select crm_private.record_message_outcomes($1::jsonb, $2)", [JSON.stringify(outcomes), cfg.maxAttempts]);
  };

  // 1. Reconciliation of expired leases.
  {
    const client = await ctx.ownerPool.connect();
    try {
      await client.query("begin");
      const { rows } = await client.query<{ id: string; channel: "email" | "sms" }>("select id::text, channel from crm_private.expired_leases($1)", [cfg.batchSize]);
      const outcomes: Outcome[] = [];
      const unknown: string[] = [];
      for (const m of rows) {
        const provider = providers[m.channel];
        if (!provider.lookup) {
          unknown.push(m.id);
          continue;
        }
        const providerId = await provider.lookup(m.id);
        if (providerId) outcomes.push({ id: m.id, outcome: "sent", provider: provider.name, providerMessageId: providerId });
        else outcomes.push({ id: m.id, outcome: "released" });
      }
      // The provider cannot tell: the message is never handed over again; its notification settles it.
      if (unknown.length) {
        await client.query(
          "update crm.messages set lease_expires_at = null, error_message = 'Unconfirmed: the worker stopped after handing the message to the provider; waiting for its notification.' where id = any ($1::uuid[])",
          [unknown],
        );
      }
      await client.query("commit");
      await record(outcomes);
      summary.reconciled += outcomes.filter((o) => o.outcome === "sent").length;
      summary.released += outcomes.filter((o) => o.outcome === "released").length;
    } catch (err) {
      await client.query("rollback").catch(() => undefined);
      throw err;
    } finally {
      client.release();
    }
  }

  // 2–4. Batches.
  const maxBatches = opts.maxBatches ?? 200;
  for (let b = 0; b < maxBatches; b++) {
    const { rows } = await ctx.ownerPool.query<ClaimedMessage>("select * from crm_private.claim_messages($1, $2)", [cfg.batchSize, cfg.leaseSeconds]);
    if (rows.length === 0) break;
    const outcomes: Outcome[] = [];
    await pool(rows, cfg.concurrency, async (m) => {
      const provider = m.channel === "email" ? providers.email : providers.sms;
      try {
        let providerId: string;
        if (m.channel === "email") {
          const mail = prepareEmail(m);
          ({ providerId } = await providers.email.send({
            to: m.recipient,
            subject: m.subject ?? "",
            text: mail.text,
            html: mail.html,
            headers: mail.headers,
            template: "message",
            idempotencyKey: m.id,
          }));
        } else {
          ({ providerId } = await providers.sms.send({ to: m.recipient, body: m.body, idempotencyKey: m.id }));
        }
        await opts.hooks?.afterProviderCall?.(m.id);
        outcomes.push({ id: m.id, outcome: "sent", provider: provider.name, providerMessageId: providerId });
      } catch (err) {
        if (err instanceof ProviderError) {
          outcomes.push({
            id: m.id,
            outcome: err.permanent ? "failed" : "retry",
            provider: provider.name,
            error: err.message,
            retryInMs: backoffMs(cfg.retryBaseMs, m.attempts),
          });
        } else if ((err as Error).name === "WorkerStopped") {
          throw err;
        } else {
          outcomes.push({ id: m.id, outcome: "retry", provider: provider.name, error: (err as Error).message, retryInMs: backoffMs(cfg.retryBaseMs, m.attempts) });
        }
      }
    });
    await record(outcomes);
    for (const o of outcomes) {
      if (o.outcome === "sent") summary.sent++;
      else if (o.outcome === "failed" || (o.outcome === "retry" && rows.find((r) => r.id === o.id)!.attempts >= cfg.maxAttempts)) summary.failed++;
      else summary.retried++;
    }
  }
  return summary;
}

export function makeMessagesSend(ctx: TaskContext): Task {
  const providers = makeProviders(ctx);
  return async (_payload, helpers) => {
    const summary = await sendMessages(ctx, providers);
    if (summary.sent || summary.failed || summary.retried || summary.reconciled || summary.released) {
      ctx.logger.info({ task: "messages:send", ...summary }, "messages sent");
    }
    // More due right now (the run stopped at its batch limit, or released messages): continue in a new job.
    const { rows } = await ctx.ownerPool.query<{ due: boolean }>(
      "select exists (select 1 from crm.messages where status = 'pending' and scheduled_for <= now() and (next_attempt_at is null or next_attempt_at <= now())) as due",
    );
    if (rows[0]?.due && (summary.sent > 0 || summary.released > 0)) {
      await helpers.addJob("messages:send", {}, { jobKey: "messages:send", runAt: new Date(Date.now() + 1000) });
    }
  };
}
