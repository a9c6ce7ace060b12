// Demo data: fills one organization with a realistic, reproducible CRM (`npm run seed:demo`, and the
// first `npm start` on the embedded database). Everything is generated in memory from a seeded PRNG
// (mulberry32) and written with one set-based INSERT … SELECT per table and chunk
// (json_populate_recordset), as the owner, in a single transaction: either the whole data set is
// there or nothing is.
//
// Per-row triggers dominate the cost of bulk inserts (measured on a 2-core machine: 50,000 realistic
// customers take about 15 s with every trigger firing, 5.5 s with none, the audit trigger being the
// largest part; deals and tasks would also need an UPDATE each to reach closed states). Inside the
// transaction the triggers listed in REPLACED_TRIGGERS are disabled on the seeded tables and their
// work is done in the same set-based statements, with the same result:
//   _800_audit          → the audit_log INSERT rows crm_private.tg_audit writes (auditSelect)
//   _160_search         → search_vector computed in the INSERT … SELECT (same expressions, same
//                         text search configuration: crm_private.search_config)
//   _150_custom_fields  → values generated only for definitions that exist with the expected type
//                         and options (kept on for an entity with required fields)
//   _140_first_primary  → the first contact of each customer is inserted as its primary contact
//   customers._300_status_history, deals._300_stage_history
//                       → complete, back-dated histories (lead → prospect → …, Prospecting → … → Won)
//   deals._120_defaults → pipeline, stage, probability and currency are set explicitly; closed deals
//                         get their close date and lost reason as moveDealStage would set them
//   deals._130_contact  → a deal's contact is always one of its customer's contacts
//   tasks._120_workflow, projects._120_completed → completed_at is set for completed rows only
//   work_logs._300_project_hours → projects.actual_hours is the sum of the generated logs
//   products._120_defaults → the currency is set explicitly
// (customers._115_default_level fires only for customers without a level; the generator sets every
// customer's level, from its share of the orders: src/db/seed-commerce.ts.)
// The order history (src/db/seed-commerce.ts) is history loaded as an import would: its orders and
// payments get no audit rows (HISTORY_TRIGGERS are switched off the same way, not replaced).
// ALTER TABLE … DISABLE TRIGGER (the owner may; session_replication_role would need a superuser) is
// transactional: other sessions never see the triggers disabled (their writes to these tables wait
// for the commit), and a failure rolls it back with the rest. Constraints, foreign keys and every
// other trigger apply as usual (the task-dependency cycle check, …); a trigger added later fires.
// (A large order history sets its tables' plain indexes and foreign keys aside while it loads and
// rebuilds and validates them afterwards, in the same transaction: seed-commerce.ts.)
// test/crm/seed.test.ts checks the result against the triggers themselves.
import crypto from "node:crypto";
import type pg from "pg";
import { catalogue, demoPromotions, planCommerce, writeOrderHistory, type CommerceCustomer } from "./seed-commerce.ts";
import { writeFinanceHistory } from "./seed-finance.ts";

export interface SeedVolume {
  /** Members added to the organization (besides the ones it has) and teams they are put in. */
  managers: number;
  reps: number;
  teams: number;
  customers: number;
  deals: number;
  projects: number;
  tasks: number;
  taskDependencies: number;
  workLogs: number;
  notes: number;
  /** The product catalogue, and orders over the customers who bought (src/db/seed-commerce.ts). */
  products: number;
  orders: number;
  /** Invoices with their lines and payments, and expenses (src/db/seed-finance.ts). */
  invoices: number;
  expenses: number;
}

/** About 10 members in 2 teams, 100 customers, 2,000 tasks, 1,000 work logs (seed 002's list). */
export const DEFAULT_VOLUME: SeedVolume = {
  managers: 1,
  reps: 4,
  teams: 2,
  customers: 100,
  deals: 150,
  projects: 20,
  tasks: 2_000,
  taskDependencies: 100,
  workLogs: 1_000,
  notes: 300,
  products: 40,
  orders: 600,
  invoices: 500,
  expenses: 150,
};

/** `--scale`: 50,000 customers with their contacts, deals and tasks, 60 members. */
export const SCALE_VOLUME: SeedVolume = {
  managers: 5,
  reps: 50,
  teams: 5,
  customers: 50_000,
  deals: 25_000,
  projects: 500,
  tasks: 50_000,
  taskDependencies: 1_000,
  workLogs: 5_000,
  notes: 5_000,
  products: 200,
  orders: 1_000_000,
  invoices: 20_000,
  expenses: 5_000,
};

export interface SeedOptions {
  volume?: Partial<SeedVolume>;
  /** PRNG seed: the same seed on the same starting state gives the same data (ids aside). */
  seed?: number;
  /** Add to an organization that already has customers (refused otherwise). */
  append?: boolean;
  /** The "present" the data is placed around (due dates before and after it, …). */
  now?: Date;
  log?: (message: string) => void;
}

export interface SeedSummary {
  organizationId: string;
  seed: number;
  members: number;
  teams: number;
  counts: Record<string, number>;
  durationMs: number;
}

export class SeedRefusedError extends Error {
  override name = "SeedRefusedError";
}

type Queryable = pg.Pool | pg.ClientBase;
type Row = Record<string, unknown>;

// ------------------------------------------------------------------------------------------------
// Randomness
// ------------------------------------------------------------------------------------------------
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class Random {
  readonly next: () => number;
  constructor(seed: number) {
    this.next = mulberry32(seed);
  }
  int(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1));
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)]!;
  }
  /** Picks by weight: [[value, weight], …]. */
  weighted<T>(pairs: readonly (readonly [T, number])[]): T {
    let total = 0;
    for (const [, w] of pairs) total += w;
    let r = this.next() * total;
    for (const [v, w] of pairs) {
      r -= w;
      if (r < 0) return v;
    }
    return pairs[pairs.length - 1]![0];
  }
  /** `n` distinct items (fewer when there are not enough). */
  sample<T>(items: readonly T[], n: number): T[] {
    const copy = [...items];
    const out: T[] = [];
    while (out.length < n && copy.length) out.push(copy.splice(Math.floor(this.next() * copy.length), 1)[0]!);
    return out;
  }
  time(from: number, to: number): number {
    return to <= from ? from : from + Math.floor(this.next() * (to - from));
  }
}

/** A picker over weighted items that stays fast for tens of thousands of items. */
function weightedPicker<T>(items: readonly T[], weight: (item: T) => number): (rnd: Random) => T {
  const cumulative: number[] = [];
  let total = 0;
  for (const item of items) cumulative.push((total += Math.max(weight(item), 0)));
  return (rnd) => {
    const r = rnd.next() * total;
    let lo = 0;
    let hi = cumulative.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cumulative[mid]! > r) hi = mid;
      else lo = mid + 1;
    }
    return items[lo]!;
  };
}

// ------------------------------------------------------------------------------------------------
// Vocabulary
// ------------------------------------------------------------------------------------------------
const FIRST_NAMES = [
  "Olivia", "Liam", "Emma", "Noah", "Ava", "Lucas", "Mia", "Ethan", "Sofia", "Mateo", "Amara", "Leo", "Chloe", "Omar",
  "Priya", "Jonas", "Hannah", "Diego", "Grace", "Felix", "Zoe", "Arjun", "Nora", "Samuel", "Lena", "Kenji", "Isabel",
  "Tariq", "Freya", "Marco", "Aisha", "Daniel", "Elena", "Victor", "Maya", "Hugo", "Ines", "Oscar", "Julia", "Ravi",
] as const;
const LAST_NAMES = [
  "Smith", "Johnson", "Garcia", "Muller", "Rossi", "Nguyen", "Okafor", "Kowalski", "Haddad", "Raman", "Lindqvist",
  "Moretti", "Dubois", "Tanaka", "Silva", "Brown", "Novak", "Jensen", "Patel", "Fischer", "Costa", "Schmidt", "Walsh",
  "Kim", "Lopez", "Andersen", "Murphy", "Ivanova", "Bakker", "Rahman", "Cohen", "Ortiz", "Kaya", "Mensah", "Evans",
  "Weber", "Santos", "Larsen", "Reyes", "Clarke",
] as const;
const COMPANY_PREFIX = [
  "Acme", "Northwind", "Bluepeak", "Brightline", "Cedar", "Copperleaf", "Crescent", "Evergreen", "Fairway", "Foxglove",
  "Granite", "Harbor", "Horizon", "Ironbark", "Juniper", "Keystone", "Lakeside", "Lumen", "Maple", "Meridian", "Nimbus",
  "Oakridge", "Orchid", "Pinnacle", "Quartz", "Redwood", "Riverbend", "Saffron", "Silverline", "Skyward", "Summit",
  "Tidewater", "Trailhead", "Vantage", "Velvet", "Willow", "Zenith", "Amber", "Beacon", "Coral",
] as const;
const COMPANY_CORE = [
  "Analytics", "Media", "Studios", "Logistics", "Foods", "Health", "Labs", "Digital", "Partners", "Ventures", "Outfitters",
  "Interactive", "Creative", "Publishing", "Systems", "Energy", "Hotels", "Apparel", "Design", "Robotics", "Financial",
  "Realty", "Academy", "Brewing", "Motors", "Pharma", "Networks", "Marketing", "Events", "Consulting",
] as const;
const COMPANY_SUFFIX = ["", "", "", "", " Inc.", " LLC", " Ltd", " Group", " Co.", " GmbH"] as const;
const INDUSTRIES = [
  "Marketing & Advertising", "Media & Publishing", "Software", "Retail", "E-commerce", "Healthcare", "Financial Services",
  "Hospitality", "Education", "Manufacturing", "Real Estate", "Consumer Goods", "Entertainment", "Nonprofit", "Logistics",
  "Telecommunications",
] as const;
const CITIES = [
  ["New York", "NY", "US"], ["San Francisco", "CA", "US"], ["Chicago", "IL", "US"], ["Austin", "TX", "US"],
  ["Seattle", "WA", "US"], ["Boston", "MA", "US"], ["Denver", "CO", "US"], ["Toronto", "ON", "CA"],
  ["London", "England", "GB"], ["Manchester", "England", "GB"], ["Berlin", "Berlin", "DE"], ["Munich", "Bavaria", "DE"],
  ["Paris", "Ile-de-France", "FR"], ["Amsterdam", "North Holland", "NL"], ["Madrid", "Madrid", "ES"],
  ["Dublin", "Leinster", "IE"], ["Sydney", "NSW", "AU"], ["Singapore", "Singapore", "SG"],
] as const;
const STREETS = [
  "Main Street", "Oak Avenue", "Market Street", "Harbor Road", "King Street", "Station Road", "Park Lane", "Elm Street",
  "High Street", "Mill Road", "Lake View Drive", "Church Street", "Bridge Street", "Queen Street", "Sunset Boulevard",
] as const;
const COMPANY_SIZES = [
  ["1-10", 1, 10], ["11-50", 11, 50], ["51-200", 51, 200], ["201-500", 201, 500], ["501-1000", 501, 1000],
  ["1001-5000", 1001, 5000], ["5000+", 5001, 40000],
] as const;
const LEAD_SOURCES = ["Website", "Referral", "Trade show", "Cold call", "LinkedIn", "Partner", "Webinar", "Advertising", "Newsletter"] as const;
const TITLES = [
  ["CEO", "Executive"], ["CMO", "Marketing"], ["Marketing Manager", "Marketing"], ["Head of Procurement", "Procurement"],
  ["IT Director", "IT"], ["Office Manager", "Operations"], ["CFO", "Finance"], ["Brand Manager", "Marketing"],
  ["Sales Director", "Sales"], ["HR Manager", "People"], ["Communications Lead", "Communications"],
  ["Digital Marketing Specialist", "Marketing"], ["Operations Director", "Operations"], ["Founder", "Executive"],
] as const;
const TAGS = [
  ["VIP", "#b91c1c"], ["Newsletter", "#2563eb"], ["Partner", "#7c3aed"], ["Renewal due", "#d97706"], ["Upsell", "#059669"],
  ["At risk", "#dc2626"], ["Trade show", "#0891b2"], ["Referral", "#65a30d"], ["Agency", "#db2777"], ["Enterprise", "#4b5563"],
] as const;
const PRODUCTS = [
  "Annual retainer", "Brand refresh", "Website redesign", "Media buy", "SEO programme", "Social media management",
  "Product launch campaign", "Video production", "Influencer campaign", "Content marketing package", "Analytics setup",
  "Email automation", "Trade show booth", "Podcast sponsorship", "PR retainer", "Market research study", "Loyalty programme",
] as const;
const LOST_REASONS = [
  "Chose a competitor", "Budget cut", "No decision", "Bad timing", "Price too high", "Went silent", "Project cancelled",
  "Built it in-house",
] as const;
const PROJECT_KINDS = [
  "Onboarding", "Brand refresh", "Website relaunch", "Spring campaign", "Autumn campaign", "Holiday campaign",
  "SEO programme", "Social media retainer", "Video series", "Event launch", "Analytics rollout", "Content calendar",
] as const;
const TOPICS = [
  "pricing", "the proposal", "the renewal", "campaign results", "the media plan", "next quarter's goals", "onboarding",
  "contract terms", "the creative brief", "the budget",
] as const;
const DOCS = ["proposal", "quote", "case study", "media kit", "contract", "campaign report", "creative brief", "timeline"] as const;
const TASK_TITLES: Record<string, readonly string[]> = {
  call: ["Call {contact} about {topic}", "Follow-up call with {customer}", "Intro call with {contact}"],
  email: ["Email {contact} the {doc}", "Send the {doc} to {customer}", "Answer {contact}'s questions about {topic}"],
  meeting: ["Meeting with {customer}: {topic}", "Quarterly review with {customer}", "Planning session on {topic}"],
  todo: ["Prepare the {doc} for {customer}", "Update {customer}'s account plan", "Review the {doc}"],
  follow_up: ["Follow up with {contact} on the {doc}", "Check in with {customer} about {topic}"],
  demo: ["Product demo for {customer}", "Show {topic} to {contact}"],
};
const INTERNAL_TASKS = ["Update the pipeline report", "Clean up stale leads", "Prepare the weekly sales meeting", "Review team targets"] as const;
const NOTE_SENTENCES = [
  "{contact} confirmed the budget for the {product}.",
  "Interested in {product}; send two case studies.",
  "Asked for a revised quote for {product}.",
  "Met at the trade show, good fit for {product}.",
  "Renewal call went well; they want to add {product}.",
  "Worried about the timeline, involve the account manager.",
  "Left a voicemail for {contact}.",
  "Invoice question resolved with their finance team.",
  "Decision expected by the end of the month.",
  "{contact} is moving to a new role; ask for an introduction to the successor.",
  "Competitor offered a lower price; focus on results from last quarter.",
  "Prefers email over calls.",
] as const;
const WORK = [
  "Prepared the proposal", "Client call", "Campaign setup", "Creative review", "Monthly reporting", "Account planning",
  "Travel to the client", "Workshop", "Copywriting", "Media buying", "Data analysis", "Quality check",
] as const;

const CUSTOMER_STATUSES = ["lead", "prospect", "customer", "churned"] as const;
const DAY = 86_400_000;

const fill = (template: string, values: Record<string, string>) => template.replace(/\{(\w+)\}/g, (_, k: string) => values[k] ?? k);
const slugify = (s: string) => s.toLowerCase().normalize("NFKD").replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "");
const iso = (t: number) => new Date(t).toISOString();
const day = (t: number) => new Date(t).toISOString().slice(0, 10);

// ------------------------------------------------------------------------------------------------
// Writing
// ------------------------------------------------------------------------------------------------
/**
 * Triggers whose work this generator does itself, set-based (see the header). A trigger missing
 * here (renamed, new) keeps firing; one missing from the database is skipped.
 */
const REPLACED_TRIGGERS: Record<string, readonly string[]> = {
  product_categories: ["_800_audit"],
  products: ["_120_defaults", "_800_audit"],
  customers: ["_150_custom_fields", "_160_search", "_300_status_history", "_300_status_history_insert", "_800_audit", "_800_audit_insert"],
  contacts: ["_140_first_primary", "_150_custom_fields", "_160_search", "_800_audit", "_800_audit_insert"],
  customer_tags: ["_800_audit"],
  contact_tags: ["_800_audit"],
  deals: ["_120_defaults", "_130_contact", "_150_custom_fields", "_160_search", "_300_stage_history", "_800_audit"],
  deal_tags: ["_800_audit"],
  projects: ["_120_completed", "_800_audit"],
  tasks: ["_120_workflow", "_800_audit"],
  task_dependencies: ["_800_audit"],
  work_logs: ["_300_project_hours", "_800_audit"],
  notes: ["_160_search", "_800_audit"],
};

/** Switched off while the order history is written (see the header), not replaced. */
const HISTORY_TRIGGERS: Record<string, readonly string[]> = {
  orders: ["_800_audit"],
  transactions: ["_800_audit"],
};

/** crm_private.tg_search_vector's vectors, over the json record `r`, with the configuration in $2. */
const SEARCH_VECTORS: Record<string, string> = {
  customers: `setweight(to_tsvector($2::regconfig, coalesce(r.name, '')), 'A')
    || setweight(to_tsvector('simple', coalesce(r.email::text, '') || ' ' || coalesce(r.phone, '')), 'B')
    || setweight(to_tsvector($2::regconfig, coalesce(r.industry, '') || ' ' || coalesce(r.website, '')), 'C')`,
  contacts: `setweight(to_tsvector($2::regconfig, r.first_name || ' ' || r.last_name), 'A')
    || setweight(to_tsvector('simple', coalesce(r.email::text, '') || ' ' || coalesce(r.phone, '') || ' ' || coalesce(r.mobile, '')), 'B')
    || setweight(to_tsvector($2::regconfig, coalesce(r.title, '') || ' ' || coalesce(r.department, '')), 'C')`,
  deals: `setweight(to_tsvector($2::regconfig, r.name), 'A') || setweight(to_tsvector($2::regconfig, coalesce(r.source, '')), 'C')`,
  notes: `to_tsvector($2::regconfig, r.content)`,
};
const CHUNK = 5_000;

/**
 * The audit rows crm_private.tg_audit writes for an INSERT, selected from `src` (the inserted rows):
 * every non-null column but the search vector and the timestamps as {"column": {"new": value}},
 * keyed by the id or, for rows without one, by their reference columns ("customer_id=…:tag_id=…");
 * actor and request of the session. The object is built as text and parsed once, which is faster
 * than jsonb_each/jsonb_object_agg and gives the same jsonb.
 */
function auditSelect(table: string, columns: string[], src: string): string {
  const diffed = columns.filter((c) => !["search_vector", "created_at", "updated_at"].includes(c));
  const changes = `('{' || concat_ws(',', ${diffed.map((c) => `'${JSON.stringify(c)}:{"new":' || to_json(${src}."${c}")::text || '}'`).join(", ")}) || '}')::jsonb`;
  const recordId = columns.includes("id")
    ? `${src}.id::text`
    : `coalesce((select string_agg(key || '=' || value, ':' order by key) from jsonb_each_text(to_jsonb(${src}))
                 where (key like '%\\_id' or key in ('permission_code')) and key <> 'organization_id' and value is not null), '')`;
  return `insert into crm.audit_log (organization_id, actor_id, table_name, record_id, operation, changes, request_id)
    select ${src}.organization_id, crm.current_user_id(), '${table}', ${recordId}, 'INSERT', ${changes}, crm_private.request_id()`;
}

/**
 * INSERT … SELECT FROM json_populate_recordset, in chunks. With `searchConfig`, the search vector
 * is computed in the same statement; with `audit`, the same statement also writes the audit rows
 * (auditSelect) from the inserted rows (data-modifying CTE).
 */
async function insertRows(client: pg.ClientBase, table: string, rows: Row[], opts: { audit: boolean; searchConfig?: string }): Promise<void> {
  if (!rows.length) return;
  const names = new Set<string>();
  for (const r of rows) for (const k in r) names.add(k);
  const cols = [...names].map((c) => `"${c}"`);
  const vector = opts.searchConfig && SEARCH_VECTORS[table];
  const insert = `insert into crm.${table} (${[...cols, ...(vector ? ["search_vector"] : [])].join(", ")})
    select ${[...cols.map((c) => `r.${c}`), ...(vector ? [vector] : [])].join(", ")}
      from json_populate_recordset(null::crm.${table}, $1::json) r`;
  let sql = insert;
  if (opts.audit) {
    // Every column but the search vector: serialising it only to leave it out would cost a third.
    const { rows: columns } = await client.query<{ name: string }>(
      `select attname as name from pg_attribute where attrelid = $1::regclass and attnum > 0 and not attisdropped
          and attname <> 'search_vector' order by attnum`,
      [`crm.${table}`],
    );
    const all = columns.map((c) => c.name);
    sql = `with ins as (${insert} returning ${all.map((c) => `"${c}"`).join(", ")}) ${auditSelect(table, all, "ins")} from ins`;
  }
  // The next chunk is serialised while the database works on the current one.
  let json = JSON.stringify(rows.slice(0, CHUNK));
  for (let i = 0; i < rows.length; i += CHUNK) {
    const running = client.query(sql, [json, ...(vector ? [opts.searchConfig] : [])]);
    json = i + CHUNK < rows.length ? JSON.stringify(rows.slice(i + CHUNK, i + 2 * CHUNK)) : "";
    await running;
  }
}

// ------------------------------------------------------------------------------------------------
// The generator
// ------------------------------------------------------------------------------------------------
interface Member {
  id: string;
  username: string;
  role: string;
}
interface Stage {
  id: string;
  name: string;
  position: number;
  probability: number;
  is_won: boolean;
  is_lost: boolean;
}
interface CustomerGen {
  row: Row;
  id: string;
  name: string;
  short: string;
  domain: string | null;
  status: string;
  owner: string;
  created: number;
  size: number;
  since: number;
  until: number;
  contacts: { id: string; first: string; created: number }[];
  deals: { id: string; won: boolean; created: number }[];
  projects: string[];
}

/**
 * Fills organization `organizationId` with demo CRM data in one transaction. Refuses an
 * organization that already has customers unless `append` is set.
 */
export async function seedDemoData(db: Queryable, organizationId: string, options: SeedOptions = {}): Promise<SeedSummary> {
  const started = Date.now();
  const vol: SeedVolume = { ...DEFAULT_VOLUME, ...options.volume };
  const seed = options.seed ?? 20_240_601;
  const now = (options.now ?? new Date()).getTime();
  const log = options.log ?? (() => undefined);
  const pool = "totalCount" in db ? (db as pg.Pool) : undefined;
  const client: pg.ClientBase = pool ? await pool.connect() : (db as pg.ClientBase);
  try {
    await client.query("begin");
    await client.query("select set_config('cairn.request_id', $1, true)", [`seed-demo:${seed}`]);
    // The json_populate_recordset chunks fit in memory instead of spilling to temporary files.
    await client.query("set local work_mem = '64MB'");
    // One seed at a time per organization; NO KEY UPDATE still lets other sessions' foreign key
    // checks on the organization (KEY SHARE) through.
    const org = (
      await client.query<{ id: string; slug: string; currency: string | null }>(
        "select id, slug::text, settings->>'currency' as currency from crm.organizations where id = $1 for no key update",
        [organizationId],
      )
    ).rows[0];
    if (!org) throw new SeedRefusedError(`No organization with id ${organizationId}.`);
    const existing = (await client.query<{ n: number }>("select count(*)::int as n from crm.customers where organization_id = $1", [org.id])).rows[0]!.n;
    if (existing > 0 && !options.append) {
      throw new SeedRefusedError(`Organization "${org.slug}" already has ${existing} customers; pass --append to add more.`);
    }
    // Appending continues the numbering (unique e-mail addresses) and draws different data.
    const rnd = new Random((seed ^ Math.imul(existing, 0x9e3779b1)) >>> 0);
    const orgId = org.id;

    // Members and teams ------------------------------------------------------------------------
    const members = await ensureStaff(client, org.id, org.slug, vol);
    const reps = members.filter((m) => m.role === "Sales Representative");
    const managers = members.filter((m) => m.role === "Sales Manager");
    const sellers = [...reps, ...managers];
    if (!sellers.length) throw new SeedRefusedError("The organization has no Sales Representative or Sales Manager to own records.");
    const teams = await ensureTeams(client, org.id, vol.teams, managers, reps);
    const pickOwner = weightedPicker(sellers, (m) => (m.role === "Sales Representative" ? 3 : 1));
    const pickManager = (r: Random) => (managers.length ? r.pick(managers) : r.pick(sellers)).id;

    // Reference data: tags, custom fields, the default pipeline ------------------------------
    await client.query(
      `insert into crm.tags (organization_id, name, color) select $1, t->>0, t->>1 from json_array_elements($2::json) t
       on conflict (organization_id, name) do nothing`,
      [orgId, JSON.stringify(TAGS)],
    );
    const tagIds = new Map(
      (await client.query<{ name: string; id: string }>("select name::text, id from crm.tags where organization_id = $1", [orgId])).rows.map((r) => [r.name, r.id]),
    );
    const fields = await ensureCustomFields(client, orgId);
    const pipeline = (
      await client.query<{ id: string }>("select id from crm.pipelines where organization_id = $1 order by is_default desc, created_at limit 1", [orgId])
    ).rows[0];
    if (!pipeline) throw new SeedRefusedError("The organization has no pipeline.");
    const stages = (
      await client.query<Stage>(
        "select id, name, position, probability, is_won, is_lost from crm.pipeline_stages where organization_id = $1 and pipeline_id = $2 order by position, name",
        [orgId, pipeline.id],
      )
    ).rows;
    const transitions = (
      await client.query<{ from_stage_id: string; to_stage_id: string }>(
        "select from_stage_id, to_stage_id from crm.pipeline_stage_transitions where organization_id = $1 and pipeline_id = $2",
        [orgId, pipeline.id],
      )
    ).rows;
    const pathTo = stagePaths(stages, transitions);
    const currency = org.currency && /^[A-Z]{3}$/.test(org.currency) ? org.currency : "USD";

    // Customers and their status history ------------------------------------------------------
    const customers: CustomerGen[] = [];
    const statusHistory: Row[] = [];
    const start = now - 730 * DAY;
    for (let i = 0; i < vol.customers; i++) {
      const n = existing + i + 1;
      const owner = pickOwner(rnd).id;
      const person = rnd.chance(0.3);
      const status = rnd.weighted([["lead", 35], ["prospect", 25], ["customer", 30], ["churned", 10]] as const);
      const created = start + Math.floor(((i + rnd.next()) / vol.customers) * 700 * DAY);
      const [city, region, country] = rnd.pick(CITIES);
      const address = {
        street: `${rnd.int(1, 2999)} ${rnd.pick(STREETS)}`,
        city,
        region,
        postal_code: String(rnd.int(10000, 99999)),
        country,
      };
      const source = rnd.pick(LEAD_SOURCES);
      const score = { lead: [5, 60], prospect: [30, 85], customer: [50, 100], churned: [0, 40] }[status];
      const first = rnd.pick(FIRST_NAMES);
      const last = rnd.pick(LAST_NAMES);
      let name: string;
      let short: string;
      let domain: string | null = null;
      let size = 1;
      const row: Row = { id: crypto.randomUUID(), organization_id: orgId };
      if (person) {
        name = short = `${first} ${last}`;
        Object.assign(row, {
          kind: "person",
          email: `${slugify(first)}.${slugify(last)}.${n}@example.net`,
          birth_date: day(Date.UTC(rnd.int(1950, 2003), rnd.int(0, 11), rnd.int(1, 28))),
          billing_address: address,
        });
      } else {
        short = `${rnd.pick(COMPANY_PREFIX)} ${rnd.pick(COMPANY_CORE)}`;
        name = short + rnd.pick(COMPANY_SUFFIX);
        domain = `${slugify(short)}-${n}.example.com`;
        const [sizeLabel, lo, hi] = rnd.weighted(COMPANY_SIZES.map((s, k) => [s, [18, 26, 22, 14, 9, 7, 4][k]!] as const));
        size = rnd.int(lo, hi);
        Object.assign(row, {
          kind: "company",
          email: `${rnd.pick(["info", "hello", "contact", "office"])}@${domain}`,
          industry: rnd.pick(INDUSTRIES),
          company_size: sizeLabel,
          employee_count: size,
          website: `https://www.${domain}`,
          annual_revenue: Math.round(size * rnd.int(40, 250)) * 1000,
          billing_address: address,
          shipping_address: rnd.chance(0.6) ? address : null,
        });
      }
      const customFields: Row = {};
      if (fields.segment) customFields.segment = person ? "Consumer" : size <= 50 ? "SMB" : size <= 1000 ? "Mid-Market" : "Enterprise";
      if (fields.renewal_date && status === "customer") customFields.renewal_date = day(now + rnd.int(10, 360) * DAY);
      if (fields.newsletter) customFields.newsletter = rnd.chance(0.4);
      // The status path: lead → prospect → customer → churned, as far as this customer got.
      const steps = CUSTOMER_STATUSES.slice(0, CUSTOMER_STATUSES.indexOf(status) + 1);
      const times = [created, ...steps.slice(1).map(() => rnd.time(created + DAY, now)).sort((a, b) => a - b)];
      steps.forEach((to, k) =>
        statusHistory.push({
          organization_id: orgId,
          customer_id: row.id,
          from_status: k ? steps[k - 1] : null,
          to_status: to,
          changed_by: owner,
          changed_at: iso(times[k]!),
        }),
      );
      const lastChange = iso(times[times.length - 1]!);
      Object.assign(row, {
        name,
        phone: `+1 555-${rnd.int(100, 999)}-${rnd.int(1000, 9999)}`,
        status,
        owner_id: owner,
        lead_source: source,
        lead_score: rnd.int(score[0]!, score[1]!),
        referred_by_id: source === "Referral" && customers.length ? rnd.pick(customers).id : null,
        contacted: status !== "lead" || rnd.chance(0.4),
        next_follow_up_at:
          status === "lead" || status === "prospect" ? iso(now + rnd.int(-10, 30) * DAY + rnd.int(8, 17) * 3_600_000)
          : status === "customer" && rnd.chance(0.3) ? iso(now + rnd.int(1, 60) * DAY)
          : null,
        custom_fields: customFields,
        created_by: owner,
        created_at: iso(created),
        updated_at: lastChange,
      });
      // Buying customers order from the day they became customers until they churned (or now).
      const since = status === "customer" || status === "churned" ? times[2]! : now;
      const until = status === "churned" ? times[3]! : now;
      customers.push({ row, id: row.id as string, name, short, domain, status, owner, created, size, since, until, contacts: [], deals: [], projects: [] });
    }

    // Commerce: who buys how much (the loyalty level follows), the catalogue, promotions -------------
    // (their own PRNG, so the rest of the data does not depend on the commerce volume).
    const crnd = new Random((seed ^ 0x5eed0c0d ^ Math.imul(existing, 0x9e3779b1)) >>> 0);
    const levelIds = (await client.query<{ id: string }>("select id from crm.customer_levels where organization_id = $1 order by rank", [orgId])).rows.map((r) => r.id);
    const commerceCustomers: CommerceCustomer[] = customers.map((c) => ({ id: c.id, owner: c.owner, status: c.status, since: c.since, until: c.until }));
    const commercePlan = planCommerce(commerceCustomers, vol.orders, levelIds, crnd.next);
    for (const c of customers) {
      const levelId = commercePlan.levels.get(c.id);
      if (levelId) Object.assign(c.row, { level_id: levelId, level_changed_at: c.row.created_at });
    }
    const catalogueCreator = managers[0]?.id ?? sellers[0]!.id;
    const { categories: productCategories, products } = existing > 0 ? { categories: [], products: [] } : catalogue(orgId, currency, vol.products, catalogueCreator, start, crnd.next);
    const promotions = existing > 0 ? [] : demoPromotions(orgId, currency, levelIds, catalogueCreator, now);

    // Contacts (the first of each customer is its primary contact, as the database would make it) -
    const contacts: Row[] = [];
    for (const c of customers) {
      const count = c.domain ? rnd.weighted([[1, 35], [2, 40], [3, 25]] as const) : 1;
      for (let k = 0; k < count; k++) {
        const personRow = !c.domain;
        const first = personRow ? c.name.split(" ")[0]! : rnd.pick(FIRST_NAMES);
        const last = personRow ? c.name.split(" ").slice(1).join(" ") : rnd.pick(LAST_NAMES);
        const [title, department] = rnd.pick(TITLES);
        const created = Math.min(c.created + rnd.int(0, 20) * DAY, now);
        const id = crypto.randomUUID();
        contacts.push({
          id,
          organization_id: orgId,
          customer_id: c.id,
          first_name: first,
          last_name: last,
          email: personRow ? c.row.email : `${slugify(first)}.${slugify(last)}${k ? k + 1 : ""}@${c.domain}`,
          phone: `+1 555-${rnd.int(100, 999)}-${rnd.int(1000, 9999)}`,
          mobile: rnd.chance(0.6) ? `+1 555-${rnd.int(100, 999)}-${rnd.int(1000, 9999)}` : null,
          title: personRow ? null : title,
          department: personRow ? null : department,
          status: rnd.weighted([["active", 90], ["inactive", 7], ["bounced", 3]] as const),
          is_primary: k === 0,
          social_profiles: rnd.chance(0.5) ? { linkedin: `https://www.linkedin.com/in/${slugify(first)}-${slugify(last)}-${rnd.int(1000, 9999)}` } : {},
          communication_preferences: { email: true, phone: rnd.chance(0.7), sms: rnd.chance(0.3), newsletter: rnd.chance(0.4) },
          custom_fields: {},
          created_at: iso(created),
          updated_at: iso(created),
        });
        c.contacts.push({ id, first, created });
      }
    }

    // Tags on customers, contacts -------------------------------------------------------------
    const tagList = TAGS.map(([name]) => tagIds.get(name)).filter((x): x is string => !!x);
    const customerTags: Row[] = [];
    for (const c of customers) {
      const n = rnd.weighted([[0, 40], [1, 35], [2, 18], [3, 7]] as const);
      for (const tag of rnd.sample(tagList, n)) customerTags.push({ organization_id: orgId, customer_id: c.id, tag_id: tag, created_at: c.row.updated_at });
    }
    const contactTags: Row[] = [];
    const contactTagChoices = ["Newsletter", "VIP", "Trade show"].map((n) => tagIds.get(n)).filter((x): x is string => !!x);
    if (contactTagChoices.length) {
      for (const ct of contacts) {
        if (rnd.chance(0.15)) contactTags.push({ organization_id: orgId, contact_id: ct.id, tag_id: rnd.pick(contactTagChoices), created_at: ct.created_at });
      }
    }

    // Deals and their stage history -----------------------------------------------------------
    const deals: Row[] = [];
    const stageHistory: Row[] = [];
    const dealTags: Row[] = [];
    const dealTagChoices = ["Upsell", "Enterprise", "Renewal due", "Referral"].map((n) => tagIds.get(n)).filter((x): x is string => !!x);
    // Won deals belong to customers (or former ones), open deals mostly to prospects.
    const dealCustomerWeights = {
      won: { lead: 0, prospect: 0.2, customer: 3, churned: 1 },
      lost: { lead: 0.3, prospect: 1, customer: 1, churned: 1.5 },
      open: { lead: 0.5, prospect: 2, customer: 1, churned: 0.1 },
    } as const;
    const dealCustomerPickers = Object.fromEntries(
      Object.entries(dealCustomerWeights).map(([k, w]) => {
        const eligible = customers.filter((c) => (w[c.status as keyof typeof w] ?? 0) > 0);
        return [k, weightedPicker(eligible.length ? eligible : customers, (c) => w[c.status as keyof typeof w] || 1)];
      }),
    ) as Record<keyof typeof dealCustomerWeights, (r: Random) => CustomerGen>;
    const stageWeights = stages.map((s) => [s, s.is_won ? 28 : s.is_lost ? 20 : 13] as const);
    if (customers.length && pathTo) {
      for (let i = 0; i < vol.deals; i++) {
        // Every stage gets deals; the rest follow the usual funnel shape.
        const target = i < stages.length ? stages[i]! : rnd.weighted(stageWeights);
        const path = pathTo(target, rnd);
        const final = path[path.length - 1]!;
        const c = dealCustomerPickers[final.is_won ? "won" : final.is_lost ? "lost" : "open"](rnd);
        const created = rnd.time(c.created + DAY, now - DAY);
        const owner = rnd.chance(0.85) ? c.owner : pickOwner(rnd).id;
        const id = crypto.randomUUID();
        // Moves happen at sorted random times between creation and now.
        const times = [created];
        const moves = Array.from({ length: path.length - 1 }, () => rnd.time(created + 3_600_000, now)).sort((a, b) => a - b);
        times.push(...moves);
        path.forEach((s, k) =>
          stageHistory.push({
            organization_id: orgId,
            deal_id: id,
            from_stage_id: k ? path[k - 1]!.id : null,
            to_stage_id: s.id,
            changed_by: owner,
            changed_at: iso(times[k]!),
          }),
        );
        const closedAt = times[times.length - 1]!;
        const closed = final.is_won || final.is_lost;
        const product = rnd.pick(PRODUCTS);
        const contact = c.contacts.length && rnd.chance(0.8) ? rnd.pick(c.contacts).id : null;
        const base = c.domain ? Math.max(2, Math.min(500, Math.round(Math.sqrt(c.size) * 4))) : 1;
        deals.push({
          id,
          organization_id: orgId,
          customer_id: c.id,
          contact_id: contact,
          name: `${c.short} – ${product}`,
          amount: rnd.int(base, base * 12) * 500,
          currency,
          pipeline_id: pipeline.id,
          stage_id: final.id,
          probability: final.probability,
          expected_close_date: closed ? day(closedAt + rnd.int(-10, 10) * DAY) : day(now + rnd.int(7, 120) * DAY),
          actual_close_date: closed ? day(closedAt) : null,
          lost_reason: final.is_lost ? rnd.pick(LOST_REASONS) : null,
          source: rnd.pick(LEAD_SOURCES),
          owner_id: owner,
          custom_fields: fields.contract_term ? { contract_term: rnd.weighted([["Monthly", 3], ["Annual", 5], ["Multi-year", 2]] as const) } : {},
          stage_changed_at: iso(closedAt),
          created_by: owner,
          created_at: iso(created),
          updated_at: iso(closedAt),
        });
        c.deals.push({ id, won: final.is_won, created });
        if (dealTagChoices.length && rnd.chance(0.2)) dealTags.push({ organization_id: orgId, deal_id: id, tag_id: rnd.pick(dealTagChoices), created_at: iso(created) });
      }
    }

    // Projects (actual hours are filled once the work logs are generated) ---------------------
    const projects: Row[] = [];
    const projectById = new Map<string, { row: Row; customer: CustomerGen; tasks: string[] }>();
    const projectCustomers = customers.filter((c) => c.status === "customer" || c.status === "churned");
    const pickProjectCustomer = weightedPicker(projectCustomers.length ? projectCustomers : customers, (c) => (c.status === "customer" ? 3 : 1));
    for (let i = 0; i < vol.projects && customers.length; i++) {
      const c = pickProjectCustomer(rnd);
      const status = rnd.weighted([["planned", 20], ["active", 40], ["on_hold", 10], ["completed", 25], ["cancelled", 5]] as const);
      const startAt = status === "planned" ? now + rnd.int(1, 60) * DAY : rnd.time(c.created + DAY, now - 14 * DAY);
      const due = startAt + rnd.int(14, 180) * DAY;
      const completed = status === "completed" ? Math.min(rnd.time(startAt + 7 * DAY, due + 14 * DAY), now) : null;
      const won = c.deals.filter((d) => d.won);
      const id = crypto.randomUUID();
      const row: Row = {
        id,
        organization_id: orgId,
        customer_id: c.id,
        deal_id: won.length && rnd.chance(0.6) ? rnd.pick(won).id : null,
        name: `${rnd.pick(PROJECT_KINDS)} – ${c.short}`,
        description: `${rnd.pick(PROJECT_KINDS)} for ${c.name}: ${rnd.pick(TOPICS)}, ${rnd.pick(TOPICS)} and reporting.`,
        status,
        priority: rnd.weighted([["low", 20], ["medium", 50], ["high", 25], ["urgent", 5]] as const),
        start_date: day(startAt),
        due_date: day(due),
        completed_at: completed === null ? null : iso(completed),
        estimated_hours: rnd.int(4, 80) * 5,
        actual_hours: 0,
        manager_id: rnd.chance(0.6) ? c.owner : pickManager(rnd),
        created_at: iso(Math.min(startAt, now) - rnd.int(1, 14) * DAY),
        updated_at: iso(Math.min(completed ?? startAt, now)),
      };
      projects.push(row);
      projectById.set(id, { row, customer: c, tasks: [] });
      c.projects.push(id);
    }

    // Tasks -------------------------------------------------------------------------------------
    const tasks: Row[] = [];
    const taskInfo: { id: string; customer: CustomerGen | null; assignee: string; project: string | null; created: number }[] = [];
    const pickTaskCustomer = weightedPicker(customers, (c) => ({ lead: 1, prospect: 1.5, customer: 1.5, churned: 0.3 })[c.status] ?? 1);
    const projectList = [...projectById.values()];
    // A few named recurring tasks (tasks:recur creates their occurrences), one on the month-end rule,
    // counted in the volume; fixed dates and people, no random draws.
    const named = recurringTaskRows(orgId, (managers[0] ?? sellers[0]!).id, now).slice(0, vol.tasks);
    tasks.push(...named);
    for (let i = 0; i < vol.tasks - named.length; i++) {
      let project: { row: Row; customer: CustomerGen; tasks: string[] } | null = null;
      let c: CustomerGen | null = null;
      if (projectList.length && rnd.chance(0.15)) {
        project = rnd.pick(projectList);
        c = project.customer;
      } else if (customers.length && rnd.chance(0.93)) {
        c = pickTaskCustomer(rnd);
      }
      const type = rnd.weighted([["call", 25], ["email", 25], ["meeting", 15], ["todo", 15], ["follow_up", 15], ["demo", 5]] as const);
      const status = rnd.weighted([["not_started", 30], ["in_progress", 18], ["under_review", 5], ["completed", 40], ["cancelled", 7]] as const);
      const created = c ? rnd.time(Math.max(c.created, now - 400 * DAY), now - DAY) : rnd.time(now - 200 * DAY, now - DAY);
      const closed = status === "completed" || status === "cancelled";
      const due = closed
        ? rnd.time(created + DAY, Math.max(now, created + 2 * DAY))
        : rnd.chance(0.25) ? rnd.time(Math.max(created, now - 30 * DAY), now) // overdue
        : now + rnd.int(1, 45) * DAY;
      const completed = status === "completed" ? Math.min(rnd.time(created + 3_600_000, due + 3 * DAY), now) : null;
      const contact = c && c.contacts.length && rnd.chance(0.5) ? rnd.pick(c.contacts) : null;
      const deal = c && c.deals.length && rnd.chance(0.35) ? rnd.pick(c.deals).id : null;
      const assignee = c && rnd.chance(0.75) ? c.owner : pickOwner(rnd).id;
      const values = {
        contact: contact ? contact.first : c ? "the customer" : "the team",
        customer: c ? c.short : "the team",
        topic: rnd.pick(TOPICS),
        doc: rnd.pick(DOCS),
      };
      const title = c ? fill(rnd.pick(TASK_TITLES[type]!), values) : rnd.pick(INTERNAL_TASKS);
      const recurring = !c && rnd.chance(0.3);
      const id = crypto.randomUUID();
      tasks.push({
        id,
        organization_id: orgId,
        type,
        title,
        description: rnd.chance(0.4) ? `Regarding ${values.topic}. Bring the ${values.doc}.` : "",
        status,
        priority: rnd.weighted([["low", 25], ["medium", 45], ["high", 22], ["urgent", 8]] as const),
        due_at: iso(due),
        completed_at: completed === null ? null : iso(completed),
        assignee_id: assignee,
        created_by: rnd.chance(0.5) ? assignee : pickManager(rnd),
        customer_id: c?.id ?? null,
        contact_id: contact?.id ?? null,
        deal_id: deal,
        project_id: project ? project.row.id : null,
        estimated_hours: rnd.chance(0.5) ? rnd.pick([0.25, 0.5, 1, 2, 4, 8]) : null,
        is_recurring: recurring,
        recurrence_interval: recurring ? rnd.pick(["7 days", "14 days", "1 mon"]) : null,
        created_at: iso(created),
        updated_at: iso(completed ?? created),
      });
      taskInfo.push({ id, customer: c, assignee, project: project ? (project.row.id as string) : null, created });
      project?.tasks.push(id);
    }

    // Task dependencies: within a project, a later task waits for an earlier one (never a cycle).
    const dependencies: Row[] = [];
    const seen = new Set<string>();
    const withSeveral = projectList.filter((p) => p.tasks.length >= 2);
    for (let i = 0, attempts = 0; i < vol.taskDependencies && withSeveral.length && attempts < vol.taskDependencies * 5; attempts++) {
      const p = rnd.pick(withSeveral);
      const a = rnd.int(0, p.tasks.length - 2);
      const b = rnd.int(a + 1, p.tasks.length - 1);
      const key = `${p.tasks[b]}:${p.tasks[a]}`;
      if (seen.has(key)) continue;
      seen.add(key);
      dependencies.push({ organization_id: orgId, task_id: p.tasks[b], depends_on_task_id: p.tasks[a] });
      i++;
    }

    // Work logs, and the projects' actual hours from them ---------------------------------------
    const workLogs: Row[] = [];
    const minutesByProject = new Map<string, number>();
    const tasksWithCustomer = taskInfo.filter((t) => t.customer);
    for (let i = 0; i < vol.workLogs && customers.length; i++) {
      let user: string;
      let c: CustomerGen;
      let task: string | null = null;
      let project: string | null = null;
      let from: number;
      if (tasksWithCustomer.length && rnd.chance(0.7)) {
        const t = rnd.pick(tasksWithCustomer);
        user = t.assignee;
        c = t.customer!;
        task = t.id;
        project = t.project;
        from = t.created;
      } else {
        c = pickTaskCustomer(rnd);
        user = rnd.chance(0.8) ? c.owner : pickOwner(rnd).id;
        project = c.projects.length && rnd.chance(0.4) ? rnd.pick(c.projects) : null;
        from = Math.max(c.created, now - 365 * DAY);
      }
      const minutes = rnd.pick([15, 15, 30, 30, 30, 45, 60, 60, 90, 120, 180, 240]);
      const at = iso(rnd.time(from, now));
      workLogs.push({
        id: crypto.randomUUID(),
        organization_id: orgId,
        user_id: user,
        customer_id: c.id,
        task_id: task,
        project_id: project,
        minutes,
        description: rnd.pick(WORK),
        logged_at: at,
        created_at: at,
        updated_at: at,
      });
      if (project) minutesByProject.set(project, (minutesByProject.get(project) ?? 0) + minutes);
    }
    for (const p of projects) p.actual_hours = Math.round(((minutesByProject.get(p.id as string) ?? 0) * 100) / 60) / 100;

    // Notes -------------------------------------------------------------------------------------
    const notes: Row[] = [];
    for (let i = 0; i < vol.notes && customers.length; i++) {
      const c = pickTaskCustomer(rnd);
      const contact = c.contacts.length && rnd.chance(0.25) ? rnd.pick(c.contacts) : null;
      const deal = c.deals.length && rnd.chance(0.25) ? rnd.pick(c.deals) : null;
      const project = c.projects.length && rnd.chance(0.15) ? rnd.pick(c.projects) : null;
      const values = { contact: contact?.first ?? c.contacts[0]?.first ?? c.short, product: rnd.pick(PRODUCTS).toLowerCase(), topic: rnd.pick(TOPICS) };
      const content = rnd
        .sample(NOTE_SENTENCES, rnd.int(1, 3))
        .map((s) => fill(s, values))
        .join(" ");
      const at = iso(rnd.time(Math.max(c.created, deal?.created ?? 0), now));
      notes.push({
        id: crypto.randomUUID(),
        organization_id: orgId,
        content,
        is_pinned: rnd.chance(0.05),
        author_id: rnd.chance(0.85) ? c.owner : pickManager(rnd),
        customer_id: c.id,
        contact_id: contact?.id ?? null,
        deal_id: deal?.id ?? null,
        project_id: project,
        created_at: at,
        updated_at: at,
      });
    }
    const generatedMs = Date.now() - started;

    // Write -------------------------------------------------------------------------------------
    const enabled = new Set(
      (
        await client.query<{ t: string }>(
          `select c.relname || '.' || tg.tgname as t from pg_trigger tg join pg_class c on c.oid = tg.tgrelid
            join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'crm' and not tg.tgisinternal and tg.tgenabled <> 'D'`,
        )
      ).rows.map((r) => r.t),
    );
    // Custom-field validation stays on for an entity with required fields (the values generated
    // here are valid by construction, but cannot know what a required field of the tenant needs).
    const required = new Set(
      (await client.query<{ entity: string }>("select distinct entity from crm.custom_field_definitions where organization_id = $1 and is_required", [orgId])).rows.map(
        (r) => `${r.entity}s`,
      ),
    );
    const disabled = Object.entries({ ...REPLACED_TRIGGERS, ...HISTORY_TRIGGERS })
      .flatMap(([t, names]) => names.map((g) => [t, g] as const))
      .filter(([t, g]) => enabled.has(`${t}.${g}`) && !(g === "_150_custom_fields" && required.has(t)));
    const off = (t: string, g: string) => disabled.some(([x, y]) => x === t && y === g);
    for (const [t, g] of disabled) await client.query(`alter table crm.${t} disable trigger ${g}`);
    const searchConfig = (await client.query<{ cfg: string }>("select crm_private.search_config($1)::text as cfg", [orgId])).rows[0]!.cfg;

    const write = async (table: string, rows: Row[]) => {
      const t0 = Date.now();
      await insertRows(client, table, rows, { audit: off(table, "_800_audit"), searchConfig: off(table, "_160_search") ? searchConfig : undefined });
      if (rows.length >= 1000) log(`${table}: ${rows.length} rows in ${Date.now() - t0} ms`);
    };
    await write("customers", customers.map((c) => c.row));
    await write("customer_status_history", statusHistory);
    await write("contacts", contacts);
    await write("customer_tags", customerTags);
    await write("contact_tags", contactTags);
    await write("deals", deals);
    await write("deal_stage_history", stageHistory);
    await write("deal_tags", dealTags);
    await write("projects", projects);
    await write("tasks", tasks);
    await write("task_dependencies", dependencies);
    await write("work_logs", workLogs);
    await write("notes", notes);
    await write("product_categories", productCategories);
    await write("products", products);
    await write("promotions", promotions);
    const history = await writeOrderHistory(client, { orgId, seed, now, currency, customers: commerceCustomers, plan: commercePlan, log });
    const finance = await writeFinanceHistory(client, { orgId, seed, now, currency, invoices: vol.invoices, expenses: vol.expenses, log });

    for (const [t, g] of disabled) await client.query(`alter table crm.${t} enable trigger ${g}`);
    await client.query("commit");

    const counts: Record<string, number> = {
      customers: customers.length,
      customerStatusHistory: statusHistory.length,
      contacts: contacts.length,
      customerTags: customerTags.length,
      contactTags: contactTags.length,
      deals: deals.length,
      dealStageHistory: stageHistory.length,
      dealTags: dealTags.length,
      projects: projects.length,
      tasks: tasks.length,
      taskDependencies: dependencies.length,
      workLogs: workLogs.length,
      notes: notes.length,
      productCategories: productCategories.length,
      products: products.length,
      promotions: promotions.length,
      ...history,
      ...finance,
    };
    // Fresh statistics where this run added a good part of a table (at least a tenth), so the first
    // queries on the new data get sensible plans; smaller additions are left to autovacuum.
    const added: Record<string, number> = {
      customers: customers.length,
      customer_status_history: statusHistory.length,
      contacts: contacts.length,
      deals: deals.length,
      deal_stage_history: stageHistory.length,
      tasks: tasks.length,
      work_logs: workLogs.length,
      notes: notes.length,
      products: products.length,
      orders: history.orders ?? 0,
      order_items: history.orderItems ?? 0,
      transactions: history.transactions ?? 0,
      loyalty_ledger: history.loyaltyLedger ?? 0,
      invoices: finance.invoices ?? 0,
      invoice_items: finance.invoiceItems ?? 0,
      invoice_payments: finance.invoicePayments ?? 0,
      expenses: finance.expenses ?? 0,
    };
    const { rows: sizes } = await client.query<{ name: string; tuples: number }>(
      "select relname::text as name, reltuples::float8 as tuples from pg_class where oid = any ($1::regclass[])",
      [Object.keys(added).map((t) => `crm.${t}`)],
    );
    const stale = sizes.filter((r) => r.tuples < 0 || (added[r.name] ?? 0) * 10 >= r.tuples).map((r) => `crm.${r.name}`);
    if (stale.length) await client.query(`analyze ${stale.join(", ")}`);
    // RFM scores and levels: the organization is scored as soon as a worker runs (the first npm start
    // does it within seconds); a database without the RFM module is left alone.
    await client.query(
      `select crm_private.enqueue_tenant_job('rfm:score', $1, '{"reason": "manual"}'::jsonb)
        where to_regprocedure('crm_jobs.score_rfm(jsonb)') is not null`,
      [orgId],
    );
    log(`generated in ${generatedMs} ms, written and committed in ${Date.now() - started - generatedMs} ms`);
    return { organizationId: orgId, seed, members: members.length, teams: teams, counts, durationMs: Date.now() - started };
  } catch (e) {
    await client.query("rollback").catch(() => undefined);
    throw e;
  } finally {
    if (pool) (client as pg.PoolClient).release();
  }
}

// ------------------------------------------------------------------------------------------------
// Members, teams, custom fields, stage paths
// ------------------------------------------------------------------------------------------------
const STAFF_MANAGERS = [["Nora", "Lindqvist"]] as const;
const STAFF_REPS = [["Omar", "Haddad"], ["Priya", "Raman"], ["Luca", "Moretti"], ["Grace", "Okafor"]] as const;
const TEAM_NAMES = ["Enterprise", "Mid-Market", "SMB", "Partnerships", "EMEA", "APAC", "Agencies", "Public Sector"] as const;

function staffName(i: number, role: "manager" | "rep"): readonly [string, string] {
  const fixed = role === "manager" ? STAFF_MANAGERS : STAFF_REPS;
  if (i < fixed.length) return fixed[i]!;
  // Past the named ones: every first × last name pair, managers and reps from different ends.
  const k = role === "manager" ? FIRST_NAMES.length * LAST_NAMES.length - 1 - i : i;
  return [FIRST_NAMES[k % FIRST_NAMES.length]!, LAST_NAMES[(k + Math.floor(k / FIRST_NAMES.length)) % LAST_NAMES.length]!];
}

/** Three recurring tasks with fixed titles, placed around `now`: weekly, fortnightly, and monthly from a month end. */
function recurringTaskRows(orgId: string, assignee: string, now: number): Row[] {
  const today = new Date(now);
  const at = (y: number, m: number, d: number, h: number) => new Date(Date.UTC(y, m, d, h)).toISOString();
  const y = today.getUTCFullYear();
  const m = today.getUTCMonth();
  const monday = new Date(Date.UTC(y, m, today.getUTCDate() - ((today.getUTCDay() + 6) % 7)));
  const lastOfPreviousMonth = new Date(Date.UTC(y, m, 0));
  const row = (title: string, type: string, every: string, created: string, due: string, hours: number | null): Row => ({
    id: crypto.randomUUID(),
    organization_id: orgId,
    type,
    title,
    description: "Repeats on its own: the daily tasks:recur job creates the next occurrence.",
    status: "not_started",
    priority: "medium",
    due_at: due,
    completed_at: null,
    assignee_id: assignee,
    created_by: assignee,
    customer_id: null,
    contact_id: null,
    deal_id: null,
    project_id: null,
    estimated_hours: hours,
    is_recurring: true,
    recurrence_interval: every,
    created_at: created,
    updated_at: created,
  });
  const mondayAt = (days: number, h: number) => at(monday.getUTCFullYear(), monday.getUTCMonth(), monday.getUTCDate() + days, h);
  const monthEnd = (h: number) => at(lastOfPreviousMonth.getUTCFullYear(), lastOfPreviousMonth.getUTCMonth(), lastOfPreviousMonth.getUTCDate(), h);
  return [
    row("Weekly pipeline review", "meeting", "7 days", mondayAt(-7, 7), mondayAt(-7, 9), 1),
    row("Fortnightly backlog grooming", "todo", "14 days", mondayAt(-3, 7), mondayAt(-3, 14), 2),
    row("Month-end revenue report", "todo", "1 mon", monthEnd(6), monthEnd(17), 3),
  ];
}

/** Adds the volume's managers and representatives (users without a password) and returns every active member. */
async function ensureStaff(client: pg.ClientBase, orgId: string, slug: string, vol: SeedVolume): Promise<Member[]> {
  const prefix = slug.slice(0, 40);
  const staff: Row[] = [];
  const add = (i: number, role: "manager" | "rep") => {
    const [first, last] = staffName(i, role);
    const local = `${slugify(first)}.${slugify(last)}`;
    staff.push({
      username: `${prefix}-${local}`.slice(0, 64),
      email: `${local}@${slug}.cairn.test`,
      full_name: `${first} ${last}`,
      role: role === "manager" ? "Sales Manager" : "Sales Representative",
    });
  };
  for (let i = 0; i < vol.managers; i++) add(i, "manager");
  for (let i = 0; i < vol.reps; i++) add(i, "rep");
  if (staff.length) {
    // A username or address already taken (by anyone else) is skipped: only users this generator
    // made for this organization, recognised by both, become members.
    await client.query(
      `insert into crm.users (username, email, full_name, email_confirmed_at)
       select username, email, full_name, now() from json_to_recordset($1::json) as s (username text, email text, full_name text)
       on conflict do nothing`,
      [JSON.stringify(staff)],
    );
    await client.query(
      `insert into crm.organization_memberships (organization_id, user_id, role_id)
       select $1, u.id, r.id from json_to_recordset($2::json) as s (username text, email text, role text)
         join crm.users u on u.username = s.username::citext and u.email = s.email::citext
         join crm.roles r on r.organization_id = $1 and r.name = s.role::citext
       on conflict on constraint organization_memberships_user_unique do nothing`,
      [orgId, JSON.stringify(staff)],
    );
  }
  return (
    await client.query<Member>(
      `select m.user_id as id, u.username::text as username, r.name::text as role
         from crm.organization_memberships m join crm.users u on u.id = m.user_id join crm.roles r on r.id = m.role_id
        where m.organization_id = $1 and m.is_active and u.is_active and u.deleted_at is null
        order by m.created_at, u.username`,
      [orgId],
    )
  ).rows;
}

/** Teams led by the managers, the representatives spread over them. Returns the number of teams. */
async function ensureTeams(client: pg.ClientBase, orgId: string, count: number, managers: Member[], reps: Member[]): Promise<number> {
  const names = Array.from({ length: count }, (_, i) => TEAM_NAMES[i % TEAM_NAMES.length]! + (i >= TEAM_NAMES.length ? ` ${Math.floor(i / TEAM_NAMES.length) + 1}` : ""));
  if (!names.length) return 0;
  await client.query(
    `insert into crm.teams (organization_id, name, description)
     select $1, n, n || ' sales team' from unnest($2::text[]) n on conflict (organization_id, name) do nothing`,
    [orgId, names],
  );
  const ids = new Map(
    (await client.query<{ name: string; id: string }>("select name::text, id from crm.teams where organization_id = $1 and name = any ($2::citext[])", [orgId, names])).rows.map(
      (r) => [r.name, r.id],
    ),
  );
  const members: Row[] = [];
  names.forEach((name, i) => {
    const lead = managers[i % Math.max(managers.length, 1)];
    if (lead) members.push({ team_id: ids.get(name), user_id: lead.id, is_lead: true });
  });
  reps.forEach((rep, i) => members.push({ team_id: ids.get(names[i % names.length]!), user_id: rep.id, is_lead: false }));
  await client.query(
    `insert into crm.team_members (organization_id, team_id, user_id, is_lead)
     select $1, team_id, user_id, is_lead from json_to_recordset($2::json) as m (team_id uuid, user_id uuid, is_lead boolean)
     on conflict do nothing`,
    [orgId, JSON.stringify(members)],
  );
  return names.length;
}

/** Defines the demo's custom fields unless the keys exist; returns which ones can be filled. */
async function ensureCustomFields(client: pg.ClientBase, orgId: string): Promise<Record<string, boolean>> {
  const defs = [
    { entity: "customer", key: "segment", label: "Segment", field_type: "select", options: ["Consumer", "SMB", "Mid-Market", "Enterprise"], position: 1 },
    { entity: "customer", key: "renewal_date", label: "Renewal date", field_type: "date", options: [], position: 2 },
    { entity: "customer", key: "newsletter", label: "Newsletter opt-in", field_type: "boolean", options: [], position: 3 },
    { entity: "deal", key: "contract_term", label: "Contract term", field_type: "select", options: ["Monthly", "Annual", "Multi-year"], position: 1 },
  ];
  await client.query(
    `insert into crm.custom_field_definitions (organization_id, entity, key, label, field_type, options, position)
     select $1, entity, key, label, field_type, options, position
       from json_to_recordset($2::json) as d (entity text, key text, label text, field_type text, options jsonb, position int)
     on conflict on constraint custom_field_definitions_key_unique do nothing`,
    [orgId, JSON.stringify(defs)],
  );
  const { rows } = await client.query<{ key: string; field_type: string; options: unknown[] }>(
    "select key, field_type, options from crm.custom_field_definitions where organization_id = $1",
    [orgId],
  );
  const usable: Record<string, boolean> = {};
  for (const d of defs) {
    const have = rows.find((r) => r.key === d.key && r.field_type === d.field_type);
    usable[d.key] = !!have && d.options.every((o) => have.options.includes(o));
  }
  return usable;
}

/**
 * How a deal reaches each stage, starting in the first open stage: through the open stages in order
 * (closing from one of them) when the pipeline allows any move, otherwise along the allowed
 * transitions (shortest path; a stage that cannot be reached is replaced by the first stage).
 */
function stagePaths(stages: Stage[], transitions: { from_stage_id: string; to_stage_id: string }[]): ((target: Stage, rnd: Random) => Stage[]) | null {
  const open = stages.filter((s) => !s.is_won && !s.is_lost);
  const first = open[0];
  if (!first) return null;
  if (!transitions.length) {
    return (target, rnd) => {
      if (!target.is_won && !target.is_lost) return open.slice(0, open.indexOf(target) + 1);
      // Won deals mostly went through every open stage; lost ones dropped out anywhere.
      const last = target.is_won && rnd.chance(0.7) ? open.length - 1 : rnd.int(0, open.length - 1);
      return [...open.slice(0, last + 1), target];
    };
  }
  const next = new Map<string, string[]>();
  for (const t of transitions) next.set(t.from_stage_id, [...(next.get(t.from_stage_id) ?? []), t.to_stage_id]);
  const byId = new Map(stages.map((s) => [s.id, s]));
  const paths = new Map<string, Stage[]>([[first.id, [first]]]);
  const queue = [first.id];
  while (queue.length) {
    const id = queue.shift()!;
    for (const to of next.get(id) ?? []) {
      if (paths.has(to) || !byId.has(to)) continue;
      paths.set(to, [...paths.get(id)!, byId.get(to)!]);
      queue.push(to);
    }
  }
  return (target) => paths.get(target.id) ?? [first];
}

/**
 * After a bulk load: fold the GIN indexes' pending lists into the indexes and refresh the planner's
 * statistics. Until autovacuum does it, searches scan the pending lists row by row (measured: a
 * search at 50,000 customers took ~400 ms right after seeding, ~30 ms after this).
 */
export async function settleAfterBulkLoad(db: Queryable): Promise<void> {
  await db.query(
    "vacuum (analyze) crm.customers, crm.contacts, crm.deals, crm.notes, crm.tasks, crm.work_logs, crm.projects, crm.audit_log, " +
      "crm.orders, crm.order_items, crm.transactions, crm.loyalty_ledger",
  );
}
