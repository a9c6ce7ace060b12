// The main API paths beside their floor: each case as a GraphQL request over HTTP (autocannon) and as
// one hand-written SQL statement computing the same JSON, run the way the API runs it (same role,
// same claims and settings, same session check, same transaction wrapper), at each concurrency, as a
// Sales Manager (sees everything) and a Sales Representative (row-level security narrows). Also: the
// statements PostgreSQL executes per GraphQL request, the server's RSS before and after, and what
// distinct documents cost (planning time and memory).
import crypto from "node:crypto";
import { CLIENTS, SECONDS, countersSoFar, fmt, httpLoad, rssMb, settingsFor, sqlLoad, type BenchContext } from "./context.ts";

interface Case {
  name: string;
  query: string;
  variables: (ctx: BenchContext) => Record<string, unknown>;
  sql: string;
  params: (ctx: BenchContext) => unknown[];
}

const CUSTOMER_JSON = "json_build_object('rowId', c.id, 'name', c.name, 'status', c.status, 'email', c.email)";

export const CASES: Case[] = [
  {
    name: "flat list (20 customers)",
    query: `{ customers(first: 20, orderBy: NAME_ASC) { nodes { rowId name status email } } }`,
    variables: () => ({}),
    sql: `select json_build_object('data', json_build_object('customers', json_build_object('nodes', coalesce(json_agg(${CUSTOMER_JSON} order by c.name, c.id), '[]'))))
            from (select * from crm.customers where deleted_at is null order by name, id limit 20) c`,
    params: () => [],
  },
  {
    name: "nested list (owner, 5 contacts, 5 deals)",
    query: `{ customers(first: 20, orderBy: NAME_ASC) { nodes { rowId name status owner { user { username } }
              contacts(first: 5) { nodes { firstName lastName email } }
              deals(first: 5) { nodes { name amount stage { name } } } } } }`,
    variables: () => ({}),
    sql: `select json_build_object('data', json_build_object('customers', json_build_object('nodes', coalesce(json_agg(
              json_build_object('rowId', c.id, 'name', c.name, 'status', c.status,
                'owner', (select json_build_object('user', json_build_object('username', u.username)) from crm.organization_memberships m join crm.users u on u.id = m.user_id
                           where m.organization_id = c.organization_id and m.user_id = c.owner_id),
                'contacts', json_build_object('nodes', (select coalesce(json_agg(json_build_object('firstName', k.first_name, 'lastName', k.last_name, 'email', k.email)), '[]')
                           from (select * from crm.contacts k where k.organization_id = c.organization_id and k.customer_id = c.id and k.deleted_at is null order by k.id limit 5) k)),
                'deals', json_build_object('nodes', (select coalesce(json_agg(json_build_object('name', d.name, 'amount', d.amount, 'stage', json_build_object('name', s.name))), '[]')
                           from (select * from crm.deals d where d.organization_id = c.organization_id and d.customer_id = c.id and d.deleted_at is null order by d.id limit 5) d
                           join crm.pipeline_stages s on s.organization_id = d.organization_id and s.id = d.stage_id)))
              order by c.name, c.id), '[]'))))
            from (select * from crm.customers where deleted_at is null order by name, id limit 20) c`,
    params: () => [],
  },
  {
    name: "filtered list",
    query: `{ customers(first: 20, filter: { status: { equalTo: "customer" }, leadScore: { greaterThan: 50 } }) { nodes { rowId name } } }`,
    variables: () => ({}),
    sql: `select json_build_object('data', json_build_object('customers', json_build_object('nodes', coalesce(json_agg(json_build_object('rowId', c.id, 'name', c.name) order by c.id), '[]'))))
            from (select * from crm.customers where deleted_at is null and status = 'customer' and lead_score > 50 order by id limit 20) c`,
    params: () => [],
  },
  {
    name: "search (10 hits)",
    query: `query ($q: String!) { search(query: $q, first: 10) { nodes { entity recordId title } } }`,
    variables: (ctx) => ({ q: ctx.someCustomer.name.split(" ")[0] }),
    sql: `select json_build_object('data', json_build_object('search', json_build_object('nodes', coalesce(json_agg(json_build_object('entity', s.entity, 'recordId', s.record_id, 'title', s.title)), '[]'))))
            from (select * from crm.search($1, null) limit 10) s`,
    params: (ctx) => [ctx.someCustomer.name.split(" ")[0]],
  },
  {
    name: "aggregates (deals by stage)",
    query: `{ deals { groupedAggregates(groupBy: [STAGE_ID]) { keys sum { amount } } } }`,
    variables: () => ({}),
    sql: `select json_build_object('data', json_build_object('deals', json_build_object('groupedAggregates', coalesce(json_agg(json_build_object('keys', json_build_array(g.stage_id), 'sum', json_build_object('amount', g.amount))), '[]'))))
            from (select stage_id, sum(amount)::text as amount from crm.deals where deleted_at is null group by stage_id) g`,
    params: () => [],
  },
  {
    name: "createCustomer",
    query: `mutation ($name: String!) { createCustomer(input: { customer: { name: $name } }) { customer { rowId name } } }`,
    variables: () => ({ name: "Bench customer" }),
    sql: `insert into crm.customers (name) values ($1) returning json_build_object('data', json_build_object('createCustomer', json_build_object('customer', json_build_object('rowId', id, 'name', name))))`,
    params: () => [`Bench customer ${crypto.randomUUID()}`],
  },
];

/** Statements and round trips per request: the server's counters around 20 sequential requests. */
async function statementsPerRequest(url: string, token: string, c: Case, ctx: BenchContext): Promise<{ statements: number; roundTrips: number }> {
  const before = await countersSoFar(url);
  for (let i = 0; i < 20; i++) {
    await fetch(`${url}/graphql`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body: JSON.stringify({ query: c.query, variables: c.variables(ctx) }),
    });
  }
  const after = await countersSoFar(url);
  return { statements: (after.statements - before.statements) / 20, roundTrips: (after.roundTrips - before.roundTrips) / 20 };
}

/** BENCH_CASES=flat,filtered runs the cases whose names start with one of these (default: all). */
const ONLY = process.env.BENCH_CASES?.split(",").map((s) => s.trim()).filter(Boolean);
/** BENCH_CALLERS="Sales Manager" runs those callers only (default: both). */
const CALLERS = process.env.BENCH_CALLERS?.split(",").map((s) => s.trim()).filter(Boolean);

export default async function run(ctx: BenchContext): Promise<void> {
  const server = await ctx.server();
  const pid = server.process.pid!;
  const rssStart = await rssMb(pid);
  const rows: string[] = [];
  for (const caller of ctx.callers.filter((c) => !CALLERS || CALLERS.includes(c.name))) {
    const token = await caller.token();
    const settings = settingsFor(ctx.orgId, caller);
    for (const c of CASES.filter((c) => !ONLY || ONLY.some((o) => c.name.startsWith(o)))) {
      const check = await server.gql(c.query, c.variables(ctx), { token });
      if (check.body.errors) throw new Error(`${c.name} as ${caller.name}: ${JSON.stringify(check.body.errors)}`);
      const perRequest = await statementsPerRequest(server.url, token, c, ctx);
      for (const clients of CLIENTS) {
        const g = await httpLoad(server.url, token, c.query, c.variables(ctx), clients);
        const s = await sqlLoad(ctx.sqlPool, settings, c.sql, () => c.params(ctx), clients);
        rows.push(
          `| ${c.name} | ${caller.name} | ${clients} | ${fmt(g.rps, 0)} | ${fmt(s.rps, 0)} | ${fmt(g.rps / s.rps, 2)} | ${fmt(g.p50)} / ${fmt(g.p95)} / ${fmt(g.p99)} | ${fmt(s.p50)} / ${fmt(s.p95)} / ${fmt(s.p99)} | ${fmt(g.p95 / s.p95, 1)} | ${fmt(perRequest.statements, 1)} / ${fmt(perRequest.roundTrips, 1)} | ${g.errors + s.errors} |`,
        );
        process.stdout.write(`  ${rows[rows.length - 1]}\n`);
      }
    }
  }
  const rssAfter = await rssMb(pid);

  // Distinct documents: each new one is parsed, validated and planned; the plans are cached.
  const token = await ctx.callers[0]!.token();
  const documents = 300;
  const t0 = performance.now();
  for (let i = 0; i < documents; i++) {
    await server.gql(`{ customers(first: 1) { nodes { d${i}: name } } }`, {}, { token });
  }
  const perDocument = (performance.now() - t0) / documents;
  const rssDocuments = await rssMb(pid);

  process.stdout.write(
    [
      "",
      `API beside its SQL floor — ${SECONDS} s per cell; req/s and ms (p50 / p95 / p99); ratio = GraphQL req/s ÷ SQL tx/s`,
      "",
      "| case | caller | clients | GraphQL req/s | SQL tx/s | ratio | GraphQL ms | SQL ms | p95 ratio | statements / round trips per request | errors |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
      ...rows,
      "",
      `API process RSS: ${rssStart} MB before the cases, ${rssAfter} MB after; ${documents} distinct documents then took ${fmt(perDocument)} ms each and left RSS at ${rssDocuments} MB.`,
      "",
    ].join("\n"),
  );
}
