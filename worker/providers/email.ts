// Email delivery behind a small interface. The local provider (the default) records every message in
// crm_private.email_outbox, a development mailbox; a cloud provider plugs in behind the same interface.
import type { Pool } from "pg";

export interface EmailMessage {
  to: string;
  subject: string;
  text: string;
  template: string;
}

export interface EmailProvider {
  readonly name: string;
  send(message: EmailMessage): Promise<{ providerId: string }>;
}

export class LocalEmailProvider implements EmailProvider {
  readonly name = "local";
  private readonly pool: Pool;
  constructor(pool: Pool) {
    this.pool = pool;
  }
  async send(m: EmailMessage): Promise<{ providerId: string }> {
    const { rows } = await this.pool.query<{ id: string }>(
      "insert into crm_private.email_outbox (to_address, template, subject, body) values ($1, $2, $3, $4) returning id::text",
      [m.to, m.template, m.subject, m.text],
    );
    return { providerId: `local-${rows[0]!.id}` };
  }
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
