// The labelled data set of `npm run ai:evaluate`: an organization's history generated from a
// documented process (docs/ai.md, "How the quality figures are made"), written into a scratch
// database so the evaluation reads it through the same SQL feature function as real scoring.
//
// Each lead has a hidden intent q ~ N(0, 1) and a firmographic fit f (industry, lead source, size,
// plus noise). Its outcome is drawn: converts with probability σ(−0.3 + 4.0·q + 1.5·f), so the label
// is random given everything observable. What the CRM sees are noisy traces of q and f before the
// outcome: tasks, notes and hours of work (Poisson counts whose rate grows with q, times a random
// factor), how recent they are, whether it was qualified, how far a deal got, how complete the
// profile is; no single one of them decides the label.
import type pg from "pg";

/** mulberry32: small, seedable, good enough for simulation. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const DAY = 86_400_000;
const sigmoid = (z: number) => 1 / (1 + Math.exp(-z));

const INDUSTRIES: [string, number][] = [
  ["Software", 0.5], ["Healthcare", 0.3], ["Finance", 0.2], ["Manufacturing", 0], ["Retail", 0], ["Education", -0.2], ["Logistics", -0.3], ["Hospitality", -0.5],
];
const SOURCES: [string, number, number][] = [
  ["referral", 0.15, 0.8], ["event", 0.2, 0.3], ["web", 0.4, 0], ["outbound", 0.25, -0.4],
];
const SIZES = ["1-10", "11-50", "51-200", "201-500", "501-1000", "1001-5000", "5000+"];
const SIZE_WEIGHTS = [20, 25, 22, 14, 9, 6, 4];

export interface SyntheticOptions {
  customers: number;
  seed: number;
  now?: Date;
}

export interface SyntheticSummary {
  customers: number;
  labelled: number;
  converted: number;
  tasks: number;
  notes: number;
  workLogs: number;
  deals: number;
  orders: number;
}

/**
 * Writes the synthetic history into organization `org` (a fresh one) through `client`, a superuser
 * connection: triggers and foreign-key checks are off for the load (session_replication_role), so
 * the history keeps its own timestamps; every row is still one the schema accepts.
 */
export async function generateSyntheticHistory(client: pg.ClientBase, org: string, opts: SyntheticOptions): Promise<SyntheticSummary> {
  const rnd = prng(opts.seed);
  const now = (opts.now ?? new Date()).getTime();
  const uniform = (a: number, b: number) => a + (b - a) * rnd();
  const normal = () => Math.sqrt(-2 * Math.log(1 - rnd())) * Math.cos(2 * Math.PI * rnd());
  const poisson = (lambda: number) => {
    const l = Math.exp(-lambda);
    let k = 0;
    let p = 1;
    do {
      k++;
      p *= rnd();
    } while (p > l && k < 200);
    return k - 1;
  };
  const pick = <T>(items: T[], weights: number[]) => {
    let r = rnd() * weights.reduce((a, b) => a + b, 0);
    for (let i = 0; i < items.length; i++) if ((r -= weights[i]!) <= 0) return items[i]!;
    return items[items.length - 1]!;
  };
  const uuid = () => {
    const h = Array.from({ length: 32 }, () => Math.floor(rnd() * 16).toString(16)).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-${"89ab"[Math.floor(rnd() * 4)]}${h.slice(17, 20)}-${h.slice(20)}`;
  };
  const iso = (t: number) => new Date(t).toISOString();

  const stages = (await client.query<{ id: string; probability: number; is_won: boolean; is_lost: boolean; pipeline_id: string }>(
    `select s.id, s.probability, s.is_won, s.is_lost, s.pipeline_id from crm.pipeline_stages s join crm.pipelines p on p.id = s.pipeline_id
      where s.organization_id = $1 and p.is_default order by s.position`, [org])).rows;
  const open = stages.filter((s) => !s.is_won && !s.is_lost);
  const won = stages.find((s) => s.is_won)!;
  const lost = stages.find((s) => s.is_lost)!;
  const member = (await client.query<{ id: string }>(
    `with u as (insert into crm.users (username, full_name) values ('synthetic-rep-' || substr(md5($1::text), 1, 8), 'Synthetic Rep') returning id),
          m as (insert into crm.organization_memberships (organization_id, user_id, role_id, is_active)
                select $1::uuid, u.id, (select id from crm.roles where organization_id = $1::uuid and name = 'Sales Representative'), true from u returning user_id)
     select user_id as id from m`, [org])).rows[0]!.id;

  const customers: unknown[][] = [];
  const history: unknown[][] = [];
  const contacts: unknown[][] = [];
  const deals: unknown[][] = [];
  const dealHistory: unknown[][] = [];
  const tasks: unknown[][] = [];
  const notes: unknown[][] = [];
  const workLogs: unknown[][] = [];
  const orders: unknown[][] = [];
  let labelled = 0;
  let converted = 0;
  let orderNo = 0;

  const NOTE_GOOD = ["Very interested in the demo", "Happy with the proposal", "Keen to move ahead, budget approved", "Great call, they liked the pricing", "Ready to sign after legal review"];
  const NOTE_BAD = ["Not convinced yet", "Concerned about the price", "Slow to answer, no budget this year", "Evaluating a competitor", "Had issues with the trial"];

  for (let i = 0; i < opts.customers; i++) {
    const id = uuid();
    const q = normal();
    const [industry, eInd] = INDUSTRIES[Math.floor(rnd() * INDUSTRIES.length)]!;
    const [source, , eSrc] = pick(SOURCES, SOURCES.map((s) => s[1]));
    const company = rnd() < 0.85;
    const sizeRank = company ? SIZES.indexOf(pick(SIZES, SIZE_WEIGHTS)) + 1 : 0;
    const f = eInd + eSrc + (company ? 0.12 * (sizeRank - 3.5) : -0.2) + 0.3 * normal();
    const converts = rnd() < sigmoid(-0.3 + 4.0 * q + 1.5 * f);
    const created = now - uniform(30, 730) * DAY;
    const outcomeAt = created + uniform(20, 240) * DAY;
    const resolved = outcomeAt < now - DAY;
    const end = resolved ? outcomeAt : now; // what the CRM has seen so far
    if (resolved) {
      labelled++;
      if (converts) converted++;
    }
    const before = (maxDays: number) => {
      // An activity's time before `end`: recent for keen leads (q high), spread out otherwise.
      const d = maxDays * Math.pow(rnd(), Math.exp(0.5 * q + 0.3 * normal()));
      return Math.max(created, end - d * DAY - uniform(0, 3_600_000));
    };
    const email = rnd() < sigmoid(1.2 + 0.5 * q) ? `lead${i}@example.test` : null;
    const phone = rnd() < sigmoid(0.3 + 0.5 * q) ? `+1 555 ${String(1000 + (i % 9000))}` : null;
    const website = company && rnd() < sigmoid(0.5 + 0.3 * f) ? `https://lead${i}.example` : null;
    const employees = company ? Math.round([5, 30, 120, 350, 750, 2500, 8000][sizeRank - 1]! * uniform(0.6, 1.4)) : null;
    const revenue = company && rnd() < 0.6 ? Math.round(employees! * uniform(50_000, 200_000)) : null;

    // Status path: lead → (prospect) → customer/churned at the outcome.
    let status = "lead";
    history.push([org, id, null, "lead", iso(created)]);
    if (rnd() < sigmoid(0.3 + 1.1 * q)) {
      const at = Math.min(end - DAY, created + uniform(2, 60) * DAY);
      if (at > created) {
        history.push([org, id, "lead", "prospect", iso(at)]);
        status = "prospect";
      }
    }
    // A deal, and how far it got before the outcome.
    let dealId: string | null = null;
    if (rnd() < sigmoid(0.2 + 1.0 * q + 0.3 * f)) {
      dealId = uuid();
      const dealCreated = Math.max(created, end - uniform(10, 90) * DAY);
      const reached = Math.max(0, Math.min(open.length - 1, Math.round(0.8 + 1.3 * q + 0.7 * normal())));
      const amount = Math.round(Math.exp(8.5 + 0.8 * normal() + 0.2 * sizeRank));
      let t = dealCreated;
      let from: string | null = null;
      for (let s = 0; s <= reached; s++) {
        dealHistory.push([org, dealId, from, open[s]!.id, iso(t)]);
        from = open[s]!.id;
        t = t + (end - t) * uniform(0.1, 0.5);
      }
      let stage = open[reached]!;
      let closed: string | null = null;
      if (resolved) {
        stage = converts ? won : lost;
        dealHistory.push([org, dealId, from, stage.id, iso(outcomeAt)]);
        closed = iso(outcomeAt).slice(0, 10);
      }
      deals.push([dealId, org, id, `Deal ${i}`, amount, stages[0]!.pipeline_id, stage.id, stage.probability, iso(dealCreated),
        iso(resolved ? outcomeAt : t), closed, stage.is_lost ? "Went elsewhere" : null, member]);
    }
    if (resolved) {
      if (converts) {
        history.push([org, id, status, "customer", iso(outcomeAt + (dealId ? 3_600_000 : 0))]);
        status = "customer";
      } else if (!dealId || rnd() < 0.5) {
        history.push([org, id, status, "churned", iso(outcomeAt)]);
        status = "churned";
      }
    }
    // Activity in the 90 days before the outcome (or before now, for open leads).
    const intensity = Math.exp(0.7 * q + 0.15 * f + 0.3 * normal());
    for (let k = poisson(3 * intensity); k > 0; k--) {
      const at = before(90);
      const done = rnd() < sigmoid(0.5 + 0.6 * q);
      const doneAt = done ? Math.min(end - 60_000, at + uniform(0, 10) * DAY) : null;
      tasks.push([org, pick(["call", "email", "meeting", "follow_up", "demo"], [3, 3, 2, 2, 1]), `Task ${k} for lead ${i}`,
        doneAt ? "completed" : "not_started", id, iso(at), doneAt ? iso(doneAt) : null, iso(at + 3 * DAY), member]);
    }
    for (let k = poisson(1.5 * intensity); k > 0; k--) {
      const good = rnd() < sigmoid(0.8 * q);
      const texts = good ? NOTE_GOOD : NOTE_BAD;
      notes.push([org, texts[Math.floor(rnd() * texts.length)]!, id, iso(before(90)), member]);
    }
    for (let k = poisson(1.2 * intensity); k > 0; k--) {
      workLogs.push([org, member, id, Math.round(uniform(15, 180)), iso(before(90))]);
    }
    // A primary contact, for some.
    if (rnd() < sigmoid(0.4 + 0.5 * q)) {
      contacts.push([org, id, `Contact${i}`, "Lead", email ? `contact${i}@example.test` : null, true, iso(Math.min(end - 60_000, created + uniform(0, 10) * DAY))]);
    }
    // Repeat business before the outcome for a few; orders after a conversion for converters.
    const orderAt: number[] = [];
    if (rnd() < 0.08 + 0.04 * (q > 0 ? 1 : 0)) for (let k = 1 + Math.floor(rnd() * 3); k > 0; k--) orderAt.push(Math.max(created, end - uniform(1, 365) * DAY));
    if (resolved && converts) for (let k = 1 + Math.floor(rnd() * 4); k > 0; k--) {
      const at = outcomeAt + uniform(1, 120) * DAY;
      if (at < now) orderAt.push(at);
    }
    for (const at of orderAt) {
      const amount = Math.round(Math.exp(6 + 0.7 * normal()) * 100) / 100;
      orderNo++;
      orders.push([org, `ORD-SYN-${String(orderNo).padStart(6, "0")}`, id, amount, iso(at)]);
    }
    customers.push([id, org, company ? "company" : "person", `Lead ${i}`, email, phone, status, industry, company ? SIZES[sizeRank - 1] : null,
      website, employees, revenue, source, iso(created), member]);
  }

  await client.query("set session_replication_role = replica");
  try {
    const cols = (rows: unknown[][], i: number) => rows.map((r) => r[i]);
    const load = async (sql: string, rows: unknown[][], width: number) => {
      for (let s = 0; s < rows.length; s += 20_000) {
        const chunk = rows.slice(s, s + 20_000);
        await client.query(sql, Array.from({ length: width }, (_, i) => cols(chunk, i)));
      }
    };
    await load(`insert into crm.customers (id, organization_id, kind, name, email, phone, status, industry, company_size, website, employee_count,
                                            annual_revenue, lead_source, created_at, updated_at, owner_id, created_by)
                select id, org, kind, name, email, phone, status, industry, size, website, emp, rev, src, created, created, owner, owner
                  from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::citext[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                              $11::int[], $12::numeric[], $13::text[], $14::timestamptz[], $15::uuid[])
                       as x (id, org, kind, name, email, phone, status, industry, size, website, emp, rev, src, created, owner)`, customers, 15);
    await load(`insert into crm.customer_status_history (organization_id, customer_id, from_status, to_status, changed_at)
                select * from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[])`, history, 5);
    await load(`insert into crm.contacts (organization_id, customer_id, first_name, last_name, email, is_primary, created_at, updated_at)
                select org, c, fn, ln, em, p, at, at from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::citext[], $6::boolean[], $7::timestamptz[])
                       as x (org, c, fn, ln, em, p, at)`, contacts, 7);
    await load(`insert into crm.deals (id, organization_id, customer_id, name, amount, currency, pipeline_id, stage_id, probability, created_at,
                                        stage_changed_at, actual_close_date, lost_reason, owner_id, created_by, updated_at)
                select id, org, c, name, amount, 'USD', p, s, prob, created, changed, closed::date, lost, owner, owner, changed
                  from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::numeric[], $6::uuid[], $7::uuid[], $8::int[], $9::timestamptz[],
                              $10::timestamptz[], $11::text[], $12::text[], $13::uuid[])
                       as x (id, org, c, name, amount, p, s, prob, created, changed, closed, lost, owner)`, deals, 13);
    await load(`insert into crm.deal_stage_history (organization_id, deal_id, from_stage_id, to_stage_id, changed_at)
                select * from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::timestamptz[])`, dealHistory, 5);
    await load(`insert into crm.tasks (organization_id, type, title, status, customer_id, created_at, completed_at, due_at, assignee_id, created_by, updated_at)
                select org, type, title, status, c, created, done, due, who, who, created
                  from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[], $6::timestamptz[], $7::timestamptz[], $8::timestamptz[], $9::uuid[])
                       as x (org, type, title, status, c, created, done, due, who)`, tasks, 9);
    await load(`insert into crm.notes (organization_id, content, customer_id, created_at, updated_at, author_id)
                select org, content, c, at, at, who from unnest($1::uuid[], $2::text[], $3::uuid[], $4::timestamptz[], $5::uuid[]) as x (org, content, c, at, who)`, notes, 5);
    await load(`insert into crm.work_logs (organization_id, user_id, customer_id, minutes, logged_at, created_at, updated_at)
                select org, who, c, minutes, at, at, at from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::int[], $5::timestamptz[]) as x (org, who, c, minutes, at)`, workLogs, 5);
    await load(`insert into crm.orders (organization_id, order_number, customer_id, status, currency, subtotal, final_amount, paid_amount, ordered_at, paid_at, created_at, updated_at)
                select org, num, c, 'paid', 'USD', amount, amount, amount, at, at, at, at
                  from unnest($1::uuid[], $2::text[], $3::uuid[], $4::numeric[], $5::timestamptz[]) as x (org, num, c, amount, at)`, orders, 5);
  } finally {
    await client.query("set session_replication_role = default");
  }
  await client.query("analyze crm.customers, crm.customer_status_history, crm.deals, crm.deal_stage_history, crm.tasks, crm.notes, crm.work_logs, crm.orders, crm.contacts");
  return { customers: customers.length, labelled, converted, tasks: tasks.length, notes: notes.length, workLogs: workLogs.length, deals: deals.length, orders: orders.length };
}
