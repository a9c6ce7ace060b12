import fs from "node:fs/promises";
import pg from "pg";
import type { EmbeddedServer } from "../../src/db/embedded.ts";
import { ROOT_URL_ENV, TEMPLATE_DB } from "../helpers/state.ts";

export default async function globalTeardown(): Promise<void> {
  const holder = globalThis as { __cairnEmbedded?: { server: EmbeddedServer; dataDir: string } };
  if (holder.__cairnEmbedded) {
    await holder.__cairnEmbedded.server.stop();
    await fs.rm(holder.__cairnEmbedded.dataDir, { recursive: true, force: true });
    return;
  }
  const rootUrl = process.env[ROOT_URL_ENV];
  if (!rootUrl) return;
  const admin = new pg.Client({ connectionString: rootUrl });
  await admin.connect();
  await admin.query(`alter database ${TEMPLATE_DB} is_template false`).catch(() => undefined);
  await admin.query(`drop database if exists ${TEMPLATE_DB} with (force)`);
  await admin.end();
}
