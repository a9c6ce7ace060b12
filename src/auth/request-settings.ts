// One statement opens a request. @dataplan/pg opens each transaction with `begin`, then one
// statement applying pgSettings, then the query. For a request with a Cairn token that statement
// becomes `crm_private.begin_request(…)`, which checks the session and then applies the settings
// (migrations/current/800-request-settings.sql): the session check costs no round trip of its own.
// Fail-closed: if the statement is ever not recognised here, the claims stay in
// `cairn.pending_claims` and the request runs as crm_anonymous.
//
// `begin` costs no round trip of its own either: it is held back and sent in one simple-protocol
// message with the settings statement that always follows it (`begin; select …('<settings>'::json)`,
// the settings as an escaped literal). A request is then three round trips: begin with the
// settings, the query, commit. Anything else that follows a held `begin` sends it first, in order.
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
let roundTrips = 0;
/** Statements sent on the API's (authenticator) connections since start: cairn_pg_statements_total. */
export const statementCount = () => statements;
/** Messages (round trips) those statements took: cairn_pg_round_trips_total. */
export const roundTripCount = () => roundTrips;

/** What pg resolves a `begin` with (the caller, @dataplan/pg, does not read it). */
const BEGIN_RESULT = Object.freeze({ command: "BEGIN", rowCount: null, oid: 0, rows: [], fields: [] });

const isBegin = (args: unknown[]) => args.length === 1 && (args[0] as { text?: unknown } | undefined)?.text === "begin" && !(args[0] as { values?: unknown }).values;

/** Wraps a client's query so that the settings statement of a signed-in request checks the session. */
export function withSessionCheck(client: pg.PoolClient): void {
  const original = client.query.bind(client) as (...args: unknown[]) => unknown;
  let beginHeld = false;
  client.query = function (this: unknown, ...args: unknown[]) {
    statements++;
    if (!beginHeld && isBegin(args)) {
      beginHeld = true;
      return Promise.resolve(BEGIN_RESULT);
    }
    const first = args[0] as { text?: string; values?: unknown[] } | undefined;
    const settings = first && typeof first === "object" && first.text === DATAPLAN_SET_CONFIG && first.values?.length === 1 ? String(first.values[0]) : undefined;
    const held = beginHeld;
    beginHeld = false;
    roundTrips++;
    if (settings === undefined) {
      if (held) {
        // Not the settings statement: the held begin goes first (pg sends queries in order).
        roundTrips++;
        (original({ text: "begin" }) as Promise<unknown>).catch(() => undefined);
      }
      return original(...args);
    }
    const claims = settings.includes('"cairn.pending_claims"');
    const literal = `${client.escapeLiteral(settings)}::json`;
    const statement = claims ? `select crm_private.begin_request(${literal})` : DATAPLAN_SET_CONFIG.replace("$1::json", () => literal);
    const result = (held ? original(`begin; ${statement}`) : original(statement)) as Promise<unknown>;
    if (claims) {
      const scope = requestScope.getStore();
      if (scope) result.catch((e) => isSessionFailure(e) && invalidSessions.add(scope));
    }
    return result;
  } as Query;
}
