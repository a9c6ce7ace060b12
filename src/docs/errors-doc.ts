// docs/errors.md's two SQLSTATE tables, generated from src/http/errors.ts: the mapping objects, and
// the condition names from the comments beside each standard SQLSTATE there.
import fs from "node:fs";
import path from "node:path";
import { ROOT_DIR } from "../config.ts";
import { APP_SQLSTATES, STANDARD_SQLSTATES } from "../http/errors.ts";

export const ERRORS_DOC = path.join(ROOT_DIR, "docs", "errors.md");

function conditionNames(): Map<string, string> {
  const source = fs.readFileSync(path.join(ROOT_DIR, "src", "http", "errors.ts"), "utf8");
  const names = new Map<string, string>();
  for (const m of source.matchAll(/^\s*"?([0-9A-Z]{5})"?:\s*"[A-Z_]+",\s*\/\/\s*(.+)$/gm)) names.set(m[1]!, m[2]!.trim());
  return names;
}

export function appSqlstatesMarkdown(): string {
  const rows = Object.entries(APP_SQLSTATES).map(([state, code]) => `| \`${state}\` | \`${code}\` |`);
  return ["| SQLSTATE | `extensions.code` |", "| --- | --- |", ...rows].join("\n");
}

export function standardSqlstatesMarkdown(): string {
  const names = conditionNames();
  const rows = Object.entries(STANDARD_SQLSTATES).map(([state, code]) => {
    const name = names.get(state);
    if (!name) throw new Error(`src/http/errors.ts: SQLSTATE ${state} needs a comment naming its condition`);
    return `| \`${state}\` | ${name} | \`${code}\` |`;
  });
  return ["| SQLSTATE | condition | `extensions.code` |", "| --- | --- | --- |", ...rows].join("\n");
}
