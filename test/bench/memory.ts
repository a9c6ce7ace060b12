// npm run bench -- memory (or run this file alone): sends 10,000 distinct valid GraphQL documents to
// a running server and prints its RSS before and after. Every document is different text (so each
// one is parsed, validated and planned anew); the caches of documents and plans are bounded, so the
// resident memory should level off (goal: growth under 100 MB).
import { rssMb, startScratch } from "./scratch.ts";

/** The server's V8 heap in use and reserved, in MB (its /metrics, prom-client's default metrics). */
async function heapMb(url: string): Promise<{ used: number; total: number }> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const read = (name: string) => Math.round(Number(new RegExp(`^${name} (\\S+)`, "m").exec(text)?.[1] ?? NaN) / 1048576);
  return { used: read("cairn_process_nodejs_heap_size_used_bytes"), total: read("cairn_process_nodejs_heap_size_total_bytes") };
}

const TOTAL = Number(process.env.BENCH_DOCUMENTS ?? 10_000);
const CONCURRENCY = 4;
const LISTS = [
  ["customers", ["name", "status", "email", "phone", "industry", "createdAt", "leadScore"]],
  ["deals", ["name", "amount", "currency", "probability", "expectedCloseDate", "createdAt"]],
  ["tasks", ["title", "status", "priority", "dueAt", "createdAt", "type"]],
  ["contacts", ["firstName", "lastName", "email", "phone", "title", "createdAt"]],
] as const;

/** The i-th distinct document: a list, a page size, a subset of fields, an alias and a name. */
function documentFor(i: number): string {
  const [list, fields] = LISTS[i % LISTS.length]!;
  const chosen = fields.filter((_, k) => (i >> k) & 1);
  const selection = (chosen.length ? chosen : [fields[0]]).join(" ");
  return `query Q${i} { l${i % 97}: ${list}(first: ${1 + (i % 50)}) { totalCount nodes { rowId ${selection} } } }`;
}

const scratch = await startScratch("memory");
const { server, token } = scratch;
const pid = server.process.pid!;
try {
  const errors: string[] = [];
  const send = async (from: number, to: number) => {
    let next = from;
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (next < to) {
          const i = next++;
          const r = await server.gql(documentFor(i), {}, { token });
          if (r.body.errors && errors.length < 5) errors.push(`${documentFor(i)} → ${r.body.errors[0]?.message}`);
        }
      }),
    );
  };
  await send(0, 50); // warm-up: schema, JIT, connection pool
  const before = await rssMb(pid);
  const heapBefore = await heapMb(server.url);
  const marks: [number, number, { used: number; total: number }][] = [];
  const t0 = performance.now();
  for (let done = 50; done < TOTAL + 50; done += 1000) {
    await send(done, Math.min(done + 1000, TOTAL + 50));
    marks.push([done + 1000 - 50, await rssMb(pid), await heapMb(server.url)]);
  }
  const seconds = (performance.now() - t0) / 1000;
  const after = await rssMb(pid);
  process.stdout.write(
    [
      "",
      `Memory under ${TOTAL} distinct documents (server RSS, MB; document cache ${process.env.GRAPHQL_DOCUMENT_CACHE_SIZE ?? 200}, plan cache ${process.env.GRAPHQL_PLAN_CACHE_SIZE ?? 100} operations${process.env.NODE_OPTIONS ? `, NODE_OPTIONS ${process.env.NODE_OPTIONS}` : ""}${process.env.MALLOC_ARENA_MAX ? `, MALLOC_ARENA_MAX ${process.env.MALLOC_ARENA_MAX}` : ""})`,
      "",
      "| documents sent | RSS MB | V8 heap used / reserved MB |",
      "|---------------:|-------:|---------------------------:|",
      `| 0 (after warm-up) | ${before} | ${heapBefore.used} / ${heapBefore.total} |`,
      ...marks.map(([n, mb, heap]) => `| ${n} | ${mb} | ${heap.used} / ${heap.total} |`),
      "",
      `RSS before ${before} MB, after ${after} MB: growth ${after - before} MB (goal < 100 MB); ${(TOTAL / seconds).toFixed(0)} documents/s; errors: ${errors.length ? errors.join("; ") : "none"}`,
      "",
    ].join("\n"),
  );
} finally {
  await scratch.stop();
}
