// The PostGraphile v5 preset: Amber + simplify-inflection + connection-filter + pg-aggregates over the
// `crm` schema, introspected and executed as crm_authenticator (each request SET LOCAL ROLE).
import type { Pool } from "pg";
import type { GraphQLError, OperationDefinitionNode } from "postgraphile/graphql";
import { makePgService } from "postgraphile/adaptors/pg";
import { PostGraphileAmberPreset } from "postgraphile/presets/amber";
import { PgSimplifyInflectionPreset } from "@graphile/simplify-inflection";
import { PostGraphileConnectionFilterPreset } from "postgraphile-plugin-connection-filter";
import { PgAggregatesPreset } from "@graphile/pg-aggregates";
import { extraPlugins } from "./plugins/index.ts";

export interface PresetOptions {
  authPool: Pool;
  graphiql: boolean;
  development: boolean;
  maxRequestBytes: number;
  maskError?: (error: GraphQLError) => GraphQLError;
  context?: (requestContext: Partial<Grafast.RequestContext>, args: Grafast.ExecutionArgs) => Promise<Partial<Grafast.Context>>;
  onOperation?: (type: string) => void;
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
  return {
    extends: [PostGraphileAmberPreset, PgSimplifyInflectionPreset, PostGraphileConnectionFilterPreset, PgAggregatesPreset],
    plugins: [OperationCountPlugin, ...extraPlugins],
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
      defaultBehavior: "-aggregates -groupedAggregates",
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
