// The PostGraphile v5 preset: Amber + simplify-inflection + connection-filter + pg-aggregates over the
// `crm` schema, introspected and executed as crm_authenticator (each request SET LOCAL ROLE).
import type { Pool } from "pg";
import type { GraphQLError, OperationDefinitionNode } from "postgraphile/graphql";
import { makePgService } from "postgraphile/adaptors/pg";
import { PostGraphileAmberPreset } from "postgraphile/presets/amber";
import { PgSimplifyInflectionPreset } from "@graphile/simplify-inflection";
import { PostGraphileConnectionFilterPreset } from "postgraphile-plugin-connection-filter";
import { PgAggregatesPreset } from "@graphile/pg-aggregates";
import { makeAuthPlugin, type AuthPluginOptions } from "./plugins/auth.ts";
import { makePaginationPlugin } from "./plugins/pagination.ts";
import { TenantKeyInflectionPlugin } from "./plugins/inflection.ts";
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
  onInvalidDocument?: () => void;
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
  const OperationCountPlugin: GraphileConfig.Plugin = {
    name: "CairnOperationCountPlugin",
    version: "1.0.0",
    grafserv: {
      middleware: {
        // Syntax and validation errors never reach maskError: give them their stable code here.
        async processRequest(next) {
          const result = await next();
          if (!result || (result.statusCode !== 400 && result.statusCode !== 200)) return result;
          if (result.type !== "json" && result.type !== "buffer") return result;
          let body: { data?: unknown; errors?: { message: string; extensions?: Record<string, unknown> }[] };
          try {
            body = result.type === "json" ? (result.json as typeof body) : JSON.parse(result.buffer.toString("utf8"));
          } catch {
            return result;
          }
          // Parse/validation failures are the only results with errors and no `data` key at all.
          if (!Array.isArray(body?.errors) || "data" in body || body.errors.some((e) => e.extensions?.code)) return result;
          opts.onInvalidDocument?.();
          const fixed = { ...body, errors: body.errors.map((e) => ({ ...e, extensions: { ...e.extensions, code: "GRAPHQL_VALIDATION" } })) };
          if (result.type === "json") return { ...result, json: fixed as never };
          const buffer = Buffer.from(JSON.stringify(fixed));
          const headers = Object.fromEntries(Object.entries(result.headers).filter(([k]) => k.toLowerCase() !== "content-length"));
          return { ...result, headers: { ...headers, "content-length": String(buffer.length) }, buffer };
        },
      },
    },
    grafast: {
      middleware: {
        execute(next, event) {
          const doc = event.args.document;
          const op = doc.definitions.find(
            (d): d is OperationDefinitionNode =>
              d.kind === "OperationDefinition" && (!event.args.operationName || d.name?.value === event.args.operationName),
          );
          opts.onOperation?.(op?.operation ?? "unknown");
          return next();
        },
        subscribe(next) {
          opts.onOperation?.("subscription");
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
  return {
    extends: [PostGraphileAmberPreset, PgSimplifyInflectionPreset, PostGraphileConnectionFilterPreset, PgAggregatesPreset],
    plugins: [
      SessionCheckPlugin,
      OperationCountPlugin,
      ...(opts.graphiqlHeaders ? [GraphiqlHeadersPlugin] : []),
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
    },
    grafast: {
      explain: opts.development,
      ...(opts.context ? { context: opts.context } : {}),
    },
  };
}
