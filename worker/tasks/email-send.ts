// email:send — renders an account email (confirmation, password reset, invitation) and hands it to the
// configured provider (EMAIL_PROVIDER: the local outbox or Amazon SES). The payload comes from crm_private.queue_email in the transaction that made
// the token, so an email exists only for a committed token.
import type { Task } from "graphile-worker";
import { assertPayload, type TaskContext } from "../types.ts";
import { emailProviderFor, renderAccountEmail } from "../providers/email.ts";

export interface EmailSendPayload {
  template: string;
  to: string;
  data: Record<string, unknown>;
}

export function makeEmailSend(ctx: TaskContext): Task {
  const provider = emailProviderFor(ctx.config, ctx.ownerPool);
  return async (payload) => {
    const p = assertPayload<EmailSendPayload>(
      payload,
      (v) => typeof v.template === "string" && typeof v.to === "string" && !!v.data && typeof v.data === "object",
    );
    const { subject, text } = renderAccountEmail(p.template, p.data, ctx.config.publicAppUrl);
    const { providerId } = await provider.send({ to: p.to, subject, text, template: p.template });
    ctx.logger.info({ task: "email:send", template: p.template, provider: provider.name, providerId }, "email sent");
  };
}
