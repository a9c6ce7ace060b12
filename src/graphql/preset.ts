// The PostGraphile v5 preset: Amber + simplify-inflection + connection-filter + pg-aggregates over the
// `crm` schema, introspected and executed as crm_authenticator (each request SET LOCAL ROLE).
import type { Pool } from "pg";
import type { GraphQLError, OperationDefinitionNode } from "postgraphile/graphql";
import { isAsyncIterable, isPromiseLike } from "postgraphile/grafast";
import { PersistedPlugin } from "@grafserv/persisted";
import { makePgService } from "postgraphile/adaptors/pg";
import { PostGraphileAmberPreset } from "postgraphile/presets/amber";
import { PgSimplifyInflectionPreset } from "@graphile/simplify-inflection";
import { PostGraphileConnectionFilterPreset } from "postgraphile-plugin-connection-filter";
import { PgAggregatesPreset } from "@graphile/pg-aggregates";
import { makeAuthPlugin, type AuthPluginOptions } from "./plugins/auth.ts";
import { makePaginationPlugin } from "./plugins/pagination.ts";
import { TenantKeyInflectionPlugin } from "./plugins/inflection.ts";
import { NotFoundOnUpdatePlugin } from "./plugins/not-found.ts";
import type { DocumentGate } from "./gate.ts";
import { answerWith, graphqlRequestState, type GraphqlRequestState } from "./request-state.ts";
import { invalidSessions } from "../auth/request-settings.ts";
import { requestScope } from "../logger.ts";
import { makeRealtimePlugins, type RealtimePluginOptions } from "./plugins/realtime.ts";

export interface PresetOptions {
  authPool: Pool;
  /** Token signing for the auth mutations (a throwaway secret is fine for schema export). */
  auth?: AuthPluginOptions;
  graphiql: boolean;
  development: boolean;
  maxRequestBytes: number;
  /** The largest page a list returns (PAGE_SIZE_MAX). */
  pageSizeMax?: number;
  maskError?: (error: GraphQLError) => GraphQLError;
  context?: (requestContext: Partial<Grafast.RequestContext>, args: Grafast.ExecutionArgs) => Promise<Partial<Grafast.Context>>;
  onOperation?: (type: string) => void;
  /** The document gate (cost budget, validation, document cache); without it grafserv's defaults apply. */
  gate?: DocumentGate;
  planCache?: { operations: number; plansPerOperation: number };
  planningTimeoutMs?: number;
  trustedDocuments?: { enabled: boolean; directory: string | undefined };
  /** Headers Ruru's headers pane starts with on each page load (the demo sign-in). */
  graphiqlHeaders?: () => Promise<Record<string, string> | undefined>;
  /** Subscriptions (limits) and the webhook settings SQL sees; defaults for schema export. */
  realtime?: RealtimePluginOptions;
}

/** Operators offered by connection-filter: the cheap, index-friendly ones. */
export const ALLOWED_FILTER_OPERATORS = [
  "isNull",
  "equalTo",
  "notEqualTo",
  "distinctFrom",
  "notDistinctFrom",
  "in",
  "notIn",
  "lessThan",
  "lessThanOrEqualTo",
  "greaterThan",
  "greaterThanOrEqualTo",
  "includesInsensitive",
  "startsWithInsensitive",
  "contains",
  "containsKey",
  "anyEqualTo",
];

export function makePreset(opts: PresetOptions): GraphileConfig.Preset {
  const gate = opts.gate;
  const RequestPlugin: GraphileConfig.Plugin = {
    name: "CairnRequestPlugin",
    version: "1.0.0",
    grafserv: {
      middleware: {
        // Every layer below records the status the response must have (graphqlRequestState), so the
        // response is corrected here without parsing its body again.
        async processRequest(next) {
          const state: GraphqlRequestState = {};
          const result = await graphqlRequestState.run(state, next);
          if (!result) return result;
          if (state.status !== undefined && result.type !== "noContent") return { ...result, statusCode: state.status };
          if (result.statusCode >= 400 && result.type === "buffer") return codeHttpError(result);
          return result;
        },
        // Documents are parsed and validated by the gate (budget first, then validation; bounded cache).
        setPreset(next, event) {
          if (gate) {
            const getExecutionConfig = event.getExecutionConfig;
            event.getExecutionConfig = function (this: unknown, ctx) {
              const swap = (c: Awaited<ReturnType<typeof getExecutionConfig>>) => ({
                ...c,
                parseAndValidate: (query: string) => {
                  const result = gate.parseAndValidate(c.schema, query);
                  if (result.errors) answerWith(400);
                  return result;
                },
              });
              const config = getExecutionConfig.call(this as never, ctx);
              return isPromiseLike(config) ? Promise.resolve(config).then(swap) : swap(config);
            };
          }
          return next();
        },
      },
    },
    grafast: {
      middleware: {
        async execute(next, event) {
          const { args } = event;
          const doc = args.document;
          const op = doc.definitions.find(
            (d): d is OperationDefinitionNode => d.kind === "OperationDefinition" && (!args.operationName || d.name?.value === args.operationName),
          );
          opts.onOperation?.(op?.operation ?? "unknown");
          const refused = gate?.checkVariables(args.schema, doc, args.operationName, args.variableValues as Record<string, unknown>);
          if (refused) {
            answerWith(400);
            return { errors: [refused] };
          }
          const result = await next();
          // A request error (e.g. a variable of the wrong type) has errors and no `data` at all.
          if (!isAsyncIterable(result) && result.errors && !("data" in result && result.data !== undefined)) answerWith(400);
          return result;
        },
        subscribe(next, event) {
          opts.onOperation?.("subscription");
          const { args } = event;
          const refused = gate?.checkVariables(args.schema, args.document, args.operationName, args.variableValues as Record<string, unknown>);
          if (refused) return { errors: [refused] };
          return next();
        },
      },
    },
  };
  // Ruru reads its props from the global RURU_CONFIG: a later script sets the headers pane.
  const GraphiqlHeadersPlugin: GraphileConfig.Plugin = {
    name: "CairnGraphiqlHeadersPlugin",
    version: "1.0.0",
    grafserv: {
      middleware: {
        async ruruHTML(next, event) {
          const headers = await opts.graphiqlHeaders?.();
          if (headers) {
            const json = JSON.stringify(JSON.stringify(headers, null, 2)).replace(/</g, "\\u003c");
            event.htmlParts.configScript += `\n<script>RURU_CONFIG.initialHeaders = ${json};</script>\n`;
          }
          return next();
        },
      },
    },
  };
  // A session that failed its check inside the request's transaction (src/auth/request-settings.ts)
  // answers HTTP 401 like one refused before GraphQL runs.
  const SessionCheckPlugin: GraphileConfig.Plugin = {
    name: "CairnSessionCheckPlugin",
    version: "1.0.0",
    grafserv: {
      middleware: {
        async processRequest(next) {
          const result = await next();
          const scope = requestScope.getStore();
          if (!result || !scope || !invalidSessions.has(scope)) return result;
          const headers = Object.fromEntries(Object.entries(result.headers).filter(([k]) => k.toLowerCase() !== "content-length"));
          const json = { errors: [{ message: "The session is no longer valid; sign in again.", extensions: { code: "UNAUTHENTICATED" } }] };
          return {
            type: "json",
            statusCode: 401,
            headers: { ...headers, "content-type": "application/json; charset=utf-8", "www-authenticate": 'Bearer realm="cairn"' },
            json,
          };
        },
      },
    },
  };
  // Grafast caches operation plans per schema: bounded by count (documented defaults).
  const PlanCachePlugin: GraphileConfig.Plugin = {
    name: "CairnPlanCachePlugin",
    version: "1.0.0",
    schema: {
      hooks: {
        GraphQLSchema(config) {
          const extensions = (config.extensions ?? {}) as Record<string, any>;
          return {
            ...config,
            extensions: {
              ...extensions,
              grafast: {
                ...extensions.grafast,
                operationsCacheMaxLength: opts.planCache?.operations ?? 100,
                operationOperationPlansCacheMaxLength: opts.planCache?.plansPerOperation ?? 10,
              },
            },
          };
        },
      },
    },
  };
  return {
    extends: [PostGraphileAmberPreset, PgSimplifyInflectionPreset, PostGraphileConnectionFilterPreset, PgAggregatesPreset],
    plugins: [
      SessionCheckPlugin,
      RequestPlugin,
      ...(opts.graphiqlHeaders ? [GraphiqlHeadersPlugin] : []),
      PlanCachePlugin,
      NotFoundOnUpdatePlugin,
      ...(opts.trustedDocuments?.enabled ? [PersistedPlugin] : []),
      TenantKeyInflectionPlugin,
      makeAuthPlugin(
        opts.auth ?? { jwtSecret: "schema-export-only", issuer: "cairn", audience: "cairn-api", accessTokenTtlSeconds: 900 },
      ),
      makePaginationPlugin(opts.pageSizeMax ?? 100),
      ...makeRealtimePlugins(opts.realtime),
    ],
    pgServices: [
      makePgService({
        pool: opts.authPool,
        schemas: ["crm"],
        pubsub: true,
      }),
    ],
    gather: {
      pgStrictFunctions: true,
    },
    schema: {
      // Aggregates scan the whole filtered set: opt in per table with `@behavior +aggregates`.
      // Lists page forward only (first/after): a default and a maximum page size always apply.
      defaultBehavior: "-aggregates -groupedAggregates -resource:connection:backwards",
      connectionFilterAllowedOperators: ALLOWED_FILTER_OPERATORS,
      connectionFilterArrays: true,
      connectionFilterComputedColumns: false,
      connectionFilterSetofFunctions: false,
      connectionFilterAllowNullInput: false,
      connectionFilterAllowEmptyObjectInput: false,
      dontSwallowErrors: true,
    },
    grafserv: {
      graphqlPath: "/graphql",
      graphiqlPath: "/graphiql",
      graphiql: opts.graphiql,
      graphiqlOnGraphQLGET: false,
      websockets: true,
      watch: false,
      maxRequestLength: opts.maxRequestBytes,
      ...(opts.maskError ? { maskError: opts.maskError } : {}),
      ...(opts.trustedDocuments?.enabled
        ? {
            persistedOperationsDirectory: opts.trustedDocuments.directory,
            // Re-read the folder every minute, so a deploy of new documents needs no restart.
            persistedOperationsDirectoryScanInterval: 60_000,
            allowUnpersistedOperation: false,
          }
        : {}),
    },
    grafast: {
      explain: opts.development,
      ...(opts.planningTimeoutMs ? { timeouts: { planning: opts.planningTimeoutMs } } : {}),
      ...(opts.context ? { context: opts.context } : {}),
    },
  };
}

/** Codes for grafserv's own HTTP errors (malformed body, method, media type): rare, small bodies. */
const HTTP_ERROR_CODES: Record<number, string> = {
  400: "GRAPHQL_VALIDATION",
  405: "METHOD_NOT_ALLOWED",
  406: "NOT_ACCEPTABLE",
  413: "PAYLOAD_TOO_LARGE",
  415: "UNSUPPORTED_MEDIA_TYPE",
};

type BufferResult = { type: "buffer"; statusCode: number; headers: Record<string, string>; buffer: Buffer };

function codeHttpError<T extends BufferResult>(result: T): T {
  if (result.buffer.length > 64_000) return result;
  let body: { errors?: { message: string; extensions?: Record<string, unknown> }[] };
  try {
    body = JSON.parse(result.buffer.toString("utf8"));
  } catch {
    return result;
  }
  if (!Array.isArray(body?.errors)) return result;
  const errors = body.errors.map(({ extensions: { statusCode: _status, ...extensions } = {}, ...e }) => {
    const code =
      extensions.code ??
      (/Persisted operations are enabled/.test(e.message)
        ? "TRUSTED_DOCUMENT_REQUIRED"
        : (HTTP_ERROR_CODES[result.statusCode] ?? (result.statusCode >= 500 ? "INTERNAL" : "BAD_REQUEST")));
    const message = code === "TRUSTED_DOCUMENT_REQUIRED" ? "This server accepts trusted documents only: send the id of a registered document." : e.message;
    return { ...e, message, extensions: { ...extensions, code } };
  });
  const buffer = Buffer.from(JSON.stringify({ ...body, errors }));
  return { ...result, headers: { ...result.headers, "content-length": String(buffer.length) }, buffer };
}
