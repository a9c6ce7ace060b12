// Running a staged CSV import (crm_private.import_run): inline from POST /import/:entity for small
// files, from the imports:run job for large ones. One transaction: either the import's rows are
// applied (with the per-row error report) or nothing is; a failure marks the job failed.
import type { Pool } from "pg";

export interface ImportSummary {
  id: string;
  status: string;
  totalRows: number;
  errorRows: number;
  createdRows: number;
  updatedRows: number;
  skippedRows: number;
}

export class ImportRunError extends Error {
  override name = "ImportRunError";
  readonly code: string | undefined;
  constructor(message: string, code: string | undefined) {
    super(message);
    this.code = code;
  }
}

export async function runImport(ownerPool: Pool, importJobId: string): Promise<ImportSummary> {
  await ownerPool.query(
    "update crm.import_jobs set status = 'running', started_at = now() where id = $1 and status in ('receiving', 'queued', 'running')",
    [importJobId],
  );
  const client = await ownerPool.connect();
  try {
    await client.query("begin");
    const { rows } = await client.query<{ r: ImportSummary }>("select crm_private.import_run($1) as r", [importJobId]);
    await client.query("commit");
    return rows[0]!.r;
  } catch (e) {
    await client.query("rollback").catch(() => undefined);
    const err = e as { message: string; code?: string };
    // Application errors (and a refused write: row-level security) are the import's outcome;
    // anything else is logged by the caller and reported without detail.
    const known = err.code && (/^CR[A-Z]{3}$/.test(err.code) || /^(23|22|42501)/.test(err.code));
    const message = known ? err.message : "The import failed unexpectedly; nothing was imported.";
    await ownerPool.query("select crm_private.import_fail($1, $2)", [importJobId, message]).catch(() => undefined);
    throw new ImportRunError(message, err.code);
  } finally {
    client.release();
  }
}
