// Cold start: an empty data folder to /health answering 200 — npm start's whole first run (initdb,
// roles, migrations, the demo organization and its data, the GraphQL schema).
import { spawn } from "node:child_process";
import fs from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { ROOT_DIR } from "../../src/config.ts";
import { rssMb, type BenchContext } from "./context.ts";

const freePort = () =>
  new Promise<number>((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });

export default async function run(_ctx: BenchContext): Promise<void> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "cairn-cold-"));
  const port = await freePort();
  const t0 = performance.now();
  const child = spawn(process.execPath, ["-r", "./scripts/require-node.cjs", "--disable-warning=ExperimentalWarning", "src/cli/start.ts"], {
    cwd: ROOT_DIR,
    env: { PATH: process.env.PATH ?? "", PORT: String(port), EMBEDDED_PG_PORT: String(await freePort()), EMBEDDED_PG_DIR: dir, LOG_LEVEL: "warn", GRAPHILE_ENV: "production" },
    stdio: "ignore",
  });
  let ms = NaN;
  for (let i = 0; i < 600; i++) {
    const ok = await fetch(`http://127.0.0.1:${port}/health`).then((r) => r.ok, () => false);
    if (ok) {
      ms = performance.now() - t0;
      break;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  const rss = await rssMb(child.pid!);
  child.kill("SIGTERM");
  await new Promise((r) => child.once("exit", r));
  await fs.rm(dir, { recursive: true, force: true });
  process.stdout.write(`\nCold start (empty data folder → /health 200): ${(ms / 1000).toFixed(1)} s; RSS once up: ${rss} MB\n`);
}
