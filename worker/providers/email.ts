// E-mail delivery behind one small interface, selected by EMAIL_PROVIDER: the local provider (the
// default) records every message in crm_private.email_outbox, a development mailbox; the SES provider
// sends through Amazon SES (@aws-sdk/client-ses, SendRawEmail so List-Unsubscribe and our message id
// travel as headers). Account e-mails, notifications and campaign messages all use the configured one.
import crypto from "node:crypto";
import type { Pool } from "pg";
import { SESClient, SendRawEmailCommand } from "@aws-sdk/client-ses";
import type { Config } from "../../src/config.ts";

export interface EmailMessage {
  to: string;
  subject: string;
  /** Plain-text body (always). */
  text: string;
  /** HTML body (campaign and automation messages). */
  html?: string;
  /** What kind of e-mail (account template name, or "message"). */
  template: string;
  /** Extra headers (List-Unsubscribe …). */
  headers?: Record<string, string>;
  /** The queue's message id: the local provider refuses to record it twice, SES carries it as a tag. */
  idempotencyKey?: string;
}

export interface SendResult {
  providerId: string;
}

/** A provider's refusal. permanent: retrying cannot help (rejected, invalid address …). */
export class ProviderError extends Error {
  override name = "ProviderError";
  readonly permanent: boolean;
  readonly code: string;
  constructor(message: string, opts: { permanent: boolean; code: string }) {
    super(message);
    this.permanent = opts.permanent;
    this.code = opts.code;
  }
}

export interface EmailProvider {
  readonly name: string;
  send(message: EmailMessage): Promise<SendResult>;
  /**
   * The provider id of a message it already accepted under this idempotency key, or null if it has
   * none. Absent when the provider cannot answer (SES): see docs/campaigns.md#delivery-guarantees.
   */
  lookup?(idempotencyKey: string): Promise<string | null>;
}

export class LocalEmailProvider implements EmailProvider {
  readonly name = "local";
  private readonly pool: Pool;
  constructor(pool: Pool) {
    this.pool = pool;
  }
  async send(m: EmailMessage): Promise<SendResult> {
    // A repeated hand-over under the same key records nothing new and answers with the first id.
    const { rows } = await this.pool.query<{ id: string }>(
      `with ins as (
         insert into crm_private.email_outbox (to_address, template, subject, body, html, headers, idempotency_key)
         values ($1, $2, $3, $4, $5, $6, $7)
         on conflict (idempotency_key) where idempotency_key is not null do nothing
         returning id)
       select id::text from ins
       union all
       select id::text from crm_private.email_outbox where idempotency_key = $7 and not exists (select 1 from ins)`,
      [m.to, m.template, m.subject, m.text, m.html ?? null, m.headers ? JSON.stringify(m.headers) : null, m.idempotencyKey ?? null],
    );
    return { providerId: `local-${rows[0]!.id}` };
  }
  async lookup(key: string): Promise<string | null> {
    const { rows } = await this.pool.query<{ id: string }>("select id::text from crm_private.email_outbox where idempotency_key = $1", [key]);
    return rows[0] ? `local-${rows[0].id}` : null;
  }
}

// SES error codes worth another try later; everything else SES answers with is permanent.
const SES_TRANSIENT = new Set(["Throttling", "ThrottlingException", "ServiceUnavailable", "InternalFailure", "RequestTimeout", "TooManyRequestsException"]);

export class SesEmailProvider implements EmailProvider {
  readonly name = "ses";
  private readonly client: SESClient;
  private readonly cfg: Config["messaging"]["ses"];
  private readonly from: string;
  constructor(cfg: Config["messaging"]["ses"], from: string) {
    this.cfg = cfg;
    this.from = from;
    this.client = new SESClient({
      region: cfg.region,
      ...(cfg.endpoint ? { endpoint: cfg.endpoint } : {}),
      ...(cfg.accessKeyId && cfg.secretAccessKey
        ? { credentials: { accessKeyId: cfg.accessKeyId, secretAccessKey: cfg.secretAccessKey, ...(cfg.sessionToken ? { sessionToken: cfg.sessionToken } : {}) } }
        : {}),
      // The message queue retries with its own backoff (and records each attempt).
      maxAttempts: 1,
    });
  }

  async send(m: EmailMessage): Promise<SendResult> {
    const raw = buildMime(this.from, m);
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), this.cfg.timeoutMs);
    try {
      const out = await this.client.send(
        new SendRawEmailCommand({
          RawMessage: { Data: Buffer.from(raw, "utf8") },
          ...(this.cfg.configurationSet ? { ConfigurationSetName: this.cfg.configurationSet } : {}),
          Tags: [
            { Name: "cairn-template", Value: m.template.replace(/[^A-Za-z0-9_-]/g, "_").slice(0, 256) },
            ...(m.idempotencyKey ? [{ Name: "cairn-message-id", Value: m.idempotencyKey }] : []),
          ],
        }),
        { abortSignal: abort.signal },
      );
      if (!out.MessageId) throw new ProviderError("SES answered without a MessageId", { permanent: false, code: "NoMessageId" });
      return { providerId: out.MessageId };
    } catch (err) {
      if (err instanceof ProviderError) throw err;
      const e = err as { name?: string; message?: string; $metadata?: { httpStatusCode?: number } };
      const status = e.$metadata?.httpStatusCode;
      const code = e.name ?? "Error";
      const transient = SES_TRANSIENT.has(code) || status === undefined || status >= 500 || status === 429 || code === "AbortError" || code === "TimeoutError";
      throw new ProviderError(`SES ${code}: ${e.message ?? "request failed"}`, { permanent: !transient, code });
    } finally {
      clearTimeout(timer);
    }
  }
}

function encodeHeader(value: string): string {
  // RFC 2047 for anything outside printable ASCII.
  return /^[\x20-\x7e]*$/.test(value) ? value : `=?UTF-8?B?${Buffer.from(value, "utf8").toString("base64")}?=`;
}

function wrap76(b64: string): string {
  return b64.replace(/.{1,76}/g, "$&\r\n");
}

/** A MIME message: text, or multipart/alternative text + HTML, with our headers. */
export function buildMime(from: string, m: EmailMessage): string {
  const headers: string[] = [
    `From: ${from}`,
    `To: ${m.to}`,
    `Subject: ${encodeHeader(m.subject)}`,
    "MIME-Version: 1.0",
    ...(m.idempotencyKey ? [`X-Cairn-Message-Id: ${m.idempotencyKey}`] : []),
    ...Object.entries(m.headers ?? {}).map(([k, v]) => `${k}: ${v.replace(/[\r\n]+/g, " ")}`),
  ];
  const textPart = wrap76(Buffer.from(m.text, "utf8").toString("base64"));
  if (!m.html) {
    return [...headers, "Content-Type: text/plain; charset=UTF-8", "Content-Transfer-Encoding: base64", "", textPart].join("\r\n");
  }
  const boundary = `cairn-${crypto.randomBytes(12).toString("hex")}`;
  return [
    ...headers,
    `Content-Type: multipart/alternative; boundary="${boundary}"`,
    "",
    `--${boundary}`,
    "Content-Type: text/plain; charset=UTF-8",
    "Content-Transfer-Encoding: base64",
    "",
    textPart,
    `--${boundary}`,
    "Content-Type: text/html; charset=UTF-8",
    "Content-Transfer-Encoding: base64",
    "",
    wrap76(Buffer.from(m.html, "utf8").toString("base64")),
    `--${boundary}--`,
    "",
  ].join("\r\n");
}

/** The e-mail provider the configuration names (EMAIL_PROVIDER). */
export function emailProviderFor(config: Config, pool: Pool): EmailProvider {
  return config.messaging.emailProvider === "ses" ? new SesEmailProvider(config.messaging.ses, config.messaging.emailFrom) : new LocalEmailProvider(pool);
}

/** Renders the account emails; links point at the front end (PUBLIC_APP_URL). */
export function renderAccountEmail(template: string, data: Record<string, unknown>, appUrl: string): { subject: string; text: string } {
  const token = encodeURIComponent(String(data.token ?? ""));
  const name = String(data.full_name || data.username || "there");
  switch (template) {
    case "confirm_email":
      return {
        subject: "Confirm your email address",
        text: `Hello ${name},\n\nConfirm your email address: ${appUrl}/confirm-email?token=${token}\n\nThe link expires in 48 hours.`,
      };
    case "password_reset":
      return {
        subject: "Reset your password",
        text: `Hello ${name},\n\nSomeone asked to reset your password. If it was you: ${appUrl}/reset-password?token=${token}\n\nThe link expires in one hour. If it was not you, ignore this email.`,
      };
    case "invitation":
      return {
        subject: `You are invited to ${String(data.organization ?? "an organization")}`,
        text: `${String(data.invited_by || "A colleague")} invited you to ${String(data.organization ?? "an organization")}.\n\nAccept: ${appUrl}/accept-invitation?token=${token}\n\nThe invitation expires in 7 days.`,
      };
    default:
      throw new Error(`unknown email template "${template}"`);
  }
}
