// npm run bench -- abuse (or run this file alone): how fast abusive documents are refused, and how
// /health answers while they are sent in parallel. Prints a table; asserts nothing.
import { Worker } from "node:worker_threads";
import { ABUSIVE_DOCUMENTS } from "../hardening/documents.ts";
import { startScratch } from "./scratch.ts";

const REPEAT = 5;
const FLOOD_SECONDS = Number(process.env.BENCH_FLOOD_SECONDS ?? 10);
const FLOOD_CONCURRENCY = 8;

const FLOODER = `
const { parentPort, workerData } = require("node:worker_threads");
const { url, docs, concurrency } = workerData;
let stop = false;
let sent = 0;
parentPort.on("message", () => { stop = true; });
const loops = Array.from({ length: concurrency }, async (_, k) => {
  for (let i = k; !stop; i++) {
    const d = docs[i % docs.length];
    const r = await fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ query: d.query, variables: d.variables ?? {} }) });
    await r.arrayBuffer();
    sent++;
  }
});
Promise.all(loops).then(() => parentPort.postMessage(sent));
`;
const percentile = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
const scratch = await startScratch("abuse");
const { server, token } = scratch;
try {
  const rows: string[] = [];
  for (const doc of ABUSIVE_DOCUMENTS) {
    for (const who of ["anonymous", "signed in"] as const) {
      const times: number[] = [];
      let code = "";
      for (let i = 0; i < REPEAT + 1; i++) {
        const t0 = performance.now();
        const r = await server.gql(doc.query, doc.variables ?? {}, who === "signed in" ? { token } : {});
        if (i > 0) times.push(performance.now() - t0); // the first request warms the document cache path
        code = `${r.status} ${r.body.errors?.[0]?.extensions?.code ?? "-"} ${r.body.errors?.[0]?.extensions?.limit ?? ""}`;
      }
      times.sort((a, b) => a - b);
      rows.push(`| ${doc.name.padEnd(46)} | ${who.padEnd(9)} | ${code.padEnd(34)} | ${percentile(times, 50).toFixed(1).padStart(6)} | ${times.at(-1)!.toFixed(1).padStart(6)} |`);
    }
  }

  // The flood runs in a worker thread, so building and sending 100 KB bodies does not delay this
  // thread's /health measurements.
  const health = async (seconds: number, flood: boolean) => {
    const worker = flood
      ? new Worker(FLOODER, { eval: true, workerData: { url: `${server.url}/graphql`, docs: ABUSIVE_DOCUMENTS, concurrency: FLOOD_CONCURRENCY } })
      : undefined;
    const stopped = worker ? new Promise<number>((resolve) => worker.once("message", (n: number) => resolve(n))) : Promise.resolve(0);
    const times: number[] = [];
    const end = performance.now() + seconds * 1000;
    while (performance.now() < end) {
      const t0 = performance.now();
      await fetch(`${server.url}/health`);
      times.push(performance.now() - t0);
      await new Promise((r) => setTimeout(r, 20));
    }
    worker?.postMessage("stop");
    const sent = await stopped;
    await worker?.terminate();
    times.sort((a, b) => a - b);
    return { p50: percentile(times, 50), p95: percentile(times, 95), max: times.at(-1)!, n: times.length, sent };
  };
  const idle = await health(3, false);
  const busy = await health(FLOOD_SECONDS, true);
  process.stdout.write(
    [
      "",
      "Abusive documents: answer and time to refuse (ms over HTTP, median and max of 5)",
      "",
      "| document                                       | caller    | answer                             |    p50 |    max |",
      "|------------------------------------------------|-----------|------------------------------------|--------|--------|",
      ...rows,
      "",
      `/health idle: p50 ${idle.p50.toFixed(1)} ms, p95 ${idle.p95.toFixed(1)} ms, max ${idle.max.toFixed(1)} ms (${idle.n} requests)`,
      `/health while ${FLOOD_CONCURRENCY} clients send abusive documents for ${FLOOD_SECONDS} s (${busy.sent} documents): p50 ${busy.p50.toFixed(1)} ms, p95 ${busy.p95.toFixed(1)} ms, max ${busy.max.toFixed(1)} ms (${busy.n} requests)`,
      "",
    ].join("\n"),
  );
} finally {
  await scratch.stop();
}
