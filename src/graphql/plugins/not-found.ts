// Generated update mutations on a row that does not exist, or that row-level security does not let
// the caller see or change, answer NOT_FOUND (like generated deletes), instead of a payload with a
// null record. @dataplan/pg's update step returns null when its UPDATE matched no row; the payload
// object gets a second key that turns that null into an error, so the mutation field itself errors
// (the UPDATE matched nothing, so nothing was written).
import { flagError, lambda, object, SafeError, type ObjectStep, type Step } from "postgraphile/grafast";

export const NOT_FOUND_MESSAGE = "No such record, or you may not change it.";

function requireRow(row: unknown) {
  return row == null ? flagError(new SafeError(NOT_FOUND_MESSAGE, { code: "NOT_FOUND" })) : true;
}

export const NotFoundOnUpdatePlugin: GraphileConfig.Plugin = {
  name: "CairnNotFoundOnUpdatePlugin",
  version: "1.0.0",
  after: ["PgMutationUpdateDeletePlugin"],
  schema: {
    hooks: {
      GraphQLObjectType_fields_field(field, _build, context) {
        const scope = context.scope as { isRootMutation?: boolean; isPgUpdateMutation?: boolean };
        if (!scope.isRootMutation || !scope.isPgUpdateMutation || typeof field.plan !== "function") return field;
        const plan = field.plan as (...args: unknown[]) => Step;
        return {
          ...field,
          plan(...args: unknown[]) {
            const $payload = plan(...args) as ObjectStep<{ result: Step }>;
            const $result = $payload.getStepForKey("result");
            return object({ result: $result, found: lambda($result, requireRow, true) });
          },
        } as typeof field;
      },
    },
  },
};
