// Notification tasks:
// - notifications:email   one notification e-mailed at once (channel EMAIL), or one member's digest;
// - notifications:scan    follow-ups reached, tasks due tomorrow and overdue, per organization;
// - notifications:digest  the daily digest, per organization.
// The scans and the digest are one set-based SQL statement per organization (crm_private.notify_*,
// crm_private.send_digests), idempotent, so they move onto the tenant job framework unchanged.
import type { Task } from "graphile-worker";
import { assertPayload, type TaskContext } from "../types.ts";
import { emailProviderFor } from "../providers/email.ts";

interface DigestItem {
  kind: string;
  title: string;
  body: string;
  createdAt: string;
}

interface EmailPayload {
  notificationId?: string;
  digest?: boolean;
  to?: string;
  username?: string;
  fullName?: string;
  organization?: string;
  items?: DigestItem[];
}

export function renderDigest(p: EmailPayload, appUrl: string): { subject: string; text: string } {
  const items = p.items ?? [];
  const lines = items.map((i) => `- ${i.title}${i.body ? `\n  ${i.body.replace(/\n/g, " ")}` : ""}`);
  return {
    subject: `${items.length} new notification${items.length === 1 ? "" : "s"} in ${p.organization ?? "Cairn"}`,
    text: `Hello ${p.fullName || p.username || "there"},\n\nYour notifications since the last digest:\n\n${lines.join("\n")}\n\nOpen Cairn: ${appUrl}/notifications\n\nChange how you are notified: ${appUrl}/settings/notifications`,
  };
}

export function makeNotificationsEmail(ctx: TaskContext): Task {
  const provider = emailProviderFor(ctx.config, ctx.ownerPool);
  return async (payload) => {
    const p = assertPayload<EmailPayload>(payload, (v) => typeof v.notificationId === "string" || (v.digest === true && typeof v.to === "string"));
    if (p.digest) {
      const { subject, text } = renderDigest(p, ctx.config.publicAppUrl);
      const { providerId } = await provider.send({ to: p.to!, subject, text, template: "notification_digest" });
      ctx.logger.info({ task: "notifications:email", template: "notification_digest", items: p.items?.length, providerId }, "digest sent");
      return;
    }
    const { rows } = await ctx.ownerPool.query<{ email: string; name: string; title: string; body: string; organization: string }>(
      `select u.email::text as email, coalesce(nullif(u.full_name, ''), u.username::text) as name, n.title, n.body, o.name as organization
         from crm.notifications n
         join crm.users u on u.id = n.recipient_id and u.is_active and u.deleted_at is null and u.email is not null
         join crm.organizations o on o.id = n.organization_id
        where n.id = $1 and n.emailed_at is null`,
      [p.notificationId],
    );
    const n = rows[0];
    if (!n) return; // already sent, deleted, or nobody to send it to
    const { providerId } = await provider.send({
      to: n.email,
      subject: n.title,
      text: `Hello ${n.name},\n\n${n.title}${n.body ? `\n\n${n.body}` : ""}\n\n${n.organization} — open Cairn: ${ctx.config.publicAppUrl}/notifications\n\nChange how you are notified: ${ctx.config.publicAppUrl}/settings/notifications`,
      template: "notification",
    });
    await ctx.ownerPool.query("update crm.notifications set emailed_at = now() where id = $1", [p.notificationId]);
    ctx.logger.info({ task: "notifications:email", template: "notification", providerId }, "notification e-mailed");
  };
}

/** Runs `fn` for each organization (or the one named in the payload); one failure does not stop the rest. */
async function perOrganization(ctx: TaskContext, payload: unknown, task: string, sql: string): Promise<void> {
  const only = (payload as { organizationId?: unknown } | null)?.organizationId;
  const { rows: orgs } = await ctx.ownerPool.query<{ id: string }>(
    "select id from crm.organizations where $1::uuid is null or id = $1::uuid order by id",
    [typeof only === "string" ? only : null],
  );
  const failed: string[] = [];
  let total = 0;
  for (const org of orgs) {
    try {
      const { rows } = await ctx.ownerPool.query<{ n: number }>(sql, [org.id]);
      total += Number(rows[0]?.n ?? 0);
    } catch (err) {
      failed.push(org.id);
      ctx.logger.error({ err, task, organizationId: org.id }, "organization step failed");
    }
  }
  ctx.logger.info({ task, organizations: orgs.length, total, failed: failed.length }, "done");
  if (failed.length) throw new Error(`${task} failed for ${failed.length} organization(s)`);
}

export function makeNotificationsScan(ctx: TaskContext): Task {
  return (payload) =>
    perOrganization(ctx, payload, "notifications:scan", "select crm_private.notify_follow_ups($1) + crm_private.notify_due_tasks($1) as n");
}

export function makeNotificationsDigest(ctx: TaskContext): Task {
  return (payload) => perOrganization(ctx, payload, "notifications:digest", "select crm_private.send_digests($1) as n");
}

export function makeIntegrationsPrune(ctx: TaskContext): Task {
  return async (payload) => {
    const days = Number((payload as { retentionDays?: unknown } | null)?.retentionDays ?? 30);
    const { rows } = await ctx.ownerPool.query<{ r: unknown }>("select crm_private.prune_integrations(make_interval(days => $1)) as r", [
      Number.isInteger(days) && days > 0 ? days : 30,
    ]);
    ctx.logger.info({ task: "integrations:prune", removed: rows[0]?.r }, "integrations pruned");
  };
}
