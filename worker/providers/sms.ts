// SMS delivery behind one small interface (seed: "abstract interface for easy provider integration"),
// selected by SMS_PROVIDER: the local provider records messages in crm_private.sms_outbox; the Twilio
// provider posts to Twilio's Messages REST API (or any service speaking its shape, TWILIO_BASE_URL).
import type { Pool } from "pg";
import type { Config } from "../../src/config.ts";
import { ProviderError, type SendResult } from "./email.ts";

export interface SmsMessage {
  to: string;
  body: string;
  /** The queue's message id. */
  idempotencyKey?: string;
}

export interface SmsProvider {
  readonly name: string;
  send(message: SmsMessage): Promise<SendResult>;
  /** As EmailProvider.lookup: absent when the provider cannot tell. */
  lookup?(idempotencyKey: string): Promise<string | null>;
}

export class LocalSmsProvider implements SmsProvider {
  readonly name = "local";
  private readonly pool: Pool;
  constructor(pool: Pool) {
    this.pool = pool;
  }
  async send(m: SmsMessage): Promise<SendResult> {
    const { rows } = await this.pool.query<{ id: string }>(
      `with ins as (
         insert into crm_private.sms_outbox (to_number, body, idempotency_key) values ($1, $2, $3)
         on conflict (idempotency_key) where idempotency_key is not null do nothing
         returning id)
       select id::text from ins
       union all
       select id::text from crm_private.sms_outbox where idempotency_key = $3 and not exists (select 1 from ins)`,
      [m.to, m.body, m.idempotencyKey ?? null],
    );
    return { providerId: `local-sms-${rows[0]!.id}` };
  }
  async lookup(key: string): Promise<string | null> {
    const { rows } = await this.pool.query<{ id: string }>("select id::text from crm_private.sms_outbox where idempotency_key = $1", [key]);
    return rows[0] ? `local-sms-${rows[0].id}` : null;
  }
}

export class TwilioSmsProvider implements SmsProvider {
  readonly name = "twilio";
  private readonly cfg: Config["messaging"]["twilio"];
  constructor(cfg: Config["messaging"]["twilio"]) {
    this.cfg = cfg;
  }
  async send(m: SmsMessage): Promise<SendResult> {
    const url = `${this.cfg.baseUrl}/2010-04-01/Accounts/${encodeURIComponent(this.cfg.accountSid!)}/Messages.json`;
    let res: Response;
    try {
      res = await fetch(url, {
        method: "POST",
        headers: {
          authorization: `Basic ${Buffer.from(`${this.cfg.accountSid}:${this.cfg.authToken}`).toString("base64")}`,
          "content-type": "application/x-www-form-urlencoded",
        },
        body: new URLSearchParams({ To: m.to, From: this.cfg.from!, Body: m.body }).toString(),
        signal: AbortSignal.timeout(this.cfg.timeoutMs),
      });
    } catch (err) {
      throw new ProviderError(`SMS provider unreachable: ${(err as Error).message}`, { permanent: false, code: "Network" });
    }
    const text = await res.text();
    let json: { sid?: string; message?: string; code?: number } = {};
    try {
      json = JSON.parse(text);
    } catch {
      // not JSON: reported below
    }
    if (res.ok && json.sid) return { providerId: json.sid };
    const transient = res.status === 429 || res.status >= 500 || res.ok;
    throw new ProviderError(`SMS provider ${res.status}${json.code ? ` (${json.code})` : ""}: ${json.message ?? text.slice(0, 200)}`, {
      permanent: !transient,
      code: String(json.code ?? res.status),
    });
  }
}

export function smsProviderFor(config: Config, pool: Pool): SmsProvider {
  return config.messaging.smsProvider === "twilio" ? new TwilioSmsProvider(config.messaging.twilio) : new LocalSmsProvider(pool);
}
