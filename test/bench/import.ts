// CSV import and export benchmark (npm run bench:import, or at the end of npm run bench):
// - import of 100,000 customers over HTTP (POST /import/customers: COPY into staging, set-based
//   validation, applied as the importer with every trigger and policy) beside its floor, a bare COPY
//   of the same file into a plain table;
// - export of 50,000 customers (GET /export/customers.csv, cursor pages under RLS) beside a bare
//   COPY … TO STDOUT of the same rows, with the server's resident memory sampled while it streams.
// Prints a table; asserts nothing. `--small` runs a tenth of the volume.
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Readable, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import pg from "pg";
import { from as copyFrom, to as copyTo } from "pg-copy-streams";
import { applyCurrentMigration, ensureDatabase, ensureRoles, migrate, withCredentials, withDatabase } from "../../src/db/bootstrap.ts";
import { startEmbeddedPostgres, type EmbeddedServer } from "../../src/db/embedded.ts";
import type { TestDb } from "../helpers/db.ts";

export async function runImportBench(opts: { small?: boolean } = {}): Promise<void> {
  process.env.GRAPHILE_ENV ??= "production";
  const { startServer } = await import("../helpers/server.ts");
  const { createOrg, startSession } = await import("../helpers/identity.ts");
  const rowsToImport = opts.small ? 10_000 : 100_000;
  const passwords = { owner: "bench-owner", authenticator: "bench-authenticator" };
  let embedded: EmbeddedServer | undefined;
  let dataDir: string | undefined;
  let rootUrl = process.env.BENCH_DATABASE_URL;
  if (!rootUrl) {
    dataDir = path.join(os.tmpdir(), `cairn-bench-import-${process.pid}`);
    embedded = await startEmbeddedPostgres({ dataDir, port: 53000 + (process.pid % 3000), durable: false });
    rootUrl = embedded.superuserUrl();
  }
  const name = "cairn_bench_import";
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
  const org = await createOrg(db, "bench-import");
  const token = (await startSession(db, org.adminId, org.id)).accessToken;

  // The file: half prospects, half customers (the export takes the customers: half the rows).
  const lines = ["name,email,status,lead_score,phone,industry"];
  for (let i = 1; i <= rowsToImport; i++) {
    lines.push(`Company ${i},buyer${i}@company${i}.example,${i % 2 ? "prospect" : "customer"},${i % 101},+1 555 ${String(i).padStart(7, "0")},Industry ${i % 17}`);
  }
  const csv = Buffer.from(lines.join("\n") + "\n");

  // Floor: the same bytes, COPY into a plain table with the same columns.
  await owner.query("create table public.bench_copy_floor (name text, email text, status text, lead_score int, phone text, industry text)");
  const client = await owner.connect();
  let t0 = performance.now();
  await pipeline(Readable.from([csv]), client.query(copyFrom("copy public.bench_copy_floor from stdin with (format csv, header true)")));
  const copyMs = performance.now() - t0;
  client.release();

  const server = await startServer(db, { LOG_LEVEL: "info", IMPORT_SYNC_MAX_ROWS: "10000000", PAGE_SIZE_MAX: "500" });
  t0 = performance.now();
  const res = await fetch(`${server.url}/import/customers?onError=abort`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "text/csv" },
    body: csv,
  });
  const imported = (await res.json()) as { importJob?: { status: string; createdRows: number } };
  const importMs = performance.now() - t0;

  // Export: the customers, streamed while the server's resident memory is sampled.
  const rss = async () => {
    const status = await fs.readFile(`/proc/${server.process.pid}/status`, "utf8").catch(() => "");
    return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024;
  };
  const filter = encodeURIComponent(JSON.stringify({ status: { equalTo: "customer" } }));
  const exportOnce = async () => {
    const samples: number[] = [];
    const timer = setInterval(() => void rss().then((m) => samples.push(m)), 50);
    const start = performance.now();
    const r = await fetch(`${server.url}/export/customers.csv?filter=${filter}`, { headers: { authorization: `Bearer ${token}` } });
    let bytes = 0;
    let newlines = 0;
    for await (const chunk of r.body as unknown as AsyncIterable<Uint8Array>) {
      bytes += chunk.length;
      for (const b of chunk) if (b === 10) newlines++;
    }
    const ms = performance.now() - start;
    clearInterval(timer);
    return { ms, rows: newlines - 1, bytes, peak: Math.max(...samples, await rss()) };
  };
  const before = await rss();
  const exp = await exportOnce();
  const exp2 = await exportOnce();
  const exportClient = await owner.connect();
  t0 = performance.now();
  let floorBytes = 0;
  await pipeline(
    exportClient.query(copyTo(`copy (select * from crm.customers where organization_id = '${org.id}' and status = 'customer' and deleted_at is null order by id) to stdout with (format csv, header true)`)),
    new Writable({ write: (chunk: Buffer, _e, cb) => ((floorBytes += chunk.length), cb()) }),
  );
  const exportFloorMs = performance.now() - t0;
  exportClient.release();
  await server.stop();

  const ratio = (a: number, b: number) => `${(a / b).toFixed(1)}×`;
  process.stdout.write(
    [
      "",
      `Cairn import/export benchmark — ${rowsToImport.toLocaleString("en")} customers (${(csv.length / 1e6).toFixed(1)} MB of CSV), ${os.cpus().length} cores`,
      "",
      "| case                                              |   time (s) | floor (s) | ratio |",
      "|---------------------------------------------------|------------|-----------|-------|",
      `| import over HTTP (${imported.importJob?.status ?? "failed"}, ${imported.importJob?.createdRows ?? 0} rows created) | ${(importMs / 1000).toFixed(2).padStart(10)} | ${(copyMs / 1000).toFixed(2).padStart(9)} | ${ratio(importMs, copyMs).padStart(5)} |`,
      `| export over HTTP (${exp.rows} rows, ${(exp.bytes / 1e6).toFixed(1)} MB)          | ${(exp.ms / 1000).toFixed(2).padStart(10)} | ${(exportFloorMs / 1000).toFixed(2).padStart(9)} | ${ratio(exp.ms, exportFloorMs).padStart(5)} |`,
      "",
      `floor: import = bare COPY of the same file into a plain table; export = COPY (select … ) TO STDOUT of the same rows (${(floorBytes / 1e6).toFixed(1)} MB)`,
      `server RSS (MB): ${before.toFixed(0)} before the export, peak ${exp.peak.toFixed(0)} during it, peak ${exp2.peak.toFixed(0)} during a second one (flat: pages of 500, written with back-pressure)`,
      "",
    ].join("\n"),
  );

  await owner.end();
  const cleanup = new pg.Client({ connectionString: rootUrl });
  await cleanup.connect();
  await cleanup.query(`drop database if exists ${name} with (force)`);
  await cleanup.end();
  if (embedded) await embedded.stop();
  if (dataDir) await fs.rm(dataDir, { recursive: true, force: true });
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  await runImportBench({ small: process.argv.includes("--small") });
}
