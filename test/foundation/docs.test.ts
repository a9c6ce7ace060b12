// The documentation stays tied to the code: every variable src/config.ts reads is in
// docs/configuration.md (and nothing there is invented), the generated SQLSTATE tables match
// src/http/errors.ts, relative links resolve, and the README stays a front page.
import fs from "node:fs/promises";
import path from "node:path";
import { expect, test } from "@jest/globals";
import { ROOT_DIR } from "../../src/config.ts";
import { withBlock } from "../../src/docs/blocks.ts";
import { appSqlstatesMarkdown, standardSqlstatesMarkdown, ERRORS_DOC } from "../../src/docs/errors-doc.ts";

const read = (f: string) => fs.readFile(path.join(ROOT_DIR, f), "utf8");

/** Variable names in the first column of the table under `heading` in docs/configuration.md. */
function tableVariables(doc: string, heading: string): string[] {
  const start = doc.indexOf(`\n## ${heading}\n`);
  if (start < 0) throw new Error(`docs/configuration.md has no "## ${heading}" section`);
  const next = doc.indexOf("\n## ", start + 1);
  const section = doc.slice(start, next < 0 ? undefined : next);
  return [...section.matchAll(/^\| `([A-Z][A-Z0-9_]*)` \|/gm)].map((m) => m[1]!);
}

test("every variable src/config.ts reads is documented in docs/configuration.md, and only those", async () => {
  const source = await read("src/config.ts");
  const read_ = new Set([...source.matchAll(/\benv\.([A-Z][A-Z0-9_]*)|\b(?:int|bool)\(env, "([A-Z][A-Z0-9_]*)"/g)].map((m) => m[1] ?? m[2]!));
  // Grafast reads GRAPHILE_ENV itself; src/cli/start.ts sets its default.
  read_.add("GRAPHILE_ENV");
  expect(read_.size).toBeGreaterThan(30);
  const documented = tableVariables(await read("docs/configuration.md"), "Service");
  expect([...read_].filter((v) => !documented.includes(v)).sort()).toEqual([]);
  expect(documented.filter((v) => !read_.has(v)).sort()).toEqual([]);
});

test("every environment variable the scripts, worker and tests read is documented", async () => {
  const doc = await read("docs/configuration.md");
  const files: string[] = [];
  const walk = async (dir: string) => {
    for (const e of await fs.readdir(path.join(ROOT_DIR, dir), { withFileTypes: true })) {
      const rel = path.join(dir, e.name);
      if (e.isDirectory()) await walk(rel);
      else if (/\.(ts|cjs|mjs)$/.test(e.name)) files.push(rel);
    }
  };
  for (const dir of ["src", "worker", "test", "scripts"]) await walk(dir);
  const names = new Set<string>();
  for (const f of files) for (const m of (await read(f)).matchAll(/process\.env\.([A-Z][A-Z0-9_]*)/g)) names.add(m[1]!);
  for (const m of (await read(".ci/run")).matchAll(/\$\{([A-Z][A-Z0-9_]*):-/g)) names.add(m[1]!);
  names.delete("PATH");
  expect([...names].filter((n) => !doc.includes("`" + n + "`")).sort()).toEqual([]);
});

test("docs/errors.md's SQLSTATE tables are src/http/errors.ts's (regenerate with npm run schema:export)", async () => {
  const doc = await fs.readFile(ERRORS_DOC, "utf8");
  const expected = withBlock(withBlock(doc, "app-sqlstates", appSqlstatesMarkdown()), "standard-sqlstates", standardSqlstatesMarkdown());
  expect(doc).toBe(expected);
  expect(doc).toContain("| `23505` | unique_violation | `CONFLICT` |");
});

test("relative links in README.md and docs/ point at files and headings that exist", async () => {
  const docs = ["README.md", ...(await fs.readdir(path.join(ROOT_DIR, "docs"))).filter((f) => f.endsWith(".md")).map((f) => `docs/${f}`)];
  const slug = (h: string) => h.trim().toLowerCase().replace(/[^\p{L}\p{N} _-]/gu, "").replace(/ /g, "-");
  const headings = async (f: string) => {
    const text = (await read(f)).replace(/^```[\s\S]*?^```/gm, "");
    return new Set([...text.matchAll(/^#{1,6} (.+)$/gm)].map((m) => slug(m[1]!)));
  };
  const broken: string[] = [];
  for (const f of docs) {
    const text = (await read(f)).replace(/^```[\s\S]*?^```/gm, "");
    for (const m of text.matchAll(/\]\(([^)\s]+)\)/g)) {
      const target = m[1]!;
      if (/^[a-z]+:/.test(target)) continue;
      const [file, anchor] = target.split("#") as [string, string | undefined];
      const resolved = file ? path.normalize(path.join(path.dirname(f), file)) : f;
      const exists = await fs.stat(path.join(ROOT_DIR, resolved)).then(() => true, () => false);
      if (!exists) broken.push(`${f}: ${target}`);
      else if (anchor && resolved.endsWith(".md") && !(await headings(resolved)).has(anchor)) broken.push(`${f}: ${target} (no such heading)`);
    }
  }
  expect(broken).toEqual([]);
});

test("README.md is a front page (at most 300 lines) that links every document in docs/", async () => {
  const readme = await read("README.md");
  expect(readme.split("\n").length).toBeLessThanOrEqual(300);
  const index = await read("docs/README.md");
  const documents = (await fs.readdir(path.join(ROOT_DIR, "docs"))).filter((f) => f.endsWith(".md") && f !== "README.md");
  expect(documents.filter((f) => !index.includes(`](${f}`))).toEqual([]);
});
