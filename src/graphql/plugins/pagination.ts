// Every list is a forward-paginated connection: `first` defaults to DEFAULT_PAGE_SIZE and may not
// exceed the server's maximum (PAGE_SIZE_MAX); page on with `after` (or reverse `orderBy`).
import { lambda, SafeError, type ConnectionStep } from "postgraphile/grafast";

export const DEFAULT_PAGE_SIZE = 20;

export function makePaginationPlugin(maxPageSize: number): GraphileConfig.Plugin {
  const check = (n: unknown) => {
    if (n === null || n === undefined) return DEFAULT_PAGE_SIZE;
    if (typeof n !== "number" || !Number.isInteger(n) || n < 0 || n > maxPageSize) {
      throw new SafeError(`first must be between 0 and ${maxPageSize}.`, { code: "VALIDATION", field: "first" });
    }
    return n;
  };
  return {
    name: "CairnPaginationPlugin",
    version: "1.0.0",
    after: ["PgFirstLastBeforeAfterArgsPlugin"],
    schema: {
      hooks: {
        GraphQLObjectType_fields_field_args(args, _build, context) {
          if (!context.scope.isPgFieldConnection || !args.first) return args;
          return {
            ...args,
            first: {
              ...args.first,
              description: `Read the first \`n\` values (default ${DEFAULT_PAGE_SIZE}, at most ${maxPageSize}).`,
              defaultValue: DEFAULT_PAGE_SIZE,
              applyPlan(_$parent, $connection: ConnectionStep<any, any, any, any>, arg) {
                $connection.setFirst(lambda(arg.getRaw(), check, true));
              },
            },
          };
        },
      },
    },
  };
}
