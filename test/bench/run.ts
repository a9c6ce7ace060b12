// npm run bench: latency of the main API paths on an organization with 50,000 customers.
// Builds a scratch database (embedded PostgreSQL, or BENCH_DATABASE_URL's server as superuser),
// seeds it with `seed:demo --scale`, starts the real server and times GraphQL requests over HTTP
// as a Sales Manager (sees everything) and a Sales Representative (row-level security narrows).
// Prints a table; it asserts nothing — speed targets are read here, never in the test suite.
import crypto from "node:crypto";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import { applyCurrentMigration, ensureDatabase, ensureRoles, migrate, withCredentials, withDatabase } from "../../src/db/bootstrap.ts";
import { startEmbeddedPostgres, type EmbeddedServer } from "../../src/db/embedded.ts";
import { seedDemoData, settleAfterBulkLoad, SCALE_VOLUME, DEFAULT_VOLUME } from "../../src/db/seed-demo.ts";
import { startServer } from "../helpers/server.ts";
import type { TestDb } from "../helpers/db.ts";

process.env.GRAPHILE_ENV ??= "production";
const { startSession } = await import("../helpers/identity.ts");
const ITERATIONS = Number(process.env.BENCH_ITERATIONS ?? 50);
const small = process.argv.includes("--small");
const passwords = { owner: "bench-owner", authenticator: "bench-authenticator" };

let embedded: EmbeddedServer | undefined;
let dataDir: string | undefined;
let rootUrl = process.env.BENCH_DATABASE_URL;
if (!rootUrl) {
  dataDir = path.join(os.tmpdir(), `cairn-bench-${process.pid}`);
  embedded = await startEmbeddedPostgres({ dataDir, port: 56000 + (process.pid % 3000), durable: false });
  rootUrl = embedded.superuserUrl();
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.once(signal, () => {
      void embedded!.stop().finally(() => process.exit(130));
    });
  }
}
const name = "cairn_bench";
const admin = new pg.Client({ connectionString: rootUrl });
await admin.connect();
await admin.query(`drop database if exists ${name} with (force)`);
await admin.end();
await ensureRoles(rootUrl, passwords);
await ensureDatabase(rootUrl, name);
const dbUrl = withDatabase(rootUrl, name);
const ownerUrl = withCredentials(dbUrl, "crm_owner", passwords.owner);
const authUrl = withCredentials(dbUrl, "crm_authenticator", passwords.authenticator);
await migrate(ownerUrl);
await applyCurrentMigration(ownerUrl);
const owner = new pg.Pool({ connectionString: ownerUrl, max: 4 });
const db = { ownerUrl, authUrl, owner } as unknown as TestDb;

const { rows } = await owner.query<{ id: string }>(
  "insert into crm.organizations (name, slug) values ('Bench Corp', 'bench') returning id",
);
const orgId = rows[0]!.id;
process.stdout.write(`seeding ${small ? "the default volume" : "--scale"}…\n`);
const seeded = await seedDemoData(owner, orgId, { volume: small ? DEFAULT_VOLUME : SCALE_VOLUME });
process.stdout.write(`seeded in ${(seeded.durationMs / 1000).toFixed(1)} s: ${JSON.stringify(seeded.counts)}\n`);
await settleAfterBulkLoad(owner);

const member = async (role: string) =>
  (
    await owner.query<{ user_id: string }>(
      `select m.user_id from crm.organization_memberships m join crm.roles r on r.id = m.role_id
        where m.organization_id = $1 and r.name = $2 and m.is_active order by m.created_at limit 1`,
      [orgId, role],
    )
  ).rows[0]!.user_id;
const managerId = await member("Sales Manager");
const manager = await startSession(db, managerId, orgId);
const rep = await startSession(db, await member("Sales Representative"), orgId);
const someCustomer = (
  await owner.query<{ id: string; name: string }>(
    "select id, name from crm.customers where organization_id = $1 order by id limit 1 offset (select count(*) / 2 from crm.customers)",
    [orgId],
  )
).rows[0]!;

const server = await startServer(db, { LOG_LEVEL: "info", PAGE_SIZE_MAX: "100" });
const cases: [string, string, Record<string, unknown>][] = [
  ["customers, first page", `{ customers(first: 20, orderBy: NAME_ASC) { totalCount nodes { rowId name status } } }`, {}],
  ["customers, filtered", `{ customers(first: 20, filter: { status: { equalTo: "customer" }, leadScore: { greaterThan: 50 } }) { nodes { rowId name } } }`, {}],
  ["search by name", `query ($q: String!) { search(query: $q, first: 10) { nodes { entity recordId title } } }`, { q: someCustomer.name.split(" ")[0] }],
  ["search with a typo", `query ($q: String!) { search(query: $q, first: 10) { nodes { entity recordId } } }`, { q: someCustomer.name.slice(0, -1) }],
  ["customer timeline", `query ($c: UUID!) { customerTimeline(customerId: $c, first: 50) { nodes { kind occurredAt } } }`, { c: someCustomer.id }],
  ["my tasks", `{ myTasks(first: 20) { nodes { rowId title dueAt } } }`, {}],
  ["deals by stage (aggregates)", `{ deals { groupedAggregates(groupBy: [STAGE_ID]) { keys sum { amount } } } }`, {}],
  ["reports overview", `{ reportsOverview }`, {}],
];

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

const results: string[] = [];
for (const [who, token] of [["Sales Manager", manager.accessToken], ["Sales Representative", rep.accessToken]] as const) {
  for (const [label, query, variables] of cases) {
    const times: number[] = [];
    let errors = 0;
    for (let i = 0; i < ITERATIONS + 3; i++) {
      const t0 = performance.now();
      const res = await server.gql(query, variables, { token });
      const ms = performance.now() - t0;
      // A Sales Representative has no reports:read_all: FORBIDDEN is the expected answer there.
      if (res.body.errors && res.body.errors[0]?.extensions?.code !== "FORBIDDEN") errors++;
      if (i >= 3) times.push(ms); // warm-up
    }
    times.sort((a, b) => a - b);
    results.push(
      `| ${who.padEnd(20)} | ${label.padEnd(28)} | ${percentile(times, 50).toFixed(1).padStart(7)} | ${percentile(times, 95).toFixed(1).padStart(7)} | ${String(errors).padStart(6)} |`,
    );
  }
}
const login = async () => {
  const times: number[] = [];
  for (let i = 0; i < 10; i++) {
    const t0 = performance.now();
    await server.gql(`mutation { login(input: { login: "bench-nobody-${crypto.randomUUID()}", password: "x" }) { session { accessToken } } }`);
    times.push(performance.now() - t0);
  }
  return times.sort((a, b) => a - b);
};
const loginTimes = await login();

process.stdout.write(
  [
    "",
    `Cairn benchmark — ${seeded.counts.customers ?? "?"} customers, ${ITERATIONS} requests per case, over HTTP (ms)`,
    "",
    "| caller               | request                      |     p50 |     p95 | errors |",
    "|----------------------|------------------------------|---------|---------|--------|",
    ...results,
    `| anonymous            | failed login (bcrypt, cost 4) | ${percentile(loginTimes, 50).toFixed(1).padStart(7)} | ${percentile(loginTimes, 95).toFixed(1).padStart(7)} |      - |`,
    "",
  ].join("\n"),
);

// Commerce: createOrder throughput and the commerce reports (test/bench/commerce.ts).
await (await import("./commerce.ts")).default({
  db, orgId, small, server: async () => server,
  callers: [{ name: "Sales Manager", userId: managerId, token: async () => (await startSession(db, managerId, orgId)).accessToken }],
});

await server.stop();
await owner.end();
const cleanup = new pg.Client({ connectionString: rootUrl });
await cleanup.connect();
await cleanup.query(`drop database if exists ${name} with (force)`);
await cleanup.end();
if (embedded) await embedded.stop();
if (dataDir) await fs.rm(dataDir, { recursive: true, force: true });
