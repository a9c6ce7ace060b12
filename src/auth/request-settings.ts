// One statement opens a request. @dataplan/pg opens each transaction with `begin`, then one
// statement applying pgSettings, then the query. For a request with a Cairn token that statement
// becomes `crm_private.begin_request(…)`, which checks the session and then applies the settings
// (migrations/current/800-request-settings.sql): the session check costs no round trip of its own.
// Fail-closed: if the statement is ever not recognised here, the claims stay in
// `cairn.pending_claims` and the request runs as crm_anonymous.
import type pg from "pg";
import { requestScope } from "../logger.ts";

/** The statement @dataplan/pg sends (node_modules/@dataplan/pg/dist/adaptors/pg.js). */
export const DATAPLAN_SET_CONFIG = "select set_config(el->>0, el->>1, true) from json_array_elements($1::json) el";
const BEGIN_REQUEST = "select crm_private.begin_request($1::json)";

/** Requests (by their log scope) whose session check failed: they answer HTTP 401. */
export const invalidSessions = new WeakSet<object>();

export function isSessionFailure(e: unknown): boolean {
  const err = e as { code?: string; hint?: string } | null;
  return err?.code === "CRUNA" && err.hint === "cairn:session";
}

type Query = pg.PoolClient["query"];

let statements = 0;
/** Statements sent on the API's (authenticator) connections since start: cairn_pg_statements_total. */
export const statementCount = () => statements;

/** Wraps a client's query so that the settings statement of a signed-in request checks the session. */
export function withSessionCheck(client: pg.PoolClient): void {
  const original = client.query.bind(client) as (...args: unknown[]) => unknown;
  client.query = function (this: unknown, ...args: unknown[]) {
    statements++;
    const first = args[0] as { text?: string; values?: unknown[] } | undefined;
    if (first && typeof first === "object" && first.text === DATAPLAN_SET_CONFIG && String(first.values?.[0]).includes('"cairn.pending_claims"')) {
      const result = original({ ...first, text: BEGIN_REQUEST }, ...args.slice(1)) as Promise<unknown>;
      const scope = requestScope.getStore();
      if (scope) result.catch((e) => isSessionFailure(e) && invalidSessions.add(scope));
      return result;
    }
    return original(...args);
  } as Query;
}
