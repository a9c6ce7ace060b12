// The registry of tenant tasks: every job that works on one organization's data. Adding a tenant job
// is adding one entry here (and its crm_jobs function in SQL, or a handler); the fan-out schedules
// it, the worker runs it through runTenantJob, and crm.job_runs records it. docs/jobs.md has the
// checklist and the schedule table generated from these entries.
import type { Task } from "graphile-worker";
import { assertPayload, type TaskContext } from "../types.ts";
import { runTenantJob, sqlTenantJob, TenantJobBusyError, type TenantJobFn } from "./runner.ts";
import { makeDraftEmails, makeReadNotes, makeScoreLeads, makeTrainLeadModel } from "../ai/jobs.ts";
import { makeMarkOverdue } from "../finance/jobs.ts";
import { scoreRfm } from "../tasks/rfm-score.ts";

/**
 * When the fan-out enqueues the task for each organization, in the organization's time zone:
 * `daily` at settings.daily_job_hour (default 3 → 03:00), `weekly` on settings.weekly_job_day
 * (ISO, default 1 = Monday) at that hour, `hourly` at the start of every local hour, `manual` never
 * (enqueued by SQL with crm_private.enqueue_tenant_job, e.g. from a mutation).
 */
export type TenantSchedule = "hourly" | "daily" | "weekly" | "manual";

export interface TenantTaskDefinition {
  /** graphile-worker task identifier, `area:verb`. */
  identifier: string;
  schedule: TenantSchedule;
  /** What it does and what it touches (docs/jobs.md's schedule table). */
  summary: string;
  /** A crm_jobs function (SECURITY INVOKER, `(payload jsonb) returns bigint`): run as the system principal. */
  sqlFunction?: `crm_jobs.${string}`;
  /** Or a TypeScript handler, given the job's transaction (see TenantJobContext). */
  handler?: TenantJobFn;
  /** Or a handler made once per worker from its context (configuration, owner pool: e.g. a cloud provider). */
  makeHandler?: (ctx: TaskContext) => TenantJobFn;
  /** graphile-worker attempts before the job fails permanently (default 5: about 3 minutes of retries). */
  maxAttempts?: number;
}

export const TENANT_TASKS = [
  {
    identifier: "tasks:recur",
    schedule: "daily",
    summary: "Creates the next occurrence of every recurring task whose interval has passed (crm.tasks: inserts occurrences, moves the template's lastTriggeredAt).",
    sqlFunction: "crm_jobs.recur_tasks",
  },
  {
    identifier: "rfm:score",
    schedule: "daily",
    summary: "Scores every customer (crm.customers: R, F, M, score, raw values, rfmScoredAt; levels through customerLevels.minimumScore, hand-set levels kept), logs the run (crm.rfm_runs, crm.rfm_scores) and prunes runs past retention; also on recalculateRfm.",
    handler: scoreRfm,
  },
  {
    identifier: "loyalty:expire",
    schedule: "daily",
    summary: "Expires the loyalty points past their date (crm.loyalty_ledger: one expire entry per customer with points due), under the organization's loyalty lock.",
    sqlFunction: "crm_jobs.expire_points",
  },
  {
    identifier: "ai:score-leads",
    schedule: "daily",
    summary: "Scores every customer and contact (crm.customers, crm.contacts: leadScore, leadScoreReasons, leadScoreModel, leadScoredAt; crm.lead_score_history) with the local model or Amazon Bedrock; also a minute after a change that feeds the features, and on scoreLeads.",
    makeHandler: makeScoreLeads,
  },
  {
    identifier: "ai:train",
    schedule: "weekly",
    summary: "Trains the organization's lead score model on its own history (crm.lead_score_models: a new version with its held-out metrics), or keeps the prior model while the history is too small.",
    makeHandler: () => makeTrainLeadModel(),
  },
  {
    identifier: "ai:draft",
    schedule: "manual",
    summary: "Writes the pending e-mail drafts asked for with draftEmail (crm.ai_drafts: pending → ready or failed).",
    makeHandler: makeDraftEmails,
  },
  {
    identifier: "ai:insights",
    schedule: "manual",
    summary: "With Amazon Bedrock: the model's sentiment and summary of the recent notes of customers whose notes changed (crm.ai_insights); a minute after notes change.",
    makeHandler: makeReadNotes,
  },
  {
    identifier: "invoices:overdue",
    schedule: "daily",
    summary: "Marks issued and partially paid invoices past their due date as overdue (crm.invoices: status, overdueAt) and notifies the customer's owner and the Finance members in-app, and e-mails the customer through the message queue (consent honoured), once per invoice (crm.notifications, crm.messages); logs each one.",
    handler: makeMarkOverdue(),
  },
  {
    identifier: "invoices:recur",
    schedule: "daily",
    summary: "Bills every period of the active billing schedules whose date has come (crm.invoices, crm.invoice_items: a draft, or issued per financeSettings.recurringAutoIssue; crm.billing_schedules: periodsBilled, nextDate); a period is never billed twice.",
    sqlFunction: "crm_jobs.bill_recurring",
  },
  {
    identifier: "messages:birthday",
    schedule: "daily",
    summary: "Queues the birthday message (crm.messages) to customers whose birthday is today in the organization's time zone (29 February: 28 February in other years), once a year, when the birthday automation is on.",
    sqlFunction: "crm_jobs.send_birthday_messages",
  },
  {
    identifier: "messages:inactivity",
    schedule: "daily",
    summary: "Queues the inactivity message (crm.messages) to customers with no paid order for the set number of days, once per inactivity episode, when the inactivity automation is on.",
    sqlFunction: "crm_jobs.send_inactivity_messages",
  },
] as const satisfies readonly TenantTaskDefinition[];

export type TenantTaskIdentifier = (typeof TENANT_TASKS)[number]["identifier"];
export const TENANT_TASK_IDENTIFIERS = TENANT_TASKS.map((t) => t.identifier) as TenantTaskIdentifier[];
export const DEFAULT_TENANT_MAX_ATTEMPTS = 5;
/** A run that finds another run of its task for its organization in progress waits this long. */
export const BUSY_RETRY_MS = 60_000;

/** The schedule the fan-out passes to crm_private.fan_out_tenant_jobs. */
export function tenantSchedule(tasks: readonly TenantTaskDefinition[] = TENANT_TASKS) {
  return tasks
    .filter((t) => t.schedule !== "manual")
    .map((t) => ({ identifier: t.identifier, schedule: t.schedule, max_attempts: t.maxAttempts ?? DEFAULT_TENANT_MAX_ATTEMPTS }));
}

export interface TenantJobPayload {
  organizationId: string;
  [key: string]: unknown;
}

/** The graphile-worker task for a registry entry: checks the payload, then runTenantJob. */
export function makeTenantTask(def: TenantTaskDefinition, ctx: TaskContext): Task {
  const fn = def.makeHandler?.(ctx) ?? def.handler ?? (def.sqlFunction ? sqlTenantJob(def.sqlFunction) : undefined);
  if (!fn) throw new Error(`tenant task ${def.identifier} needs a sqlFunction or a handler`);
  return async (payload, helpers) => {
    const p = assertPayload<TenantJobPayload>(payload, (v) => typeof v.organizationId === "string");
    try {
      await runTenantJob(
        { ownerPool: ctx.ownerPool, authPool: ctx.authPool },
        {
          organizationId: p.organizationId,
          task: def.identifier,
          payload: p,
          attempt: helpers.job.attempts,
          maxAttempts: helpers.job.max_attempts,
          jobId: helpers.job.id,
          logger: ctx.logger,
        },
        fn,
      );
    } catch (err) {
      if (!(err instanceof TenantJobBusyError)) throw err;
      // Another run is in progress: come back later rather than fail (and alert) after the retries.
      // The new job takes over the job key (ours is running, so graphile-worker moves the key).
      await helpers.addJob(def.identifier, p, {
        jobKey: `tenant:${def.identifier}:${p.organizationId}`,
        runAt: new Date(Date.now() + BUSY_RETRY_MS),
        maxAttempts: helpers.job.max_attempts,
      });
      ctx.logger.info({ task: def.identifier, organizationId: p.organizationId, jobId: helpers.job.id }, "tenant job busy; run again in a minute");
    }
  };
}

export function makeTenantTaskList(ctx: TaskContext, tasks: readonly TenantTaskDefinition[] = TENANT_TASKS): Record<TenantTaskIdentifier, Task> {
  return Object.fromEntries(tasks.map((t) => [t.identifier, makeTenantTask(t, ctx)])) as Record<TenantTaskIdentifier, Task>;
}
