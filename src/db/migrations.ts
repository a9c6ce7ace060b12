// Whether every committed migration has been applied (readiness).
import fs from "node:fs/promises";
import path from "node:path";
import type { Pool } from "pg";
import { ROOT_DIR } from "../config.ts";

let committedCount: number | undefined;

export async function countCommittedMigrations(): Promise<number> {
  if (committedCount === undefined) {
    const files = await fs.readdir(path.join(ROOT_DIR, "migrations", "committed"));
    committedCount = files.filter((f) => /^\d{6}.*\.sql$/.test(f)).length;
  }
  return committedCount;
}

export async function migrationsCurrent(ownerPool: Pool): Promise<boolean> {
  const [expected, { rows }] = await Promise.all([
    countCommittedMigrations(),
    ownerPool.query<{ n: number }>("select count(*)::int as n from graphile_migrate.migrations"),
  ]);
  return (rows[0]?.n ?? 0) >= expected;
}
