// The AI tenant jobs (worker/tenant/registry.ts): ai:score-leads, ai:train, ai:draft, ai:insights.
// Each runs in the organization's transaction as its system principal (runTenantJob), so every row
// it reads or writes is the organization's own under row-level security. Features come from one SQL
// statement, scores go back in one; the only per-record work is the cloud model's call.
import type { PoolClient } from "pg";
import type { TaskContext } from "../types.ts";
import type { TenantJobContext, TenantJobFn } from "../tenant/runner.ts";
import { isFallback, LocalAiProvider, makeAiProvider, type AiProvider, type CallBudget } from "../providers/ai.ts";
import { modelFromRow, modelToCoefficients, PRIOR_MODEL, scoreLocal, trainLeadModel, type FeatureRow, type LabelledRow, type LeadModel } from "./model.ts";
import type { DraftContext } from "./draft-template.ts";

interface AiSettings {
  cloud_enabled: boolean;
  daily_call_budget: number;
}

/** The provider for one organization: the deployment's, unless the organization opted out of cloud AI. */
export class AiProviders {
  readonly local = new LocalAiProvider();
  private cloud: AiProvider | undefined;
  private readonly ctx: TaskContext;
  constructor(ctx: TaskContext) {
    this.ctx = ctx;
  }
  async forOrganization(client: PoolClient): Promise<AiProvider> {
    if (this.ctx.config.ai.provider === "local") return this.local;
    const settings = (await client.query<AiSettings>("select cloud_enabled, daily_call_budget from crm.ai_settings")).rows[0];
    if (!settings?.cloud_enabled) return this.local;
    this.cloud ??= makeAiProvider(this.ctx.config.ai);
    return this.cloud;
  }
  /** One call of the organization's daily budget, reserved outside the job's transaction. */
  budget(organizationId: string): CallBudget {
    return async () => {
      const { rows } = await this.ctx.ownerPool.query<{ n: number }>("select crm_private.ai_reserve_calls($1, 1) as n", [organizationId]);
      return (rows[0]?.n ?? 0) > 0;
    };
  }
  async recordFallbacks(organizationId: string, n: number): Promise<void> {
    if (n > 0) await this.ctx.ownerPool.query("select crm_private.ai_record_fallbacks($1, $2)", [organizationId, n]);
  }
}

async function mapLimit<T, R>(items: T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i]!);
      }
    }),
  );
  return out;
}

/** The organization's model in use: its newest trained one, or the prior model. */
export async function currentModel(client: PoolClient): Promise<LeadModel> {
  const { rows } = await client.query(
    "select kind, name, version, coefficients, threshold from crm.lead_score_models order by version desc limit 1",
  );
  return rows[0] ? modelFromRow(rows[0]) : PRIOR_MODEL;
}

/**
 * What decides whether a record needs the cloud model again: its features, with day counts in
 * buckets (a day passing does not make a record new) and without the cutoff.
 */
export function featureKey(f: FeatureRow): string {
  const bucket = (d: unknown) => {
    const n = Number(d);
    return n <= 7 ? "week" : n <= 30 ? "month" : n <= 90 ? "quarter" : n < 365 ? "year" : "older";
  };
  const { cutoff: _c, days_since_touch, days_since_order, ...rest } = f;
  const sorted = Object.fromEntries(Object.entries({ ...rest, days_since_touch: bucket(days_since_touch), days_since_order: bucket(days_since_order) }).sort(([a], [b]) => a.localeCompare(b)));
  return JSON.stringify(sorted);
}

interface Subject {
  kind: "customer" | "contact";
  id: string;
  features: FeatureRow;
  currentModel: string | null;
  lastCloudKey: string | null;
}

interface ScoreOut {
  kind: string;
  id: string;
  score: number;
  reasons: string[];
  model: string;
  provider: "local" | "bedrock";
  fallback_reason: string | null;
  features: FeatureRow;
  record: boolean;
}

export function makeScoreLeads(taskCtx: TaskContext, providers = new AiProviders(taskCtx)): TenantJobFn {
  return async ({ client, organizationId, logger }: TenantJobContext) => {
    const provider = await providers.forOrganization(client);
    const model = await currentModel(client);
    // Features of every customer and contact, one statement each; records pinned by hand are skipped.
    const customers = await client.query<{ id: string; features: FeatureRow; model: string | null; cloud: FeatureRow | null }>(`
      select f.customer_id as id, to_jsonb(f) as features, c.lead_score_model as model, h.features as cloud
        from crm_jobs.lead_features() f
        join crm.customers c on c.id = f.customer_id
        left join lateral (select x.features from crm.lead_score_history x
                            where x.organization_id = c.organization_id and x.customer_id = c.id and x.provider = 'bedrock'
                            order by x.scored_at desc limit 1) h on $1
       where c.lead_score_model is distinct from 'manual'`, [provider.name === "bedrock"]);
    const contacts = await client.query<{ id: string; features: FeatureRow; model: string | null; cloud: FeatureRow | null }>(`
      select f.contact_id as id, f.features, c.lead_score_model as model, h.features as cloud
        from crm_jobs.contact_lead_features() f
        join crm.contacts c on c.id = f.contact_id
        left join lateral (select x.features from crm.lead_score_history x
                            where x.organization_id = c.organization_id and x.contact_id = c.id and x.provider = 'bedrock'
                            order by x.scored_at desc limit 1) h on $1
       where c.lead_score_model is distinct from 'manual'`, [provider.name === "bedrock"]);
    const subjects: Subject[] = [
      ...customers.rows.map((r) => ({ kind: "customer" as const, id: r.id, features: r.features, currentModel: r.model, lastCloudKey: r.cloud ? featureKey(r.cloud) : null })),
      ...contacts.rows.map((r) => ({ kind: "contact" as const, id: r.id, features: r.features, currentModel: r.model, lastCloudKey: r.cloud ? featureKey(r.cloud) : null })),
    ];
    const out: ScoreOut[] = [];
    const cloudWork: { subject: Subject; local: ReturnType<typeof scoreLocal> }[] = [];
    for (const s of subjects) {
      const local = scoreLocal(model, s.features);
      if (provider.name === "bedrock") {
        // The cloud model is asked again only when the record is new or unpinned (no model), its
        // last score did not come from it, or its features changed since it last answered.
        const needsCloud = !s.currentModel?.startsWith("bedrock:") || s.lastCloudKey !== featureKey(s.features);
        if (needsCloud) cloudWork.push({ subject: s, local });
        continue;
      }
      out.push({ kind: s.kind, id: s.id, score: local.score, reasons: local.reasons, model: model.name, provider: "local", fallback_reason: null, features: s.features, record: false });
    }
    let fallbacks = 0;
    if (cloudWork.length) {
      const budget = providers.budget(organizationId);
      const answers = await mapLimit(cloudWork, taskCtx.config.ai.bedrock.concurrency, ({ subject }) => provider.scoreLead(model, subject.features, budget));
      cloudWork.forEach(({ subject, local }, i) => {
        const a = answers[i]!;
        if (isFallback(a)) {
          fallbacks++;
          out.push({ kind: subject.kind, id: subject.id, score: local.score, reasons: local.reasons, model: model.name, provider: "local", fallback_reason: a.fallback, features: subject.features, record: true });
        } else {
          out.push({ kind: subject.kind, id: subject.id, score: a.score, reasons: a.reasons, model: a.model, provider: "bedrock", fallback_reason: null, features: subject.features, record: true });
        }
      });
      await providers.recordFallbacks(organizationId, fallbacks);
    }
    const { rows } = await client.query<{ n: string }>("select crm_jobs.write_lead_scores($1::jsonb)::text as n", [JSON.stringify(out)]);
    logger.info({ subjects: subjects.length, cloud: cloudWork.length, fallbacks, changed: Number(rows[0]!.n), model: model.name }, "lead scores written");
    return Number(rows[0]!.n);
  };
}

/** The labelled history of the organization, each customer's features as of its outcome. */
export async function labelledHistory(client: PoolClient): Promise<LabelledRow[]> {
  const { rows } = await client.query<{ label: number; labelled_at: Date; features: FeatureRow }>(
    "select label, labelled_at, features from crm_jobs.lead_training_set()",
  );
  return rows.map((r) => ({ label: r.label, labelledAt: new Date(r.labelled_at), features: r.features }));
}

export function makeTrainLeadModel(): TenantJobFn {
  return async ({ client, logger }: TenantJobContext) => {
    const rows = await labelledHistory(client);
    const latest = (await client.query<{ version: number; kind: string; coefficients: unknown }>(
      "select version, kind, coefficients from crm.lead_score_models order by version desc limit 1",
    )).rows[0];
    const version = (latest?.version ?? 0) + 1;
    const result = trainLeadModel(rows, version);
    const coefficients = modelToCoefficients(result.model);
    // Nothing learned since the last run: keep it (no new version, no rescoring).
    if (latest && latest.kind === result.model.kind && JSON.stringify(latest.coefficients) === JSON.stringify(coefficients)) {
      logger.info({ version: latest.version }, "lead model unchanged");
      return 0;
    }
    await client.query(
      `insert into crm.lead_score_models (version, kind, name, coefficients, threshold, training_size, positives, negatives, metrics)
       values ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
      [version, result.model.kind, result.model.kind === "prior" ? PRIOR_MODEL.name : result.model.name, JSON.stringify(coefficients),
        result.model.threshold, result.trainingSize, result.positives, result.negatives, JSON.stringify(result.metrics)],
    );
    logger.info({ version, kind: result.model.kind, trainingSize: result.trainingSize, metrics: result.metrics }, "lead model trained");
    return 1;
  };
}

export function makeDraftEmails(taskCtx: TaskContext, providers = new AiProviders(taskCtx)): TenantJobFn {
  return async ({ client, organizationId }: TenantJobContext) => {
    const provider = await providers.forOrganization(client);
    const { rows } = await client.query<{ id: string; context: DraftContext }>(
      "select id, context from crm.ai_drafts where status = 'pending' order by created_at limit 200",
    );
    if (!rows.length) return 0;
    const budget = providers.budget(organizationId);
    let fallbacks = 0;
    const results = await mapLimit(rows, taskCtx.config.ai.bedrock.concurrency, async (d) => {
      try {
        const answer = await provider.draftEmail(d.context, budget);
        if (!isFallback(answer)) return { id: d.id, status: "ready", ...answer, provider: provider.name, fallback_reason: null, error: null };
        fallbacks++;
        const local = await providers.local.draftEmail(d.context);
        return { id: d.id, status: "ready", ...local, provider: "local", fallback_reason: answer.fallback, error: null };
      } catch (err) {
        return { id: d.id, status: "failed", subject: null, body: null, model: null, provider: null, fallback_reason: null, error: String((err as Error).message ?? err).slice(0, 2000) };
      }
    });
    await providers.recordFallbacks(organizationId, fallbacks);
    const written = await client.query(
      `update crm.ai_drafts d set status = x.status, subject = x.subject, body = x.body, model = x.model, provider = x.provider,
              fallback_reason = x.fallback_reason, error = x.error, completed_at = now()
         from jsonb_to_recordset($1::jsonb) as x (id uuid, status text, subject text, body text, model text, provider text, fallback_reason text, error text)
        where d.id = x.id and d.status = 'pending'`,
      [JSON.stringify(results)],
    );
    return written.rowCount ?? 0;
  };
}

/**
 * With the cloud model: its sentiment and summary of each customer's latest 10 notes of the last 90
 * days, for the customers whose notes changed since it last read them (200 a run). The local
 * provider has nothing to do here: customerInsights computes the lexicon sentiment in SQL.
 */
export function makeReadNotes(taskCtx: TaskContext, providers = new AiProviders(taskCtx)): TenantJobFn {
  return async ({ client, organizationId }: TenantJobContext) => {
    const provider = await providers.forOrganization(client);
    if (provider.name === "local") return 0;
    const { rows } = await client.query<{ customer_id: string; note_ids: string[]; notes: { at: string; text: string }[] }>(`
      with recent as (
        select c.id as customer_id, n.id, n.created_at, n.content,
               row_number() over (partition by c.id order by n.created_at desc) as k
          from crm.customers c join crm.notes n on n.organization_id = c.organization_id and n.customer_id = c.id
         where n.created_at > now() - interval '90 days'
      ), latest as (
        select customer_id, array_agg(id order by created_at desc) as note_ids,
               jsonb_agg(jsonb_build_object('at', created_at::date, 'text', left(content, 2000)) order by created_at desc) as notes
          from recent where k <= 10 group by customer_id
      )
      select l.customer_id, l.note_ids, l.notes from latest l
        left join crm.ai_insights i on i.customer_id = l.customer_id
       where i.id is null or i.note_ids <> l.note_ids
       order by l.customer_id limit 200`);
    if (!rows.length) return 0;
    const budget = providers.budget(organizationId);
    const answers = await mapLimit(rows, taskCtx.config.ai.bedrock.concurrency, (r) => provider.readNotes(r.notes, budget));
    const ok = rows.flatMap((r, i) => {
      const a = answers[i];
      return a && !isFallback(a) ? [{ customer_id: r.customer_id, sentiment: a.sentiment, summary: a.summary, model: a.model, note_ids: r.note_ids }] : [];
    });
    await providers.recordFallbacks(organizationId, rows.length - ok.length);
    if (!ok.length) return 0;
    const written = await client.query(
      `insert into crm.ai_insights (customer_id, sentiment, summary, model, note_ids)
       select x.customer_id, x.sentiment, x.summary, x.model, x.note_ids
         from jsonb_to_recordset($1::jsonb) as x (customer_id uuid, sentiment float8, summary text, model text, note_ids uuid[])
       on conflict (organization_id, customer_id) do update
         set sentiment = excluded.sentiment, summary = excluded.summary, model = excluded.model, note_ids = excluded.note_ids`,
      [JSON.stringify(ok)],
    );
    return written.rowCount ?? 0;
  };
}
