// The local lead score model: the features it reads (from crm_jobs.lead_features), how it is
// trained on an organization's history (time-based split, L2 logistic regression on standardised
// inputs), the prior model used while the history is too small, and the plain-words reasons of a
// score. docs/ai.md describes all of it; keep the two in step.
import { accuracy, auc, bestThreshold, brier, fitLogistic, sigmoid } from "./logistic.ts";

/** A feature row as crm_jobs.lead_features returns it (numbers, plus context strings). */
export type FeatureRow = Record<string, unknown>;

interface FeatureSpec {
  name: string;
  /** Applied before standardising: counts and amounts are compressed with log(1 + x). */
  transform: "identity" | "log1p";
  /** Plain words for a reason, from the raw value. */
  describe: (v: number, row: FeatureRow) => string;
}

const plural = (n: number, one: string, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;
const fromLog = (v: number) => Math.round(Math.expm1(v) * 1000);
const money = (v: number) => fromLog(v).toLocaleString("en-US");
const days = (n: number, what: string) =>
  n <= 7 ? `${what} within the last week` : n <= 30 ? `${what} within the last month` : n <= 90 ? `No ${what.toLowerCase()} for over a month`
    : n < 365 ? `No ${what.toLowerCase()} for over three months` : `No ${what.toLowerCase()} for a year or more`;

/** The features of the local model, in a fixed order (docs/ai.md, Features). */
export const FEATURES: readonly FeatureSpec[] = [
  { name: "is_company", transform: "identity", describe: (v) => (v ? "A company" : "A person") },
  { name: "size_rank", transform: "identity", describe: (v, r) => (v ? `Company size ${String(r.company_size)}` : "Company size unknown") },
  { name: "log_employees", transform: "identity", describe: (v) => (v ? `About ${Math.round(Math.expm1(v))} employees` : "Number of employees unknown") },
  { name: "log_revenue", transform: "identity", describe: (v) => (v ? `Annual revenue about ${money(v)}` : "Annual revenue unknown") },
  { name: "has_industry", transform: "identity", describe: (v, r) => (v ? `Industry: ${String(r.industry)}` : "Industry unknown") },
  { name: "referred", transform: "identity", describe: (v) => (v ? "Referred by a customer or partner" : "Not referred") },
  { name: "has_lead_source", transform: "identity", describe: (v, r) => (v ? `Lead source: ${String(r.lead_source)}` : "Lead source unknown") },
  { name: "is_prospect", transform: "identity", describe: (v) => (v ? "Qualified as a prospect" : "Not qualified yet") },
  {
    name: "industry_conversion",
    transform: "identity",
    describe: (v, r) => (r.industry ? `${String(r.industry)} leads convert ${Math.round(v * 100)} % of the time here` : `Industry unknown (${Math.round(v * 100)} % convert overall)`),
  },
  {
    name: "source_conversion",
    transform: "identity",
    describe: (v, r) => (r.lead_source ? `Leads from ${String(r.lead_source)} convert ${Math.round(v * 100)} % of the time here` : `Lead source unknown (${Math.round(v * 100)} % convert overall)`),
  },
  { name: "tasks_30d", transform: "log1p", describe: (v) => (v ? `${plural(v, "task")} in the last 30 days` : "No tasks in the last 30 days") },
  { name: "tasks_90d", transform: "log1p", describe: (v) => (v ? `${plural(v, "task")} in the last 90 days` : "No tasks in the last 90 days") },
  { name: "tasks_done_90d", transform: "log1p", describe: (v) => (v ? `${plural(v, "task")} completed in the last 90 days` : "No task completed in the last 90 days") },
  { name: "notes_30d", transform: "log1p", describe: (v) => (v ? `${plural(v, "note")} in the last 30 days` : "No notes in the last 30 days") },
  { name: "notes_90d", transform: "log1p", describe: (v) => (v ? `${plural(v, "note")} in the last 90 days` : "No notes in the last 90 days") },
  { name: "work_hours_90d", transform: "log1p", describe: (v) => (v ? `${Math.round(v * 10) / 10} hours of work logged in the last 90 days` : "No work logged in the last 90 days") },
  { name: "days_since_touch", transform: "log1p", describe: (v) => days(v, "Activity") },
  { name: "campaign_engagement_90d", transform: "log1p", describe: (v) => `${plural(v, "campaign interaction")} in the last 90 days` },
  { name: "open_deals", transform: "log1p", describe: (v) => (v ? `${plural(v, "open deal")}` : "No open deal") },
  { name: "log_open_amount", transform: "identity", describe: (v) => (v ? `Open deals worth about ${money(v)}` : "No open pipeline") },
  { name: "max_stage_probability", transform: "identity", describe: (v) => (v ? `A deal reached a ${v} % stage` : "No deal in the pipeline") },
  { name: "orders_total", transform: "log1p", describe: (v) => (v ? `${plural(v, "order")} so far` : "No orders yet") },
  { name: "orders_365d", transform: "log1p", describe: (v) => (v ? `${plural(v, "order")} in the last year` : "No orders in the last year") },
  { name: "log_monetary_365d", transform: "identity", describe: (v) => (v ? `Spent about ${money(v)} in the last year` : "Nothing spent in the last year") },
  { name: "days_since_order", transform: "log1p", describe: (v) => (v >= 730 ? "No recent order" : days(v, "Order")) },
  { name: "has_email", transform: "identity", describe: (v) => (v ? "Has an e-mail address" : "No e-mail address") },
  { name: "has_phone", transform: "identity", describe: (v) => (v ? "Has a phone number" : "No phone number") },
  { name: "has_website", transform: "identity", describe: (v) => (v ? "Has a website" : "No website") },
  { name: "has_primary_contact", transform: "identity", describe: (v) => (v ? "Has a primary contact" : "No primary contact") },
  { name: "profile_completeness", transform: "identity", describe: (v) => `Profile ${Math.round(v * 100)} % complete` },
];
export const FEATURE_NAMES = FEATURES.map((f) => f.name);

/** One feature of a model: weight on the standardised input, and the input's mean and scale. */
export interface Coefficient {
  weight: number;
  mean: number;
  scale: number;
}
export interface LeadModel {
  kind: "logistic" | "prior";
  name: string;
  version: number;
  intercept: number;
  coefficients: Record<string, Coefficient>;
  threshold: number;
}

/**
 * The prior model, used while an organization has too little labelled history (below
 * MIN_LABELLED examples, or MIN_PER_CLASS of either outcome). Hand-set, documented in docs/ai.md:
 * weights on the transformed inputs, centred on a typical lead (mean), unscaled.
 */
export const PRIOR_MODEL: LeadModel = {
  kind: "prior",
  name: "local-prior-v1",
  version: 0,
  intercept: -0.8,
  threshold: 0.5,
  coefficients: Object.fromEntries(
    (
      [
        ["is_prospect", 0.6, 0],
        ["industry_conversion", 2, 0.4],
        ["source_conversion", 2, 0.4],
        ["referred", 0.7, 0],
        ["has_lead_source", 0.1, 0],
        ["size_rank", 0.05, 2],
        ["tasks_30d", 0.5, Math.log1p(1)],
        ["tasks_90d", 0.2, Math.log1p(2)],
        ["tasks_done_90d", 0.2, Math.log1p(1)],
        ["notes_90d", 0.3, Math.log1p(1)],
        ["work_hours_90d", 0.3, Math.log1p(1)],
        ["days_since_touch", -0.35, Math.log1p(30)],
        ["open_deals", 0.3, 0],
        ["max_stage_probability", 0.02, 10],
        ["orders_total", 0.4, 0],
        ["has_email", 0.3, 1],
        ["has_phone", 0.2, 1],
        ["has_primary_contact", 0.2, 1],
        ["profile_completeness", 0.8, 0.6],
      ] as const
    ).map(([name, weight, mean]) => [name, { weight, mean, scale: 1 }]),
  ),
};

export const MIN_LABELLED = 40;
export const MIN_PER_CLASS = 10;
/** L2 penalty on the standardised weights. */
export const LAMBDA = 1;

function transformed(spec: FeatureSpec, row: FeatureRow): number {
  const raw = Number(row[spec.name] ?? 0);
  const v = Number.isFinite(raw) ? raw : 0;
  return spec.transform === "log1p" ? Math.log1p(Math.max(v, 0)) : v;
}

export function vector(row: FeatureRow): number[] {
  return FEATURES.map((f) => transformed(f, row));
}

/** Probability of conversion under a model. */
export function probability(model: LeadModel, row: FeatureRow): number {
  let z = model.intercept;
  for (const f of FEATURES) {
    const c = model.coefficients[f.name];
    if (c && c.weight) z += (c.weight * (transformed(f, row) - c.mean)) / c.scale;
  }
  return sigmoid(z);
}

export interface LocalScore {
  score: number;
  probability: number;
  reasons: string[];
}

/** Score 0–100 and up to three reasons: the features that move this record furthest from a typical one. */
export function scoreLocal(model: LeadModel, row: FeatureRow): LocalScore {
  const p = probability(model, row);
  const contributions = FEATURES.map((f) => {
    const c = model.coefficients[f.name];
    const value = Number(row[f.name] ?? 0);
    return { f, value, effect: c && c.weight ? (c.weight * (transformed(f, row) - c.mean)) / c.scale : 0 };
  })
    .filter((x) => Math.abs(x.effect) >= 0.05)
    .sort((a, b) => Math.abs(b.effect) - Math.abs(a.effect) || a.f.name.localeCompare(b.f.name))
    .slice(0, 3);
  const reasons = contributions.map((x) => `${x.f.describe(x.value, row)} (${x.effect > 0 ? "raises" : "lowers"} the score)`);
  if (!reasons.length) reasons.push("A typical lead: nothing stands out");
  return { score: Math.round(p * 100), probability: p, reasons };
}

export interface LabelledRow {
  label: number;
  labelledAt: Date;
  features: FeatureRow;
}

export interface Metrics {
  auc: number;
  accuracy: number;
  brier: number;
  threshold: number;
  trainSize: number;
  testSize: number;
  testPositives: number;
  baseRate: number;
}

/** Fits a logistic model on rows (standardised with their own means and scales). */
export function fitModel(rows: LabelledRow[], version = 1): LeadModel {
  const x = rows.map((r) => vector(r.features));
  const d = FEATURES.length;
  const means = new Array<number>(d).fill(0);
  const scales = new Array<number>(d).fill(0);
  for (const v of x) for (let j = 0; j < d; j++) means[j]! += v[j]! / x.length;
  for (const v of x) for (let j = 0; j < d; j++) scales[j]! += (v[j]! - means[j]!) ** 2 / x.length;
  for (let j = 0; j < d; j++) scales[j] = Math.sqrt(scales[j]!);
  // A feature that never varies carries no information: it gets weight 0 (and no reason).
  const used = FEATURES.map((_, j) => scales[j]! > 1e-9);
  const z = x.map((v) => v.map((value, j) => (used[j] ? (value - means[j]!) / scales[j]! : 0)));
  const fit = fitLogistic(z, rows.map((r) => r.label), { lambda: LAMBDA });
  const coefficients: Record<string, Coefficient> = {};
  FEATURES.forEach((f, j) => {
    coefficients[f.name] = { weight: used[j] ? round(fit.weights[j]!) : 0, mean: round(means[j]!), scale: used[j] ? round(scales[j]!) : 1 };
  });
  return { kind: "logistic", name: `local-logistic-v${version}`, version, intercept: round(fit.intercept), coefficients, threshold: 0.5 };
}

const round = (v: number) => Math.round(v * 1e6) / 1e6;

/**
 * Time-based evaluation: rows sorted by when their outcome became known; the oldest `trainShare`
 * train the model (and choose the threshold with the best training accuracy), the newest are held out.
 */
export function evaluateTimeSplit(rows: LabelledRow[], trainShare = 0.7): { model: LeadModel; metrics: Metrics } {
  const sorted = [...rows].sort((a, b) => a.labelledAt.getTime() - b.labelledAt.getTime());
  const cut = Math.round(sorted.length * trainShare);
  const train = sorted.slice(0, cut);
  const test = sorted.slice(cut);
  const model = fitModel(train);
  model.threshold = bestThreshold(train.map((r) => probability(model, r.features)), train.map((r) => r.label));
  const p = test.map((r) => probability(model, r.features));
  const y = test.map((r) => r.label);
  const positives = y.reduce((a, b) => a + b, 0);
  return {
    model,
    metrics: {
      auc: auc(p, y),
      accuracy: accuracy(p, y, model.threshold),
      brier: brier(p, y),
      threshold: model.threshold,
      trainSize: train.length,
      testSize: test.length,
      testPositives: positives,
      baseRate: test.length ? positives / test.length : Number.NaN,
    },
  };
}

export interface TrainingResult {
  model: LeadModel;
  metrics: Partial<Metrics> & { reason?: string };
  trainingSize: number;
  positives: number;
  negatives: number;
}

/** What ai:train stores: the organization's model (refitted on all its history) or the prior model. */
export function trainLeadModel(rows: LabelledRow[], version: number): TrainingResult {
  const positives = rows.filter((r) => r.label === 1).length;
  const negatives = rows.length - positives;
  if (rows.length < MIN_LABELLED || positives < MIN_PER_CLASS || negatives < MIN_PER_CLASS) {
    return {
      model: { ...PRIOR_MODEL, version, name: PRIOR_MODEL.name },
      metrics: { reason: `too little history: ${rows.length} labelled (${positives} converted, ${negatives} not); the prior model needs no training below ${MIN_LABELLED} labelled with ${MIN_PER_CLASS} of each outcome` },
      trainingSize: rows.length,
      positives,
      negatives,
    };
  }
  const { model: heldOut, metrics } = evaluateTimeSplit(rows, 0.75);
  const model = fitModel(rows, version);
  model.threshold = heldOut.threshold;
  return { model, metrics: clean(metrics), trainingSize: rows.length, positives, negatives };
}

function clean(m: Metrics): Metrics {
  const r = (v: number) => (Number.isFinite(v) ? Math.round(v * 10000) / 10000 : v);
  return { ...m, auc: r(m.auc), accuracy: r(m.accuracy), brier: r(m.brier), baseRate: r(m.baseRate) };
}

/** A model as stored in crm.lead_score_models. */
export function modelFromRow(row: { kind: string; name: string; version: number; coefficients: { intercept?: number; features?: Record<string, Coefficient> }; threshold: number }): LeadModel {
  return {
    kind: row.kind === "prior" ? "prior" : "logistic",
    name: row.name,
    version: row.version,
    intercept: Number(row.coefficients.intercept ?? 0),
    coefficients: row.coefficients.features ?? {},
    threshold: Number(row.threshold),
  };
}

export function modelToCoefficients(model: LeadModel): { intercept: number; features: Record<string, Coefficient> } {
  return { intercept: model.intercept, features: model.coefficients };
}
