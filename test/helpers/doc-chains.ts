// The `# run as <user>` chains of a document in docs/ (docs/contributing.md, "Documentation examples"):
// each marked GraphQL block in order, with the JSON block after it as its variables.
import fs from "node:fs/promises";
import path from "node:path";
import { ROOT_DIR } from "../../src/config.ts";

export interface ChainExample {
  who: string;
  query: string;
  variables: string | null;
}

export async function docChain(doc: string): Promise<ChainExample[]> {
  const md = await fs.readFile(path.join(ROOT_DIR, "docs", doc), "utf8");
  const blocks = [...md.matchAll(/```(graphql|json)\n([\s\S]*?)```/g)].map((m) => ({ lang: m[1]!, body: m[2]! }));
  const found: ChainExample[] = [];
  blocks.forEach((b, i) => {
    const who = b.lang === "graphql" ? b.body.match(/^# run as (\S+)\n/)?.[1] : undefined;
    if (!who) return;
    const next = blocks[i + 1];
    found.push({ who, query: b.body, variables: next?.lang === "json" ? next.body : null });
  });
  return found;
}
