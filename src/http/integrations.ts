// CSV import and export over HTTP (docs/integrations.md):
//   POST /import/:entity             stream a CSV into a staging table (COPY), validate and apply it
//   GET  /import/:id                 the import job (status, counts)
//   GET  /import/:id/errors.csv      its per-row error report
//   GET  /export/:entity.csv         stream a list under the caller's row-level security, with the
//                                    same filter/orderBy/condition as the GraphQL list, page by page
//                                    (cursor pagination), in constant memory
// Every route authenticates like /graphql (Bearer token → the same principal checks).
import { once } from "node:events";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { Express, Request, Response } from "express";
import type { Pool, PoolClient } from "pg";
import { from as copyFrom } from "pg-copy-streams";
import type { PostGraphileInstance } from "postgraphile";
import { grafast } from "postgraphile/grafast";
import type { Config } from "../config.ts";
import type { Logger } from "../logger.ts";
import { pgSettingsFor, type PrincipalResolver } from "../auth/context.ts";
import { APP_SQLSTATES, STANDARD_SQLSTATES, fieldOf, type ErrorCode } from "./errors.ts";
import { runImport, ImportRunError, type ImportSummary } from "../imports/run.ts";
import { readCsvHeader, csvLine, CsvHeaderError } from "../imports/csv.ts";

export interface IntegrationDeps {
  config: Config;
  logger: Logger;
  authPool: Pool;
  ownerPool?: Pool;
  jwtSecret: string;
  resolvePrincipal: PrincipalResolver;
  pgl: PostGraphileInstance;
}

const STATUS: Partial<Record<ErrorCode, number>> = {
  VALIDATION: 400,
  UNAUTHENTICATED: 401,
  FORBIDDEN: 403,
  NOT_FOUND: 404,
  CONFLICT: 409,
  INVALID_STATE: 409,
  RATE_LIMITED: 429,
};

export class HttpProblem extends Error {
  readonly status: number;
  readonly code: string;
  readonly field: string | undefined;
  constructor(status: number, code: string, message: string, field?: string) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

export function sendProblem(res: Response, p: HttpProblem, extra: Record<string, unknown> = {}) {
  if (res.headersSent) {
    res.destroy(p);
    return;
  }
  res.status(p.status).json({ errors: [{ message: p.message, extensions: { code: p.code, ...(p.field ? { field: p.field } : {}) } }], ...extra });
}

/** A database error as the caller should see it (application and bad-input codes), else INTERNAL. */
export function problemFromPg(e: unknown): HttpProblem | null {
  const err = e as { code?: string; message: string; column?: string; detail?: string; constraint?: string; table?: string };
  const code = err?.code ? (APP_SQLSTATES[err.code] ?? STANDARD_SQLSTATES[err.code]) : undefined;
  if (!code) return null;
  return new HttpProblem(STATUS[code] ?? 400, code, err.message, fieldOf(err as never));
}

export async function authenticate(deps: IntegrationDeps, req: Request): Promise<Record<string, string>> {
  let settings: Record<string, string>;
  try {
    settings = await pgSettingsFor(
      deps.config,
      deps.jwtSecret,
      { authorization: req.headers.authorization, requestId: req.id, clientIp: req.ip, userAgent: req.headers["user-agent"] },
      deps.resolvePrincipal,
    );
  } catch (e) {
    const err = e as { statusCode?: number; message: string };
    if (err.statusCode === 401) throw new HttpProblem(401, "UNAUTHENTICATED", err.message);
    throw e;
  }
  if (!settings["jwt.claims.sub"]) throw new HttpProblem(401, "UNAUTHENTICATED", "Sign in first.");
  if (!settings["jwt.claims.org"]) throw new HttpProblem(403, "FORBIDDEN", "Sign in to an organization first.");
  return settings;
}

/** Runs `fn` in a transaction with the request's settings (role crm_user + claims): RLS applies. */
export async function asCaller<T>(pool: Pool, settings: Record<string, string>, fn: (c: PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  try {
    await client.query("begin");
    await client.query("select set_config(el->>0, el->>1, true) from json_array_elements($1::json) el", [JSON.stringify(Object.entries(settings))]);
    const r = await fn(client);
    await client.query("commit");
    return r;
  } catch (e) {
    await client.query("rollback").catch(() => undefined);
    throw e;
  } finally {
    client.release();
  }
}

export function handle(deps: IntegrationDeps, fn: (req: Request, res: Response) => Promise<void>) {
  return async (req: Request, res: Response) => {
    try {
      await fn(req, res);
    } catch (e) {
      if (e instanceof HttpProblem) return sendProblem(res, e);
      if (e instanceof CsvHeaderError) return sendProblem(res, new HttpProblem(e.status, e.code, e.message, e.field));
      const p = problemFromPg(e);
      if (p) return sendProblem(res, p);
      req.log.error({ err: e }, "integration request failed");
      sendProblem(res, new HttpProblem(500, "INTERNAL", "Internal error"));
    }
  };
}

export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function jobJson(job: ImportSummary & Record<string, unknown>) {
  return { ...job, errorsUrl: `/import/${job.id}/errors.csv` };
}

// ---------------------------------------------------------------------------------------------------
// Import

async function importCsv(deps: IntegrationDeps, req: Request, res: Response): Promise<void> {
  const settings = await authenticate(deps, req);
  const owner = deps.ownerPool;
  if (!owner) throw new HttpProblem(503, "UNAVAILABLE", "Imports need the owner connection (the worker's database role).");
  const entity = String(req.params.entity);
  const q = req.query as Record<string, string | undefined>;
  const onDuplicate = q.onDuplicate ?? "skip";
  const onError = q.onError ?? "abort";
  const forceAsync = q.async === "true" || q.async === "1";
  const fileName = typeof q.fileName === "string" ? q.fileName : (req.headers["x-file-name"] as string | undefined);
  const limit = deps.config.realtime.importMaxBytes;
  if (Number(req.headers["content-length"] ?? 0) > limit) {
    throw new HttpProblem(413, "VALIDATION", `The file is larger than ${limit} bytes (IMPORT_MAX_BYTES).`, "file");
  }

  const source = req[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  const { header, rest } = await readCsvHeader(source);

  // The job and its staging table, created with the importer's claims (permission checked in SQL).
  const claims = Object.entries(settings).filter(([k]) => k.startsWith("jwt.claims.") || k === "cairn.request_id");
  const created = await withOwnerClaims(owner, claims, (c) =>
    c.query<{ r: { id: string; staging: string; columns: string[] } }>("select crm_private.import_create($1, $2, $3, $4, $5) as r", [
      entity,
      fileName ?? null,
      onDuplicate,
      onError,
      header,
    ]),
  );
  const job = created.rows[0]!.r;
  if (!/^import_staging_[0-9a-f]{32}$/.test(job.staging)) throw new Error("unexpected staging table name");

  // Stream the rest of the file through COPY; bytes are counted and capped.
  let bytes = 0;
  async function* body() {
    if (rest.length) {
      bytes += rest.length;
      yield rest;
    }
    for (;;) {
      const r = await source.next();
      if (r.done) return;
      bytes += r.value.length;
      if (bytes > limit) throw new HttpProblem(413, "VALIDATION", `The file is larger than ${limit} bytes (IMPORT_MAX_BYTES).`, "file");
      yield r.value;
    }
  }
  const client = await owner.connect();
  let rows = 0;
  try {
    const cols = header.map((_, i) => `c_${i + 1}`).join(", ");
    const copy = client.query(copyFrom(`copy crm_private.${job.staging} (${cols}) from stdin with (format csv, encoding 'UTF8')`));
    await pipeline(Readable.from(body()), copy);
    rows = copy.rowCount;
  } catch (e) {
    client.release(true);
    // PostgreSQL names the line of the COPY input (data rows only: the header was taken off).
    const line = /line (\d+)/.exec((e as { where?: string }).where ?? "")?.[1];
    const message =
      e instanceof HttpProblem ? e.message : `The CSV could not be read${line ? ` at data row ${line}` : ""}: ${(e as Error).message}`;
    await owner.query("select crm_private.import_fail($1, $2)", [job.id, message]).catch(() => undefined);
    if (e instanceof HttpProblem) throw e;
    if ((e as { code?: string }).code) throw new HttpProblem(400, "VALIDATION", message.replace(/crm_private\.import_staging_\w+/g, "file"), "file");
    throw e;
  }
  client.release();

  const runAsync = forceAsync || rows > deps.config.realtime.importSyncMaxRows;
  if (runAsync) {
    await withOwnerClaims(owner, [], async (c) => {
      await c.query("update crm.import_jobs set status = 'queued', bytes_received = $2, total_rows = $3 where id = $1", [job.id, bytes, rows]);
      await c.query("select crm_private.add_job('imports:run', jsonb_build_object('importJobId', $1::text), 'import:' || $1, null, 3)", [job.id]);
    });
    res.status(202).json({ importJob: jobJson({ ...(await readJob(deps, settings, job.id)), id: job.id } as never) });
    return;
  }
  await owner.query("update crm.import_jobs set bytes_received = $2, total_rows = $3 where id = $1", [job.id, bytes, rows]);
  try {
    const summary = await runImport(owner, job.id);
    // 422: the file was read but its rows were refused (onError: abort); the report says why.
    res.status(summary.status === "completed" ? 200 : 422).json({ importJob: jobJson(summary as never) });
  } catch (e) {
    if (!(e instanceof ImportRunError)) throw e;
    const p = problemFromPg(Object.assign(new Error(e.message), { code: e.code })) ?? new HttpProblem(500, "INTERNAL", e.message);
    sendProblem(res, p, { importJob: { id: job.id, status: "failed", errorsUrl: `/import/${job.id}/errors.csv` } });
  }
}

/** The owner's connection with some of the caller's claims set (SQL that checks permissions itself). */
async function withOwnerClaims<T>(pool: Pool, claims: [string, string][], fn: (c: PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  try {
    await client.query("begin");
    if (claims.length) {
      await client.query("select set_config(el->>0, el->>1, true) from json_array_elements($1::json) el", [JSON.stringify(claims)]);
    }
    const r = await fn(client);
    await client.query("commit");
    return r;
  } catch (e) {
    await client.query("rollback").catch(() => undefined);
    throw e;
  } finally {
    client.release();
  }
}

async function readJob(deps: IntegrationDeps, settings: Record<string, string>, id: string) {
  const { rows } = await asCaller(deps.authPool, settings, (c) =>
    c.query(
      `select id, entity, status, file_name as "fileName", on_duplicate as "onDuplicate", on_error as "onError",
              total_rows as "totalRows", error_rows as "errorRows", created_rows as "createdRows", updated_rows as "updatedRows",
              skipped_rows as "skippedRows", bytes_received::text as "bytesReceived", error, created_at as "createdAt",
              started_at as "startedAt", finished_at as "finishedAt"
         from crm.import_jobs where id = $1`,
      [id],
    ),
  );
  if (!rows[0]) throw new HttpProblem(404, "NOT_FOUND", "No such import.", "id");
  return rows[0];
}

async function importJob(deps: IntegrationDeps, req: Request, res: Response): Promise<void> {
  const settings = await authenticate(deps, req);
  const id = String(req.params.id);
  if (!UUID.test(id)) throw new HttpProblem(404, "NOT_FOUND", "No such import.", "id");
  res.json({ importJob: jobJson((await readJob(deps, settings, id)) as never) });
}

async function importErrorsCsv(deps: IntegrationDeps, req: Request, res: Response): Promise<void> {
  const settings = await authenticate(deps, req);
  const id = String(req.params.id);
  if (!UUID.test(id)) throw new HttpProblem(404, "NOT_FOUND", "No such import.", "id");
  await readJob(deps, settings, id);
  res.status(200).setHeader("Content-Type", "text/csv; charset=utf-8");
  res.setHeader("Content-Disposition", `attachment; filename="import-${id}-errors.csv"`);
  res.write(csvLine(["row", "column", "message", "value"]));
  let after = { row: 0, pos: -1, id: 0 };
  for (;;) {
    // By row, then in the file's column order; keyset pages over (row, column position, id).
    const { rows } = await asCaller(deps.authPool, settings, (c) =>
      c.query<{ id: string; row_number: number; pos: number; column_name: string | null; message: string; value: string | null }>(
        `select * from (
           select e.id, e.row_number, coalesce(array_position(j.columns, e.column_name), 0) as pos, e.column_name, e.message, e.value
             from crm.import_errors e join crm.import_jobs j on j.id = e.import_job_id
            where e.import_job_id = $1) x
          where (x.row_number, x.pos, x.id) > ($2, $3, $4)
          order by x.row_number, x.pos, x.id limit 5000`,
        [id, after.row, after.pos, after.id],
      ),
    );
    for (const r of rows) {
      if (!res.write(csvLine([String(r.row_number), r.column_name ?? "", r.message, r.value ?? ""]))) await once(res, "drain");
    }
    if (rows.length < 5000) break;
    const last = rows[rows.length - 1]!;
    after = { row: last.row_number, pos: last.pos, id: Number(last.id) };
  }
  res.end();
}

// ---------------------------------------------------------------------------------------------------
// Export

interface ExportSpec {
  list: string;
  filterType: string;
  orderType: string;
  conditionType: string;
  customFieldEntity: string;
  columns: [csv: string, field: string][];
  trailing: [csv: string, field: string][];
}

const EXPORTS: Record<string, ExportSpec> = {
  customers: {
    list: "customers",
    filterType: "CustomerFilter",
    orderType: "CustomerOrderBy",
    conditionType: "CustomerCondition",
    customFieldEntity: "customer",
    columns: [
      ["id", "rowId"], ["name", "name"], ["kind", "kind"], ["email", "email"], ["phone", "phone"], ["status", "status"],
      ["owner", "ownerId"], ["industry", "industry"], ["company_size", "companySize"], ["website", "website"],
      ["annual_revenue", "annualRevenue"], ["employee_count", "employeeCount"], ["lead_source", "leadSource"],
      ["lead_score", "leadScore"], ["birth_date", "birthDate"], ["contacted", "contacted"], ["next_follow_up_at", "nextFollowUpAt"],
    ],
    trailing: [["created_at", "createdAt"], ["updated_at", "updatedAt"]],
  },
  contacts: {
    list: "contacts",
    filterType: "ContactFilter",
    orderType: "ContactOrderBy",
    conditionType: "ContactCondition",
    customFieldEntity: "contact",
    columns: [
      ["id", "rowId"], ["customer", "customerId"], ["first_name", "firstName"], ["last_name", "lastName"], ["email", "email"],
      ["phone", "phone"], ["mobile", "mobile"], ["title", "title"], ["department", "department"], ["status", "status"],
    ],
    trailing: [["is_primary", "isPrimary"], ["created_at", "createdAt"], ["updated_at", "updatedAt"]],
  },
};

function cell(v: unknown): string {
  if (v === null || v === undefined) return "";
  if (Array.isArray(v)) return v.map((x) => String(x)).join(";");
  if (typeof v === "object") return JSON.stringify(v);
  const s = String(v);
  // A cell a spreadsheet would run as a formula (=, @, +cmd …) is kept as text.
  if (/^[=@\t\r]/.test(s) || (/^\+/.test(s) && !/^\+[\d\s().-]+$/.test(s))) return `'${s}`;
  return s;
}

function parseJsonParam(raw: unknown, name: string): unknown {
  if (raw === undefined || raw === "") return undefined;
  if (typeof raw !== "string") throw new HttpProblem(400, "VALIDATION", `${name} must be given once, as JSON.`, name);
  try {
    return JSON.parse(raw);
  } catch {
    throw new HttpProblem(400, "VALIDATION", `${name} is not valid JSON.`, name);
  }
}

async function exportCsv(deps: IntegrationDeps, req: Request, res: Response): Promise<void> {
  const settings = await authenticate(deps, req);
  const match = /^([a-z_]+)\.csv$/.exec(String(req.params.file));
  const spec = match ? EXPORTS[match[1]!] : undefined;
  if (!spec) throw new HttpProblem(404, "NOT_FOUND", `Exports: ${Object.keys(EXPORTS).map((e) => `/export/${e}.csv`).join(", ")}.`, "entity");
  const filter = parseJsonParam(req.query.filter, "filter");
  const condition = parseJsonParam(req.query.condition, "condition");
  const orderBy = typeof req.query.orderBy === "string" && req.query.orderBy ? req.query.orderBy.split(",").map((s) => s.trim()) : undefined;
  const pageSize = deps.config.pageSizeMax;

  // Custom fields of the organization, as columns (definitions are visible to every member).
  const { rows: defs } = await asCaller(deps.authPool, settings, (c) =>
    c.query<{ key: string }>("select key from crm.custom_field_definitions where entity = $1 order by position, key", [spec.customFieldEntity]),
  );
  const fields = [...spec.columns, ...spec.trailing].map(([, f]) => f);
  const query = `query Export($first: Int!, $after: Cursor, $filter: ${spec.filterType}, $condition: ${spec.conditionType}, $orderBy: [${spec.orderType}!]) {
    list: ${spec.list}(first: $first, after: $after, filter: $filter, condition: $condition, orderBy: $orderBy) {
      pageInfo { hasNextPage endCursor }
      nodes { ${fields.join(" ")} customFields }
    }
  }`;
  const { schema, resolvedPreset } = await deps.pgl.getSchemaResult();
  // The same GraphQL list the API serves, executed as this caller (their pgSettings).
  req.pgSettings = settings;
  let closed = false;
  res.on("close", () => (closed = true));
  const page = async (after: string | null) => {
    const result = (await grafast({
      schema,
      source: query,
      // Absent arguments are left out: connection-filter refuses an explicit null filter.
      variableValues: Object.fromEntries(Object.entries({ first: pageSize, after, filter, condition, orderBy }).filter(([, v]) => v !== undefined)),
      resolvedPreset,
      requestContext: { expressv4: { req, res } } as never,
      contextValue: {},
    })) as { data?: { list: { pageInfo: { hasNextPage: boolean; endCursor: string | null }; nodes: Record<string, unknown>[] } }; errors?: readonly { message: string; extensions?: Record<string, unknown> }[] };
    if (result.errors?.length || !result.data) {
      const e = result.errors?.[0];
      const code = String(e?.extensions?.code ?? "VALIDATION");
      throw new HttpProblem(STATUS[code as ErrorCode] ?? 400, code, e?.message ?? "The export failed.");
    }
    return result.data.list;
  };

  let current = await page(null);
  res.status(200).setHeader("Content-Type", "text/csv; charset=utf-8");
  res.setHeader("Content-Disposition", `attachment; filename="${match![1]}.csv"`);
  res.setHeader("Cache-Control", "no-store");
  res.write(csvLine([...spec.columns.map(([c]) => c), ...defs.map((d) => `custom_fields.${d.key}`), ...spec.trailing.map(([c]) => c)]));
  for (;;) {
    for (const n of current.nodes) {
      const cf = (n.customFields ?? {}) as Record<string, unknown>;
      const line = csvLine([
        ...spec.columns.map(([, f]) => cell(n[f])),
        ...defs.map((d) => cell(cf[d.key])),
        ...spec.trailing.map(([, f]) => cell(n[f])),
      ]);
      if (!res.write(line)) await once(res, "drain");
      if (closed) return;
    }
    if (!current.pageInfo.hasNextPage || closed) break;
    current = await page(current.pageInfo.endCursor);
  }
  res.end();
}

export function mountIntegrationRoutes(app: Express, deps: IntegrationDeps): void {
  app.post("/import/:entity", handle(deps, (req, res) => importCsv(deps, req, res)));
  app.get("/import/:id", handle(deps, (req, res) => importJob(deps, req, res)));
  app.get("/import/:id/errors.csv", handle(deps, (req, res) => importErrorsCsv(deps, req, res)));
  app.get("/export/:file", handle(deps, (req, res) => exportCsv(deps, req, res)));
}
