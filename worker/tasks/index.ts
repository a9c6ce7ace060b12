// The typed task registry: every task identifier the crontab or SQL may enqueue.
import type { TaskList } from "graphile-worker";
import type { TaskContext } from "../types.ts";
import { makeMaintenancePrune } from "./maintenance-prune.ts";
import { makeEmailSend } from "./email-send.ts";
import { makeLoyaltyExpire } from "./loyalty-expire.ts";

export const TASK_IDENTIFIERS = ["maintenance:prune", "email:send", "loyalty:expire"] as const;
export type TaskIdentifier = (typeof TASK_IDENTIFIERS)[number];

export function makeTaskList(ctx: TaskContext): TaskList & Record<TaskIdentifier, TaskList[string]> {
  return {
    "maintenance:prune": makeMaintenancePrune(ctx),
    "email:send": makeEmailSend(ctx),
    "loyalty:expire": makeLoyaltyExpire(ctx),
  };
}
