// A real listening Cairn server (child process, `src/cli/start.ts`) on a test database, and a GraphQL
// over HTTP client for it.
import { spawn, type ChildProcess } from "node:child_process";
import path from "node:path";
import jwt from "jsonwebtoken";
import { ROOT_DIR } from "../../src/config.ts";
import type { TestDb } from "./db.ts";

export const TEST_JWT_SECRET = "cairn-test-secret-0123456789abcdefghijklmnopqrstuvwxyz";
export const TEST_JWT_ISSUER = "cairn";
export const TEST_JWT_AUDIENCE = "cairn-api";

export interface GqlResponse<T = Record<string, unknown>> {
  status: number;
  headers: Headers;
  body: { data?: T | null; errors?: { message: string; path?: string[]; extensions?: Record<string, unknown> }[] };
}

export interface TestServer {
  url: string;
  logs: Record<string, unknown>[];
  gql: <T = Record<string, any>>(
    query: string,
    variables?: Record<string, unknown>,
    opts?: { token?: string; headers?: Record<string, string> },
  ) => Promise<GqlResponse<T>>;
  stop: (signal?: NodeJS.Signals) => Promise<number | null>;
  process: ChildProcess;
}

/**
 * The API's connection string: with TEST_PGBOUNCER_URL (CI's PgBouncer in transaction mode in front
 * of the test server), the same user, password and database through PgBouncer's host and port.
 */
function apiConnection(authUrl: string): string {
  const bouncer = process.env.TEST_PGBOUNCER_URL;
  if (!bouncer) return authUrl;
  const u = new URL(authUrl);
  const b = new URL(bouncer);
  u.hostname = b.hostname;
  u.port = b.port;
  return u.toString();
}

export async function startServer(db: TestDb, env: Record<string, string> = {}): Promise<TestServer> {
  const child = spawn(
    process.execPath,
    ["-r", "./scripts/require-node.cjs", "--disable-warning=ExperimentalWarning", path.join("src", "cli", "start.ts")],
    {
      cwd: ROOT_DIR,
      env: {
        PATH: process.env.PATH ?? "",
        NODE_ENV: "test",
        GRAPHILE_ENV: "production",
        LOG_LEVEL: "info",
        HOST: "127.0.0.1",
        PORT: "0",
        DATABASE_URL: db.ownerUrl,
        AUTH_DATABASE_URL: apiConnection(db.authUrl),
        // PgBouncer 1.18 (Debian 12) cannot carry named prepared statements in transaction mode.
        ...(process.env.TEST_PGBOUNCER_URL ? { PG_PREPARED_STATEMENTS: "false" } : {}),
        JWT_SECRET: TEST_JWT_SECRET,
        WORKER: "off",
        MIGRATE_ON_START: "false",
        BCRYPT_COST: "4",
        ...env,
      },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  const logs: Record<string, unknown>[] = [];
  let stderr = "";
  let buffer = "";
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start in time\n${stderr}`)), 45_000);
    child.stdout!.on("data", (chunk: Buffer) => {
      buffer += chunk.toString();
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        if (!line.startsWith("{")) continue;
        try {
          const entry = JSON.parse(line) as Record<string, unknown>;
          logs.push(entry);
          if (entry.msg === "listening") {
            clearTimeout(timer);
            resolve(`http://127.0.0.1:${entry.port}`);
          }
        } catch {
          // not a log line
        }
      }
    });
    child.stderr!.on("data", (c: Buffer) => (stderr += c.toString()));
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code} before listening\n${stderr}\n${logs.map((l) => JSON.stringify(l)).join("\n")}`));
    });
  });
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  return {
    url,
    logs,
    process: child,
    gql: async (query, variables, opts = {}) => {
      const res = await fetch(`${url}/graphql`, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          accept: "application/json",
          ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}),
          ...opts.headers,
        },
        body: JSON.stringify({ query, variables }),
      });
      const text = await res.text();
      let body: GqlResponse["body"];
      try {
        body = JSON.parse(text);
      } catch {
        throw new Error(`non-JSON response ${res.status}: ${text.slice(0, 500)}`);
      }
      return { status: res.status, headers: res.headers, body } as GqlResponse<any>;
    },
    stop: async (signal = "SIGTERM") => {
      if (child.exitCode !== null) return child.exitCode;
      child.kill(signal);
      return exited;
    },
  };
}

/** A Cairn access token signed as the server would (the identity module mints these on login). */
export function signTestToken(claims: Record<string, unknown>, opts: { secret?: string; expiresIn?: number; issuer?: string; audience?: string } = {}): string {
  return jwt.sign(claims, opts.secret ?? TEST_JWT_SECRET, {
    algorithm: "HS256",
    expiresIn: opts.expiresIn ?? 300,
    issuer: opts.issuer ?? TEST_JWT_ISSUER,
    audience: opts.audience ?? TEST_JWT_AUDIENCE,
  });
}
