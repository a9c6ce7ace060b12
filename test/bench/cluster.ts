// Several API processes behind one port (API_PROCESSES, node:cluster): the nested list as a Sales
// Manager at 8 clients, with 1 and with more processes.
import { fmt, httpLoad, type BenchContext } from "./context.ts";
import { CASES } from "./api.ts";

export default async function run(ctx: BenchContext): Promise<void> {
  const nested = CASES.find((c) => c.name.startsWith("nested"))!;
  const token = await ctx.callers[0]!.token();
  const rows: string[] = [];
  for (const processes of (process.env.BENCH_API_PROCESSES ?? "1,2").split(",")) {
    const server = await ctx.startServer({ API_PROCESSES: processes });
    try {
      await httpLoad(server.url, token, nested.query, {}, 8, 2); // warm every process
      const s = await httpLoad(server.url, token, nested.query, {}, 8);
      rows.push(`| ${processes} | ${fmt(s.rps, 0)} | ${fmt(s.p50)} / ${fmt(s.p95)} / ${fmt(s.p99)} | ${s.errors} |`);
    } finally {
      await server.stop();
    }
  }
  process.stdout.write(
    ["", "API processes (nested list, Sales Manager, 8 clients)", "", "| API_PROCESSES | req/s | ms p50 / p95 / p99 | errors |", "| --- | --- | --- | --- |", ...rows, ""].join("\n"),
  );
}
