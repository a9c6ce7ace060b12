// npm run bench [-- <area> …] [-- --small]: the project's performance record. Each area is one file
// under test/bench/ exporting `default (ctx) => Promise<void>` that prints its table; no area named
// runs them all. Speed is never asserted: the tables go into docs/benchmarks.md by hand.
import type { BenchContext } from "./context.ts";

// Grafast reads it when it loads: production mode is what the bench measures.
process.env.GRAPHILE_ENV ??= "production";
const { createBenchContext } = await import("./context.ts");

/** One line per area (other areas hook in here). */
const AREAS: Record<string, () => Promise<{ default: (ctx: BenchContext) => Promise<void> }>> = {
  startup: () => import("./startup.ts"),
  api: () => import("./api.ts"),
  cluster: () => import("./cluster.ts"),
  // CSV import and export build their own database (the import needs an empty organization).
  import: async () => {
    const { runImportBench } = await import("./import.ts");
    return { default: (ctx: BenchContext) => runImportBench({ small: ctx.small }) };
  },
};

const args = process.argv.slice(2);
const small = args.includes("--small");
const asked = args.filter((a) => !a.startsWith("--"));
const unknown = asked.filter((a) => !(a in AREAS));
if (unknown.length) {
  process.stderr.write(`unknown bench area ${unknown.join(", ")}; areas: ${Object.keys(AREAS).join(", ")}\n`);
  process.exit(2);
}
const areas = asked.length ? asked : Object.keys(AREAS);
process.stdout.write(`Cairn benchmark — ${new Date().toISOString().slice(0, 10)}, node ${process.version}, areas: ${areas.join(", ")}\n`);
const ctx = await createBenchContext(small);
try {
  for (const area of areas) {
    process.stdout.write(`\n## ${area}\n`);
    await (await AREAS[area]!()).default(ctx);
  }
} finally {
  await ctx.close();
}
