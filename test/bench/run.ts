// npm run bench [-- <area> …] [-- --small]: the project's performance record. Each area is one file
// under test/bench/ and prints its table; no area named runs them all. Areas of AREAS share one
// seeded organization (BenchContext); STANDALONE areas build their own server and data (the memory
// and abuse runs need a server of their own; the import needs an empty organization). Speed is never
// asserted: the tables go into docs/benchmarks.md by hand.
import type { BenchContext } from "./context.ts";

// Grafast reads it when it loads: production mode is what the bench measures.
process.env.GRAPHILE_ENV ??= "production";
const { createBenchContext } = await import("./context.ts");

const args = process.argv.slice(2);
const small = args.includes("--small");

/** Areas on the shared seeded organization (other areas hook in here, one line each). */
const AREAS: Record<string, () => Promise<{ default: (ctx: BenchContext) => Promise<void> }>> = {
  startup: () => import("./startup.ts"),
  api: () => import("./api.ts"),
  cluster: () => import("./cluster.ts"),
  commerce: () => import("./commerce.ts"),
  rfm: () => import("./rfm.ts"),
};

/** Areas that set themselves up (a module that runs when imported, or a function). */
const STANDALONE: Record<string, () => Promise<unknown>> = {
  memory: () => import("./memory.ts"),
  abuse: () => import("./abuse.ts"),
  import: async () => (await import("./import.ts")).runImportBench({ small }),
  campaigns: async () => (await import("./campaigns.ts")).runCampaignsBench({ small }),
};

const asked = args.filter((a) => !a.startsWith("--"));
const unknown = asked.filter((a) => !(a in AREAS) && !(a in STANDALONE));
if (unknown.length) {
  process.stderr.write(`unknown bench area ${unknown.join(", ")}; areas: ${[...Object.keys(AREAS), ...Object.keys(STANDALONE)].join(", ")}\n`);
  process.exit(2);
}
const areas = asked.length ? asked : [...Object.keys(AREAS), ...Object.keys(STANDALONE)];
process.stdout.write(`Cairn benchmark — ${new Date().toISOString().slice(0, 10)}, node ${process.version}, areas: ${areas.join(", ")}\n`);
const shared = areas.filter((a) => a in AREAS);
if (shared.length) {
  const ctx = await createBenchContext(small);
  try {
    for (const area of shared) {
      process.stdout.write(`\n## ${area}\n`);
      await (await AREAS[area]!()).default(ctx);
    }
  } finally {
    await ctx.close();
  }
}
for (const area of areas.filter((a) => a in STANDALONE)) {
  process.stdout.write(`\n## ${area}\n`);
  await STANDALONE[area]!();
}
