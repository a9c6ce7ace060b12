// Prints how to log in to the demo tenant (embedded development database only).
import type { Config } from "../config.ts";
import type { Service } from "../service.ts";

export async function printDemoAccess(config: Config, _service: Service, base: string): Promise<void> {
  if (config.isProduction || config.nodeEnv === "test") return;
  const lines = [
    "",
    `  Cairn is running.`,
    `  GraphQL:   ${base}/graphql`,
    ...(config.graphiql ? [`  GraphiQL:  ${base}/graphiql`] : []),
    `  Health:    ${base}/health  ${base}/ready  ${base}/metrics`,
    "",
  ];
  process.stdout.write(lines.join("\n") + "\n");
}
