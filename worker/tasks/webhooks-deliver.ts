// webhooks:deliver — sends one delivery (an outbox event to one endpoint), signed, and records the
// attempt; crm_private.webhook_record_attempt schedules the retry (backoff for about a day) and
// disables an endpoint after a run of failures. At-least-once: a crash between sending and recording
// sends again, so receivers deduplicate on the event id (Cairn-Event-Id).
import type { Task } from "graphile-worker";
import { assertPayload, type TaskContext } from "../types.ts";
import { postWebhook } from "../webhooks/deliver.ts";
import { SIGNATURE_HEADER, signWebhook } from "../webhooks/signature.ts";

interface DeliveryRow {
  delivery_id: string;
  organization_id: string;
  url: string;
  secret: string;
  endpoint_active: boolean;
  event_id: string;
  event_type: string;
  event_created_at: Date;
  payload: unknown;
  attempt: number;
}

export function makeWebhooksDeliver(ctx: TaskContext): Task {
  const rt = ctx.config.realtime;
  return async (payload) => {
    const { deliveryId } = assertPayload<{ deliveryId: string }>(payload, (v) => typeof v.deliveryId === "string");
    const { rows } = await ctx.ownerPool.query<DeliveryRow>("select * from crm_private.webhook_delivery_to_send($1)", [deliveryId]);
    const d = rows[0];
    if (!d) return; // delivered, failed for good, or deleted with its endpoint
    if (!d.endpoint_active) {
      await ctx.ownerPool.query("select crm_private.webhook_skip_delivery($1, $2)", [deliveryId, "The endpoint is disabled."]);
      return;
    }
    const body = JSON.stringify({
      id: d.event_id,
      type: d.event_type,
      createdAt: d.event_created_at.toISOString(),
      organizationId: d.organization_id,
      data: d.payload,
    });
    const result = await postWebhook(
      d.url,
      body,
      {
        [SIGNATURE_HEADER]: signWebhook(d.secret, body),
        "Cairn-Event-Id": d.event_id,
        "Cairn-Event-Type": d.event_type,
        "Cairn-Delivery-Id": d.delivery_id,
        "Cairn-Delivery-Attempt": String(d.attempt),
      },
      { allowHttp: rt.webhooksAllowHttp, allowPrivateNetworks: rt.webhooksAllowPrivateNetworks, timeoutMs: rt.webhookTimeoutMs },
    );
    const { rows: recorded } = await ctx.ownerPool.query<{ r: { status: string; nextAttemptAt?: string; endpointDisabled?: boolean } }>(
      "select crm_private.webhook_record_attempt($1, $2, $3, $4, $5, $6) as r",
      [deliveryId, result.statusCode, result.durationMs, result.error, result.responseBody, rt.webhookDisableAfterFailures],
    );
    const r = recorded[0]?.r;
    const log = r?.status === "succeeded" ? ctx.logger.info.bind(ctx.logger) : ctx.logger.warn.bind(ctx.logger);
    log(
      { task: "webhooks:deliver", deliveryId, eventType: d.event_type, attempt: d.attempt, statusCode: result.statusCode, durationMs: result.durationMs, ...r },
      r?.status === "succeeded" ? "webhook delivered" : "webhook delivery failed",
    );
  };
}
