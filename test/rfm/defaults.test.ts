// The RFM settings a new organization starts with come from the environment (RFM_DEFAULT_*): parsed
// and checked by src/config.ts, written at start-up, copied into each new organization's settings;
// existing organizations keep theirs. rfm:score is on the daily tenant schedule.
import { afterAll, beforeAll, expect, test } from "@jest/globals";
import { createTestDb, type TestDb } from "../helpers/db.ts";
import { createOrg } from "../helpers/identity.ts";
import { ConfigError, loadConfig, StartupError } from "../../src/config.ts";
import { applyRfmDefaults } from "../../src/db/rfm-defaults.ts";
import { tenantSchedule } from "../../worker/tenant/registry.ts";

let db: TestDb;
beforeAll(async () => {
  db = await createTestDb();
});
afterAll(async () => {
  await db?.drop();
});

const settingsOf = async (orgId: string) =>
  (await db.owner.query(
    `select mode, recency_breaks, frequency_breaks, monetary_breaks::text[], recency_weight::text, frequency_weight::text,
            monetary_weight::text, lookback_days, counted_statuses, scores_retention_days
       from crm.rfm_settings where organization_id = $1`,
    [orgId],
  )).rows[0];

test("new organizations take the configured defaults; existing ones keep their settings", async () => {
  const before = await createOrg(db, "rfm-defaults-before");
  const config = loadConfig({
    NODE_ENV: "test",
    RFM_DEFAULT_MODE: "quintiles",
    RFM_DEFAULT_RECENCY_DAYS: "7,30,60,120",
    RFM_DEFAULT_FREQUENCY_ORDERS: "2,4,8,16",
    RFM_DEFAULT_MONETARY: "50,100.5,200,400",
    RFM_DEFAULT_WEIGHTS: "2,1,0",
    RFM_DEFAULT_LOOKBACK_DAYS: "365",
    RFM_DEFAULT_COUNTED_STATUSES: "paid",
    RFM_SCORES_RETENTION_DAYS: "30",
  });
  await applyRfmDefaults(db.owner, config);
  const after = await createOrg(db, "rfm-defaults-after");
  expect(await settingsOf(after.id)).toEqual({
    mode: "quintiles", recency_breaks: [7, 30, 60, 120], frequency_breaks: [2, 4, 8, 16], monetary_breaks: ["50.00", "100.50", "200.00", "400.00"],
    recency_weight: "2.000", frequency_weight: "1.000", monetary_weight: "0.000", lookback_days: 365, counted_statuses: ["paid"],
    scores_retention_days: 30,
  });
  expect((await settingsOf(before.id)).mode).toBe("thresholds");
  // Back to the built-in defaults for the other tests of this database.
  await applyRfmDefaults(db.owner, loadConfig({ NODE_ENV: "test" }));
  expect((await settingsOf((await createOrg(db, "rfm-defaults-again")).id)).mode).toBe("thresholds");
});

test("bad values stop the start, naming the variable", async () => {
  expect(() => loadConfig({ RFM_DEFAULT_RECENCY_DAYS: "30,20,180,365" })).toThrow(ConfigError);
  expect(() => loadConfig({ RFM_DEFAULT_RECENCY_DAYS: "30,90,180" })).toThrow(/RFM_DEFAULT_RECENCY_DAYS/);
  expect(() => loadConfig({ RFM_DEFAULT_WEIGHTS: "0,0,0" })).toThrow(/RFM_DEFAULT_WEIGHTS/);
  expect(() => loadConfig({ RFM_DEFAULT_MODE: "deciles" })).toThrow(/RFM_DEFAULT_MODE/);
  expect(() => loadConfig({ RFM_DEFAULT_COUNTED_STATUSES: "paid,cancelled" })).toThrow(/RFM_DEFAULT_COUNTED_STATUSES/);
  // The database checks them too (a configuration built by other means).
  const config = loadConfig({ NODE_ENV: "test" });
  await expect(applyRfmDefaults(db.owner, { rfmDefaults: { ...config.rfmDefaults, frequency_breaks: [0, 1, 2, 3] } })).rejects.toThrow(StartupError);
});

test("rfm:score and loyalty:expire are daily tenant jobs", () => {
  expect(tenantSchedule()).toEqual(expect.arrayContaining([
    { identifier: "rfm:score", schedule: "daily", max_attempts: 5 },
    { identifier: "loyalty:expire", schedule: "daily", max_attempts: 5 },
  ]));
});
