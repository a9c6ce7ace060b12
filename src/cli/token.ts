// npm run token -- [username] [--password <p>] [--raw]: signs a user in against the running server
// (HOST/PORT) with the `login` mutation and prints the JSON for GraphiQL's headers pane, or with --raw
// the bare access token. Demo users' passwords come from demo-credentials.json in EMBEDDED_PG_DIR.
import fs from "node:fs/promises";
import path from "node:path";
import { parseArgs } from "node:util";
import { loadConfigOrExit } from "../config.ts";

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { password: { type: "string" }, organization: { type: "string" }, raw: { type: "boolean" }, help: { type: "boolean" } },
});
if (values.help) {
  process.stdout.write("npm run token -- [username (default demo-admin)] [--password <password>] [--organization <slug>] [--raw]\n");
  process.exit(0);
}
const fail = (message: string): never => {
  process.stderr.write(`${message}\n`);
  process.exit(1);
};
const config = loadConfigOrExit();
const username = positionals[0] ?? "demo-admin";
let password = values.password;
if (!password) {
  const file = path.join(config.embedded.dataDir, "demo-credentials.json");
  const accounts = JSON.parse(await fs.readFile(file, "utf8").catch(() => "[]")) as { username: string; password: string }[];
  password = accounts.find((a) => a.username === username)?.password;
  if (!password) fail(`No password for ${username}: pass --password, or use a demo user (${accounts.map((a) => a.username).join(", ") || `none in ${file}`}).`);
}
const host = config.host === "0.0.0.0" || config.host === "::" ? "127.0.0.1" : config.host;
const url = `http://${host.includes(":") ? `[${host}]` : host}:${config.port}/graphql`;
const res = await fetch(url, {
  method: "POST",
  headers: { "content-type": "application/json" },
  body: JSON.stringify({
    query: "mutation ($l: String!, $p: String!, $o: String) { login(input: { login: $l, password: $p, organization: $o }) { session { accessToken } } }",
    variables: { l: username, p: password, o: values.organization ?? null },
  }),
}).catch(() => fail(`No Cairn server answers on ${url}: start it with npm start (or set HOST and PORT to where it runs).`));
const body = (await res.json()) as { data?: { login?: { session?: { accessToken: string } } }; errors?: { message: string; extensions?: { code?: string } }[] };
const token = body.data?.login?.session?.accessToken;
if (!token) fail(`Sign-in failed: ${body.errors?.[0]?.extensions?.code ?? res.status} ${body.errors?.[0]?.message ?? ""}`.trim());
process.stdout.write(values.raw ? `${token}\n` : `${JSON.stringify({ Authorization: `Bearer ${token}` })}\n`);
