// Error masking: every error a caller can cause leaves with a stable `extensions.code` (and the field
// at fault where there is one); anything else is masked as INTERNAL with an error id that is logged.
// The SQLSTATE tables below are rendered into docs/errors.md by npm run schema:export (name the
// condition in a comment beside each standard SQLSTATE: the generator reads it).
import crypto from "node:crypto";
import { GraphQLError } from "postgraphile/graphql";
import { SafeError } from "postgraphile/grafast";
import type { Logger } from "pino";
import { ClientGoneError } from "./cancel.ts";

export type ErrorCode =
  | "VALIDATION"
  | "NOT_FOUND"
  | "CONFLICT"
  | "FORBIDDEN"
  | "UNAUTHENTICATED"
  | "INVALID_STATE"
  | "RATE_LIMITED"
  | "INVALID_CREDENTIALS"
  | "ACCOUNT_DISABLED"
  | "MEMBERSHIP_DISABLED"
  | "EMAIL_NOT_CONFIRMED"
  | "INVALID_TOKEN"
  | "GRAPHQL_VALIDATION"
  | "QUERY_TOO_COMPLEX"
  | "QUERY_TIMEOUT"
  | "TRUSTED_DOCUMENT_REQUIRED"
  | "INTERNAL";

/** Application SQLSTATEs raised by our PL/pgSQL (class "CR", never used by PostgreSQL itself). */
export const APP_SQLSTATES: Record<string, ErrorCode> = {
  CRVAL: "VALIDATION",
  CRNFD: "NOT_FOUND",
  CRCNF: "CONFLICT",
  CRFBD: "FORBIDDEN",
  CRUNA: "UNAUTHENTICATED",
  CRSTA: "INVALID_STATE",
  CRRLM: "RATE_LIMITED",
  CRCRD: "INVALID_CREDENTIALS",
  CRDIS: "ACCOUNT_DISABLED",
  CRMDS: "MEMBERSHIP_DISABLED",
  CRECF: "EMAIL_NOT_CONFIRMED",
  CRTOK: "INVALID_TOKEN",
};

/** Standard SQLSTATEs a caller can provoke with bad input. */
export const STANDARD_SQLSTATES: Record<string, ErrorCode> = {
  "23505": "CONFLICT", // unique_violation
  "23P01": "CONFLICT", // exclusion_violation
  "23503": "VALIDATION", // foreign_key_violation (includes references into another tenant)
  "23514": "VALIDATION", // check_violation
  "23502": "VALIDATION", // not_null_violation
  "22P02": "VALIDATION", // invalid_text_representation (bad uuid, enum, number)
  "22001": "VALIDATION", // string_data_right_truncation
  "22003": "VALIDATION", // numeric_value_out_of_range
  "22007": "VALIDATION", // invalid_datetime_format
  "22008": "VALIDATION", // datetime_field_overflow
  "22023": "VALIDATION", // invalid_parameter_value
  "22004": "VALIDATION", // null_value_not_allowed
  "2201B": "VALIDATION", // invalid_regular_expression
  "22030": "VALIDATION", // duplicate_json_object_key_value
  "22032": "VALIDATION", // invalid_json_text
  "22021": "VALIDATION", // character_not_in_repertoire (e.g. a NUL byte)
  "22P05": "VALIDATION", // untranslatable_character (\u0000 in JSON)
  "22025": "VALIDATION", // invalid_escape_sequence
  "22P03": "VALIDATION", // invalid_binary_representation
  "54000": "VALIDATION", // program_limit_exceeded (e.g. a value too large for an index)
  "57014": "QUERY_TIMEOUT", // query_canceled: statement_timeout, or the client went away
  "42501": "FORBIDDEN", // insufficient_privilege, including row-level security violations
  P0002: "NOT_FOUND", // no_data_found
  "55000": "INVALID_STATE", // object_not_in_prerequisite_state
  "28000": "UNAUTHENTICATED", // invalid_authorization_specification
  "28P01": "INVALID_CREDENTIALS", // invalid_password
  "40001": "CONFLICT", // serialization_failure: safe to retry
  "40P01": "CONFLICT", // deadlock_detected: safe to retry
};

interface PgErrorLike {
  code?: string;
  message: string;
  detail?: string;
  hint?: string;
  column?: string;
  constraint?: string;
  table?: string;
}

function isPgError(e: unknown): e is PgErrorLike {
  return !!e && typeof e === "object" && typeof (e as PgErrorLike).code === "string" && typeof (e as PgErrorLike).message === "string";
}

export function camelCase(snake: string): string {
  return snake.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/** The GraphQL field a constraint or error refers to, or undefined. */
export function fieldOf(e: PgErrorLike): string | undefined {
  // `customFields.<key>`: the key is the user's own, only the column part is camel-cased.
  if (e.column) {
    const [col, ...rest] = e.column.split(".");
    return [camelCase(col!), ...rest].join(".");
  }
  // "Key (organization_id, email)=(…) already exists." / "… is not present in table …"
  const key = e.detail?.match(/^Key \(([^)]+)\)=/);
  if (key?.[1]) {
    const cols = key[1].split(",").map((c) => c.trim().replace(/^"|"$/g, "").replace(/^lower\(|\)$|::\w+$/g, ""));
    const meaningful = cols.filter((c) => c !== "organization_id");
    const col = meaningful[meaningful.length - 1] ?? cols[cols.length - 1];
    if (col) return camelCase(col);
  }
  if (e.constraint) {
    // Convention: <table>_<column>_<suffix>; the table prefix and the suffix are stripped.
    let name = e.constraint;
    if (e.table && name.startsWith(`${e.table}_`)) name = name.slice(e.table.length + 1);
    // Foreign keys are named after the relation (deals_customer_fkey → customerId).
    if (/_fkey$/.test(name) && !/_id_fkey$/.test(name)) name = name.replace(/_fkey$/, "_id");
    name = name.replace(
      /_(check|key|fkey|format|range|length|not_blank|valid|unique|idx|excl|object|array|order|needed|not_self|not_database_role)$/,
      "",
    );
    if (name) return camelCase(name);
  }
  return undefined;
}

function messageFor(code: ErrorCode, e: PgErrorLike, field: string | undefined): string {
  switch (e.code) {
    case "23505":
      return field ? `A record with this ${field} already exists.` : "This record already exists.";
    case "23503":
      return field ? `${field} does not refer to an existing record.` : "A referenced record does not exist.";
    case "23514":
      return field ? `Invalid value for ${field}.` : "A value is not allowed here.";
    case "23502":
      return field ? `${field} is required.` : "A required value is missing.";
    case "42501":
      return "You do not have permission to do this.";
    case "40001":
    case "40P01":
      return "The request conflicted with a concurrent change; retry it.";
    case "57014":
      return "The operation took too long and was cancelled; nothing it did was kept.";
    case "54000":
      return field ? `The value of ${field} is too large.` : "A value is too large.";
    default:
      if (code === "VALIDATION" && /^2[2]/.test(e.code ?? "")) return `Invalid input: ${e.message}`;
      return e.message;
  }
}

export interface ErrorMetrics {
  countError: (code: string) => void;
}

export function makeMaskError(logger: Logger, metrics?: ErrorMetrics, opts: { suggestions?: boolean } = {}) {
  /** Errors a caller caused: logged below warn (they are not faults of the server), with an id. */
  const callerError = (code: string, error: GraphQLError, message: string, extensions: Record<string, unknown>, original?: Error) => {
    metrics?.countError(code);
    logger.info({ errorId: crypto.randomUUID(), code, path: error.path, message }, "request refused");
    return new GraphQLError(message, {
      nodes: error.nodes,
      source: error.source,
      positions: error.positions,
      path: error.path,
      ...(original ? { originalError: original } : {}),
      extensions: { ...extensions, code },
    });
  };
  return function maskError(error: GraphQLError): GraphQLError {
    const original = error.originalError;
    if (isPgError(original)) {
      const code = APP_SQLSTATES[original.code!] ?? STANDARD_SQLSTATES[original.code!];
      if (code) {
        const field = fieldOf(original);
        return callerError(
          code,
          error,
          messageFor(code, original, field),
          { ...(field ? { field } : {}), ...(original.hint ? { hint: original.hint } : {}) },
          original as Error,
        );
      }
    }
    if (original instanceof SafeError) {
      const ext = { ...((original.extensions ?? {}) as Record<string, unknown>) };
      delete ext.statusCode;
      // Grafast's planning timeout (GRAPHQL_PLANNING_TIMEOUT_MS).
      if (!ext.code && /took too long to plan/.test(original.message)) ext.code = "QUERY_TIMEOUT";
      // Grafast's own SafeErrors without a code are about the request ("no new values were specified").
      return callerError(String(ext.code ?? "VALIDATION"), error, original.message, ext, original);
    }
    // A generated update/delete that matched no row the caller may change.
    if (original && /^No values were (deleted|updated) in collection/.test(original.message)) {
      return callerError("NOT_FOUND", error, "No such record, or you may not change it.", {});
    }
    // GraphQL's own errors: parse/validation errors (no original error), and request errors that wrap
    // a GraphQLError, such as a variable of the wrong type ("Int cannot represent …").
    if (!original || original instanceof GraphQLError) {
      const code = (error.extensions?.code as string | undefined) ?? "GRAPHQL_VALIDATION";
      const message = opts.suggestions === false ? error.message.replace(/\s*Did you mean [^?]*\?$/, "") : error.message;
      return callerError(code, error, message, { ...error.extensions });
    }
    // The client went away and its request was cancelled: nobody reads this answer.
    if (original instanceof ClientGoneError) return callerError("CLIENT_GONE", error, original.message, {});
    const errorId = crypto.randomUUID();
    metrics?.countError("INTERNAL");
    logger.error(
      { errorId, err: original, path: error.path, sqlstate: (original as PgErrorLike).code },
      "unexpected error while executing GraphQL request",
    );
    return new GraphQLError(`An unexpected error occurred (error id ${errorId}).`, {
      nodes: error.nodes,
      source: error.source,
      positions: error.positions,
      path: error.path,
      extensions: { code: "INTERNAL", errorId },
    });
  };
}

/** An error for the HTTP layer (context callback) with an HTTP status and a stable code. */
export function httpError(statusCode: number, code: ErrorCode, message: string): SafeError {
  return Object.assign(new SafeError(message, { code }), { statusCode });
}
