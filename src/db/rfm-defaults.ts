// The RFM settings a new organization starts with come from the environment (RFM_DEFAULT_*,
// src/config.ts); the service writes them to crm_private.rfm_defaults at start-up, where the
// organization trigger reads them (migrations: crm_private.seed_rfm_settings). The database checks
// them like a settings row: a value it refuses stops the start with the field named.
import type pg from "pg";
import { StartupError, type Config } from "../config.ts";

export async function applyRfmDefaults(ownerPool: pg.Pool, config: Pick<Config, "rfmDefaults">): Promise<void> {
  try {
    await ownerPool.query("select crm_private.set_rfm_defaults($1::jsonb)", [JSON.stringify(config.rfmDefaults)]);
  } catch (err) {
    const e = err as { code?: string; message?: string; column?: string };
    if (e.code === "42883" || e.code === "3F000") return; // a database without the RFM module yet
    if (e.code === "CRVAL") throw new StartupError(`RFM defaults (RFM_DEFAULT_*): ${e.message}`);
    throw err;
  }
}
