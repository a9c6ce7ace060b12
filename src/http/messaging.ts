// Public messaging endpoints (no login; every link is signed, docs/campaigns.md):
//   GET  /unsubscribe/:token              a small page asking to confirm (link scanners fetch GET links)
//   POST /unsubscribe/:token              records the opt-out (the page's button, and mail clients'
//                                         one-click List-Unsubscribe-Post), answers a confirmation page
//   GET  /t/o/:token.gif                  open pixel: records the open, answers a 1×1 GIF
//   GET  /t/c/:token?u=<url>              click: records it and redirects to <url>, only a link of that message
//   POST /messaging/ses-notifications     Amazon SES notifications through SNS (bounce, complaint, delivery),
//                                         authenticated by ?secret=SES_NOTIFICATION_SECRET
import crypto from "node:crypto";
import express, { type Express, type Request, type Response } from "express";
import type { Pool } from "pg";
import type { Config } from "../config.ts";
import type { Logger } from "../logger.ts";

export interface MessagingDeps {
  config: Config;
  logger: Logger;
  ownerPool?: Pool;
}

const GIF = Buffer.from("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7", "base64");

const escapeHtml = (s: string) => s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!);

function page(title: string, body: string): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>${escapeHtml(title)}</title>
<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#222}button{font-size:1rem;padding:.5rem 1rem}</style></head>
<body><h1>${escapeHtml(title)}</h1>${body}</body></html>`;
}

const CHANNEL_WORDS: Record<string, string> = { email: "e-mails", sms: "text messages" };

export interface SesNotification {
  kind: "delivery" | "bounce" | "complaint" | "send" | "other";
  providerMessageId: string | undefined;
  messageId: string | undefined;
  permanent: boolean;
  addresses: string[];
  detail: string;
}

/** Reads an SES notification (SES notifications or event publishing) out of an SNS message. */
export function parseSesNotification(message: unknown): SesNotification {
  const m = (message ?? {}) as Record<string, any>;
  const type = String(m.notificationType ?? m.eventType ?? "").toLowerCase();
  const mail = (m.mail ?? {}) as Record<string, any>;
  const tag = mail.tags?.["cairn-message-id"]?.[0] as string | undefined;
  const header = (mail.headers as { name: string; value: string }[] | undefined)?.find((h) => h.name?.toLowerCase() === "x-cairn-message-id")?.value;
  const base = { providerMessageId: mail.messageId as string | undefined, messageId: tag ?? header };
  if (type === "bounce") {
    const b = m.bounce ?? {};
    const addresses = ((b.bouncedRecipients ?? []) as { emailAddress?: string; diagnosticCode?: string }[]).map((r) => r.emailAddress).filter(Boolean) as string[];
    const diag = ((b.bouncedRecipients ?? []) as { diagnosticCode?: string }[]).map((r) => r.diagnosticCode).filter(Boolean).join("; ");
    return { kind: "bounce", ...base, permanent: b.bounceType === "Permanent", addresses, detail: `${b.bounceType ?? "Bounce"}/${b.bounceSubType ?? ""} ${diag}`.trim() };
  }
  if (type === "complaint") {
    const c = m.complaint ?? {};
    const addresses = ((c.complainedRecipients ?? []) as { emailAddress?: string }[]).map((r) => r.emailAddress).filter(Boolean) as string[];
    return { kind: "complaint", ...base, permanent: true, addresses, detail: `Complaint ${c.complaintFeedbackType ?? ""}`.trim() };
  }
  if (type === "delivery") return { kind: "delivery", ...base, permanent: false, addresses: [], detail: "Delivered" };
  if (type === "send") return { kind: "send", ...base, permanent: false, addresses: [], detail: "Accepted" };
  return { kind: "other", ...base, permanent: false, addresses: [], detail: type };
}

export function mountMessagingRoutes(app: Express, deps: MessagingDeps): void {
  const { config, logger } = deps;
  const pool = deps.ownerPool;
  if (!pool) {
    logger.warn("messaging endpoints off: no owner connection");
    return;
  }
  // The links the database renders start with this URL.
  pool.query("select crm_private.set_messaging_public_url($1)", [config.messaging.publicApiUrl]).catch((err) => {
    logger.warn({ err }, "could not record PUBLIC_API_URL for message links");
  });

  const form = express.urlencoded({ extended: false, limit: "4kb" });

  app.get("/unsubscribe/:token", async (req: Request, res: Response) => {
    const { rows } = await pool.query<{ organization_name: string; channel: string; already: boolean }>(
      "select * from crm_private.unsubscribe($1, false)",
      [String(req.params.token)],
    );
    res.setHeader("Cache-Control", "no-store");
    const r = rows[0];
    if (!r) {
      res.status(404).type("html").send(page("Link not valid", "<p>This unsubscribe link is not valid.</p>"));
      return;
    }
    const what = CHANNEL_WORDS[r.channel] ?? "messages";
    if (r.already) {
      res.type("html").send(page("You are unsubscribed", `<p>You no longer receive marketing ${what} from ${escapeHtml(r.organization_name)}.</p>`));
      return;
    }
    res.type("html").send(
      page(
        "Unsubscribe",
        `<p>Stop receiving marketing ${what} from ${escapeHtml(r.organization_name)}?</p>
<form method="post" action="/unsubscribe/${encodeURIComponent(String(req.params.token))}"><button type="submit">Unsubscribe</button></form>`,
      ),
    );
  });

  app.post("/unsubscribe/:token", form, async (req: Request, res: Response) => {
    const { rows } = await pool.query<{ organization_name: string; channel: string }>("select * from crm_private.unsubscribe($1, true)", [
      String(req.params.token),
    ]);
    res.setHeader("Cache-Control", "no-store");
    const r = rows[0];
    if (!r) {
      res.status(404).type("html").send(page("Link not valid", "<p>This unsubscribe link is not valid.</p>"));
      return;
    }
    logger.info({ channel: r.channel }, "recipient unsubscribed");
    res
      .type("html")
      .send(page("You are unsubscribed", `<p>You will no longer receive marketing ${CHANNEL_WORDS[r.channel] ?? "messages"} from ${escapeHtml(r.organization_name)}.</p>`));
  });

  app.get("/t/o/:token.gif", async (req: Request, res: Response) => {
    await pool.query("select crm_private.record_open($1)", [String(req.params.token)]).catch((err) => logger.warn({ err }, "open not recorded"));
    res.setHeader("Cache-Control", "no-store, max-age=0");
    res.type("gif").send(GIF);
  });

  app.get("/t/c/:token", async (req: Request, res: Response) => {
    const url = typeof req.query.u === "string" ? req.query.u : "";
    const { rows } = await pool.query<{ ok: boolean }>("select crm_private.record_click($1, $2) as ok", [String(req.params.token), url]);
    if (!rows[0]?.ok) {
      res.status(404).type("html").send(page("Link not valid", "<p>This link is not valid.</p>"));
      return;
    }
    res.setHeader("Cache-Control", "no-store");
    res.redirect(302, url);
  });

  app.post("/messaging/ses-notifications", express.text({ type: "*/*", limit: "256kb" }), async (req: Request, res: Response) => {
    const secret = config.messaging.sesNotificationSecret;
    const given = typeof req.query.secret === "string" ? req.query.secret : "";
    const a = Buffer.from(given);
    const b = Buffer.from(secret ?? "");
    if (!secret || a.length !== b.length || !crypto.timingSafeEqual(a, b)) {
      res.status(403).json({ errors: [{ message: "Forbidden", extensions: { code: "FORBIDDEN" } }] });
      return;
    }
    let envelope: { Type?: string; Message?: string; SubscribeURL?: string; TopicArn?: string };
    try {
      envelope = JSON.parse(String(req.body ?? ""));
    } catch {
      res.status(400).json({ errors: [{ message: "Not an SNS message", extensions: { code: "VALIDATION" } }] });
      return;
    }
    if (envelope.Type === "SubscriptionConfirmation") {
      // Confirm only with Amazon SNS itself.
      const url = envelope.SubscribeURL ?? "";
      if (/^https:\/\/sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?\//.test(url)) {
        await fetch(url, { signal: AbortSignal.timeout(10_000) }).catch((err) => logger.warn({ err }, "SNS subscription not confirmed"));
        logger.info({ topic: envelope.TopicArn }, "SNS subscription confirmed");
      }
      res.status(200).json({ ok: true });
      return;
    }
    if (envelope.Type !== "Notification" || typeof envelope.Message !== "string") {
      res.status(400).json({ errors: [{ message: "Not an SNS notification", extensions: { code: "VALIDATION" } }] });
      return;
    }
    let n: SesNotification;
    try {
      n = parseSesNotification(JSON.parse(envelope.Message));
    } catch {
      res.status(400).json({ errors: [{ message: "Not an SES notification", extensions: { code: "VALIDATION" } }] });
      return;
    }
    let touched = 0;
    if (n.kind !== "other" && (n.providerMessageId || n.messageId)) {
      const messageId = n.messageId && /^[0-9a-f-]{36}$/i.test(n.messageId) ? n.messageId : null;
      const { rows } = await pool.query<{ n: number }>("select crm_private.record_provider_event($1, $2, $3, $4, $5, $6::uuid) as n", [
        n.providerMessageId ?? null,
        n.kind,
        n.permanent,
        n.addresses.length ? n.addresses : null,
        n.detail,
        messageId,
      ]);
      touched = rows[0]?.n ?? 0;
    }
    logger.info({ kind: n.kind, touched }, "SES notification");
    res.status(200).json({ ok: true, messages: touched });
  });
}
