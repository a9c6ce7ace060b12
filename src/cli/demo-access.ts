// Prints where the service listens and, on the embedded development database, how to log in to the
// demo tenant (never in production).
import path from "node:path";
import type { Config } from "../config.ts";
import type { Service } from "../service.ts";
import type { DemoAccess } from "../db/demo.ts";

export async function printDemoAccess(config: Config, service: Pick<Service, "demo">, base: string): Promise<void> {
  if (config.isProduction || config.nodeEnv === "test") return;
  const demo: DemoAccess | undefined = service.demo;
  const lines = [
    "",
    `  Cairn is running.`,
    `  GraphQL:   ${base}/graphql`,
    ...(config.graphiql
      ? [`  GraphiQL:  ${base}/graphiql${demo && config.graphiqlDemoSignIn && config.apiProcesses === 1 ? "  (signed in as demo-admin: the headers pane is filled in)" : ""}`]
      : []),
    `  Health:    ${base}/health  ${base}/ready  ${base}/metrics`,
  ];
  if (demo) {
    lines.push(
      "",
      `  Demo organization "${demo.organizationSlug}"${demo.created ? " (created now)" : ""}. Users (one per default role):`,
      ...demo.accounts.map((a) => `    ${a.username.padEnd(14)} ${a.role}`),
      `  Their passwords are in ${path.relative(process.cwd(), demo.credentialsFile) || demo.credentialsFile}.`,
      `  A token for GraphiQL's headers pane, curl or another client (add --raw for the bare token):`,
      `    npm run token -- demo-sales`,
    );
  }
  process.stdout.write(lines.join("\n") + "\n\n");
}
