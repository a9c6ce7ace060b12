// jobs:fan_out — one job per due organization, at its local hour, with a job key; a slot is
// enqueued once however often the fan-out runs, and a missed slot is caught up once.
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "@jest/globals";
import { createTestDb, sqlError, type TestDb } from "../helpers/db.ts";
import { createOrg, type TestOrg } from "../helpers/identity.ts";
import { jobs, runJobs } from "../helpers/worker.ts";
import { tenantSchedule } from "../../worker/tenant/registry.ts";

let db: TestDb;
let utc: TestOrg;
let newYork: TestOrg;
let kolkata: TestOrg;
// The slot logic does not depend on the task: these cases use tasks:recur alone (other modules'
// scheduled tasks, such as ai:score-leads, are enqueued by the same function).
const REGISTRY = JSON.stringify(tenantSchedule().filter((t) => t.identifier === "tasks:recur"));

beforeAll(async () => {
  db = await createTestDb();
  utc = await createOrg(db, "fan-utc"); // defaults: UTC, 03:00
  newYork = await createOrg(db, "fan-ny");
  kolkata = await createOrg(db, "fan-kolkata");
  await settings(newYork, { timezone: "America/New_York", daily_job_hour: 6 });
  await settings(kolkata, { timezone: "Asia/Kolkata" }); // UTC+05:30
});
afterAll(async () => {
  await db?.drop();
});
beforeEach(async () => {
  await db.owner.query("delete from crm_private.tenant_job_schedule");
  await db.owner.query("delete from graphile_worker._private_jobs");
});

function settings(org: TestOrg, values: Record<string, unknown>) {
  return db.owner.query("update crm.organizations set settings = settings || $2::jsonb where id = $1", [org.id, JSON.stringify(values)]);
}

/** Runs the fan-out as of an instant; returns "slug task slot(UTC)" for what it enqueued. */
async function fanOut(asOf: string, tasks = REGISTRY): Promise<string[]> {
  const { rows } = await db.owner.query(
    `select o.slug, f.task, to_char(f.slot at time zone 'UTC', 'YYYY-MM-DD HH24:MI') as slot
       from crm_private.fan_out_tenant_jobs($1::jsonb, $2::timestamptz) f join crm.organizations o on o.id = f.organization_id
      order by o.slug, f.task`,
    [tasks, asOf],
  );
  return rows.map((r) => `${r.slug} ${r.task} ${r.slot}`);
}

describe("daily slots in each organization's time zone", () => {
  test("the first run enqueues every organization once, for its latest slot; later runs only what has come since", async () => {
    expect(await fanOut("2024-06-10T12:00:00Z")).toEqual([
      "fan-kolkata tasks:recur 2024-06-09 21:30", // 03:00 IST
      "fan-ny tasks:recur 2024-06-10 10:00", // 06:00 EDT
      "fan-utc tasks:recur 2024-06-10 03:00",
    ]);
    expect(await fanOut("2024-06-10T12:00:00Z")).toEqual([]);
    expect(await fanOut("2024-06-10T12:15:00Z")).toEqual([]);
    expect(await fanOut("2024-06-10T21:30:00Z")).toEqual(["fan-kolkata tasks:recur 2024-06-10 21:30"]);
    expect(await fanOut("2024-06-11T03:00:00Z")).toEqual(["fan-utc tasks:recur 2024-06-11 03:00"]);
    expect(await fanOut("2024-06-11T09:59:00Z")).toEqual([]);
    expect(await fanOut("2024-06-11T10:14:00Z")).toEqual(["fan-ny tasks:recur 2024-06-11 10:00"]);
  });

  test("one job per organization, with its job key: a second enqueue while one is queued does not add another", async () => {
    await fanOut("2024-06-10T12:00:00Z");
    await fanOut("2024-06-10T21:30:00Z"); // Kolkata's next slot while its first job is still queued
    const queued = await db.owner.query<{ key: string; payload: Record<string, unknown>; max_attempts: number }>(
      "select key, payload, max_attempts from graphile_worker._private_jobs order by key",
    );
    expect(queued.rows.map((r) => r.key)).toEqual(
      [kolkata, newYork, utc].map((o) => `tenant:tasks:recur:${o.id}`).sort(),
    );
    const k = queued.rows.find((r) => r.key.endsWith(kolkata.id))!;
    expect(k.payload).toMatchObject({ organizationId: kolkata.id, slot: "2024-06-10T21:30:00+00:00" });
    expect(k.max_attempts).toBe(5);
    await db.owner.query("select crm_private.enqueue_tenant_job('tasks:recur', $1)", [utc.id]);
    expect(await jobs(db, "tasks:recur")).toHaveLength(3);
  });

  test("a missed slot is caught up once: three days without a fan-out give one job per organization", async () => {
    await fanOut("2024-06-10T12:00:00Z");
    expect(await fanOut("2024-06-13T12:00:00Z")).toEqual([
      "fan-kolkata tasks:recur 2024-06-12 21:30",
      "fan-ny tasks:recur 2024-06-13 10:00",
      "fan-utc tasks:recur 2024-06-13 03:00",
    ]);
    expect(await fanOut("2024-06-13T12:30:00Z")).toEqual([]);
  });

  test("changing the hour moves the next slot; moving it earlier does not run the day again", async () => {
    await fanOut("2024-06-10T12:00:00Z");
    await settings(utc, { daily_job_hour: 20 });
    try {
      expect(await fanOut("2024-06-10T19:59:00Z")).toEqual([]);
      expect(await fanOut("2024-06-10T20:00:00Z")).toEqual(["fan-utc tasks:recur 2024-06-10 20:00"]);
      await settings(utc, { daily_job_hour: 1 });
      const utcOnly = async (asOf: string) => (await fanOut(asOf)).filter((x) => x.startsWith("fan-utc"));
      expect(await utcOnly("2024-06-10T22:00:00Z")).toEqual([]); // today's 01:00 is older than the slot already run
      expect(await utcOnly("2024-06-11T01:00:00Z")).toEqual(["fan-utc tasks:recur 2024-06-11 01:00"]);
    } finally {
      await settings(utc, { daily_job_hour: 3 });
    }
  });
});

describe("daylight-saving changes", () => {
  test("a skipped local hour runs at the next valid time; a repeated local hour runs once", async () => {
    await settings(newYork, { daily_job_hour: 2 });
    try {
      const ny = async (asOf: string) => (await fanOut(asOf)).filter((x) => x.startsWith("fan-ny"));
      // 2024-03-10: 02:00 does not exist in New York (clocks go from 02:00 EST to 03:00 EDT).
      expect(await ny("2024-03-10T06:59:00Z")).toEqual(["fan-ny tasks:recur 2024-03-09 07:00"]);
      expect(await ny("2024-03-10T07:00:00Z")).toEqual(["fan-ny tasks:recur 2024-03-10 07:00"]);
      expect(await ny("2024-03-10T12:00:00Z")).toEqual([]);
      // 2024-11-03: with the hour at 01:00, 01:00–02:00 happens twice (EDT, then EST).
      await settings(newYork, { daily_job_hour: 1 });
      const runs: string[] = [];
      for (const t of ["04:30", "05:00", "05:30", "06:00", "06:30", "07:00"]) runs.push(...(await ny(`2024-11-03T${t}:00Z`)));
      expect(runs.filter((r) => r.includes("2024-11-03"))).toHaveLength(1);
    } finally {
      await settings(newYork, { daily_job_hour: 6 });
    }
  });
});

describe("other schedules", () => {
  test("weekly on the organization's weekday and hour, hourly every local hour, manual never", async () => {
    const tasks = JSON.stringify([
      { identifier: "test:weekly", schedule: "weekly" },
      { identifier: "test:hourly", schedule: "hourly" },
      { identifier: "test:manual", schedule: "manual" },
    ]);
    await settings(kolkata, { weekly_job_day: 3 }); // Wednesday
    try {
      const first = await fanOut("2024-06-12T12:10:00Z", tasks); // Wednesday
      expect(first).toEqual([
        "fan-kolkata test:hourly 2024-06-12 11:30", // 17:00 IST
        "fan-kolkata test:weekly 2024-06-11 21:30", // Wednesday 03:00 IST
        "fan-ny test:hourly 2024-06-12 12:00",
        "fan-ny test:weekly 2024-06-10 10:00", // Monday 06:00 EDT
        "fan-utc test:hourly 2024-06-12 12:00",
        "fan-utc test:weekly 2024-06-10 03:00", // Monday 03:00
      ]);
      expect(await fanOut("2024-06-12T12:40:00Z", tasks)).toEqual(["fan-kolkata test:hourly 2024-06-12 12:30"]);
      expect(await fanOut("2024-06-17T03:00:00Z", tasks)).toEqual([
        "fan-kolkata test:hourly 2024-06-17 02:30",
        "fan-ny test:hourly 2024-06-17 03:00",
        "fan-utc test:hourly 2024-06-17 03:00",
        "fan-utc test:weekly 2024-06-17 03:00",
      ]);
    } finally {
      await settings(kolkata, { weekly_job_day: 1 });
    }
  });
});

describe("settings", () => {
  test("an unknown time zone, an hour outside 0–23 or a weekday outside 1–7 is refused", async () => {
    const bad = [
      ["timezone", "Mars/Olympus_Mons", "CRVAL"],
      ["daily_job_hour", 24, "23514"],
      ["daily_job_hour", 2.5, "23514"],
      ["daily_job_hour", "3", "23514"],
      ["weekly_job_day", 0, "23514"],
    ] as const;
    for (const [key, value, code] of bad) {
      const err = await sqlError(settings(utc, { [key]: value }));
      expect([key, err.code]).toEqual([key, code]);
    }
  });

  test("an organization whose zone the server does not know (set before validation) runs on UTC", async () => {
    await db.owner.query("alter table crm.organizations disable trigger _110_time_zone");
    await settings(utc, { timezone: "Nowhere/Special" });
    await db.owner.query("alter table crm.organizations enable trigger _110_time_zone");
    try {
      expect((await fanOut("2024-06-10T12:00:00Z")).filter((x) => x.startsWith("fan-utc"))).toEqual(["fan-utc tasks:recur 2024-06-10 03:00"]);
    } finally {
      await settings(utc, { timezone: "UTC" });
    }
  });
});

describe("through the worker", () => {
  test("jobs:fan_out enqueues tasks:recur for every organization and the worker runs each under its own principal", async () => {
    await db.owner.query("select crm_private.add_job('jobs:fan_out', '{}'::jsonb)");
    await runJobs(db);
    const { rows } = await db.owner.query(
      `select o.slug, r.outcome from crm.job_runs r join crm.organizations o on o.id = r.organization_id where r.task = 'tasks:recur' order by o.slug`,
    );
    expect(rows).toEqual([
      { slug: "fan-kolkata", outcome: "succeeded" },
      { slug: "fan-ny", outcome: "succeeded" },
      { slug: "fan-utc", outcome: "succeeded" },
    ]);
    expect(await jobs(db)).toEqual([]);
    // The next tick within the same slot enqueues nothing.
    await db.owner.query("select crm_private.add_job('jobs:fan_out', '{}'::jsonb)");
    await runJobs(db);
    const again = await db.owner.query("select count(*)::int as n from crm.job_runs where task = 'tasks:recur'");
    expect(again.rows[0].n).toBe(3);
  });
});
