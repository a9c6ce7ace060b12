// The typed task registry: every task identifier the crontab or SQL may enqueue.
import type { TaskList } from "graphile-worker";
import type { TaskContext } from "../types.ts";
import { makeMaintenancePrune } from "./maintenance-prune.ts";
import { makeEmailSend } from "./email-send.ts";
import { makeJobsFanOut } from "./jobs-fan-out.ts";
import { makeTenantTaskList, TENANT_TASK_IDENTIFIERS } from "../tenant/registry.ts";
import { makeWebhooksDeliver } from "./webhooks-deliver.ts";
import { makeImportsRun } from "./imports-run.ts";
import { makeIntegrationsPrune, makeNotificationsDigest, makeNotificationsEmail, makeNotificationsScan } from "./notifications.ts";
import { makeMessagesSend } from "./messages-send.ts";

// Tenant tasks (one organization each) come from worker/tenant/registry.ts.
export const TASK_IDENTIFIERS = [
  "maintenance:prune",
  "email:send",
  "jobs:fan_out",
  ...TENANT_TASK_IDENTIFIERS,
  "notifications:email",
  "notifications:scan",
  "notifications:digest",
  "webhooks:deliver",
  "imports:run",
  "integrations:prune",
  "messages:send",
] as const;
export type TaskIdentifier = (typeof TASK_IDENTIFIERS)[number];

export function makeTaskList(ctx: TaskContext): TaskList & Record<TaskIdentifier, TaskList[string]> {
  return {
    "maintenance:prune": makeMaintenancePrune(ctx),
    "email:send": makeEmailSend(ctx),
    "jobs:fan_out": makeJobsFanOut(ctx),
    ...makeTenantTaskList(ctx),
    "notifications:email": makeNotificationsEmail(ctx),
    "notifications:scan": makeNotificationsScan(ctx),
    "notifications:digest": makeNotificationsDigest(ctx),
    "webhooks:deliver": makeWebhooksDeliver(ctx),
    "imports:run": makeImportsRun(ctx),
    "integrations:prune": makeIntegrationsPrune(ctx),
    "messages:send": makeMessagesSend(ctx),
  };
}
