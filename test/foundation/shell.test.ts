// Small pieces of the shell that are checked directly: the Node version gate and request-scoped logs.
import { createRequire } from "node:module";
import { Writable } from "node:stream";
import { expect, test } from "@jest/globals";
import { createLogger, requestScope } from "../../src/logger.ts";

const require = createRequire(import.meta.url);

test("an old Node gets one line naming the version needed", () => {
  const { nodeVersionProblem } = require("../../scripts/require-node.cjs") as { nodeVersionProblem: (v: string) => string | null };
  expect(nodeVersionProblem("20.20.2")).toBe("Cairn needs Node.js 22.18 or newer (24 LTS recommended); this is Node.js 20.20.2. See .nvmrc.");
  expect(nodeVersionProblem("22.17.1")).toMatch(/needs Node\.js 22\.18/);
  expect(nodeVersionProblem("22.18.0")).toBeNull();
  expect(nodeVersionProblem("24.21.0")).toBeNull();
});

test("every line logged while serving a request carries its request id, and no other line does", async () => {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      lines.push(JSON.parse(chunk.toString()));
      cb();
    },
  });
  const logger = createLogger("info", sink);
  await requestScope.run({ requestId: "req-1" }, async () => {
    logger.info("before");
    await new Promise((r) => setTimeout(r, 5));
    logger.error({ errorId: "e1", req: { headers: { authorization: "Bearer secret" } } }, "after an await");
  });
  logger.info("outside");
  expect(lines.map((l) => [l.msg, l.requestId])).toEqual([
    ["before", "req-1"],
    ["after an await", "req-1"],
    ["outside", undefined],
  ]);
  expect(JSON.stringify(lines)).not.toContain("Bearer secret");
});
