// imports:run — applies a large staged CSV import (queued by POST /import/:entity).
import type { Task } from "graphile-worker";
import { assertPayload, type TaskContext } from "../types.ts";
import { runImport, ImportRunError } from "../../src/imports/run.ts";

export function makeImportsRun(ctx: TaskContext): Task {
  return async (payload) => {
    const { importJobId } = assertPayload<{ importJobId: string }>(payload, (v) => typeof v.importJobId === "string");
    try {
      const summary = await runImport(ctx.ownerPool, importJobId);
      ctx.logger.info({ task: "imports:run", ...summary }, "import finished");
    } catch (err) {
      // The job's own status says failed; retrying would fail the same way.
      ctx.logger.warn({ task: "imports:run", importJobId, err }, "import failed");
      if (!(err instanceof ImportRunError)) throw err;
    }
  };
}
