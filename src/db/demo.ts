// The demo tenant created on the first `npm start` with the embedded database: one user per default
// role, with generated passwords written to .data/demo-credentials.json.
import crypto from "node:crypto";
import fs from "node:fs/promises";
import path from "node:path";
import type { Pool } from "pg";

export const DEMO_ORGANIZATION = { name: "Demo Company", slug: "demo" };
const DEMO_ACCOUNTS = [
  { username: "demo-admin", full_name: "Ada Admin", role: "Administrator" },
  { username: "demo-manager", full_name: "Max Manager", role: "Sales Manager" },
  { username: "demo-sales", full_name: "Sam Sales", role: "Sales Representative" },
  { username: "demo-finance", full_name: "Fay Finance", role: "Finance" },
  { username: "demo-viewer", full_name: "Vic Viewer", role: "Viewer" },
];

export interface DemoAccount {
  username: string;
  email: string;
  full_name: string;
  role: string;
  password: string;
}

export interface DemoAccess {
  created: boolean;
  organizationSlug: string;
  accounts: DemoAccount[];
  credentialsFile: string;
}

export async function ensureDemoTenant(ownerPool: Pool, dataDir: string, bcryptCost = 10): Promise<DemoAccess> {
  const credentialsFile = path.join(dataDir, "demo-credentials.json");
  const existing = await ownerPool.query("select 1 from crm.organizations where slug = $1", [DEMO_ORGANIZATION.slug]);
  if (existing.rowCount) {
    const saved = JSON.parse(await fs.readFile(credentialsFile, "utf8").catch(() => "[]")) as DemoAccount[];
    return { created: false, organizationSlug: DEMO_ORGANIZATION.slug, accounts: saved, credentialsFile };
  }
  const accounts: DemoAccount[] = DEMO_ACCOUNTS.map((a) => ({
    ...a,
    email: `${a.username}@demo.cairn.test`,
    password: crypto.randomBytes(12).toString("base64url"),
  }));
  const client = await ownerPool.connect();
  try {
    await client.query("begin");
    await client.query("select set_config('cairn.auth.bcrypt_cost', $1, true)", [String(bcryptCost)]);
    await client.query("select crm_private.create_demo_tenant($1, $2, $3::jsonb)", [
      DEMO_ORGANIZATION.name,
      DEMO_ORGANIZATION.slug,
      JSON.stringify(accounts),
    ]);
    await fs.mkdir(dataDir, { recursive: true });
    await fs.writeFile(credentialsFile, JSON.stringify(accounts, null, 2) + "\n", { mode: 0o600 });
    await client.query("commit");
  } catch (e) {
    await client.query("rollback").catch(() => undefined);
    throw e;
  } finally {
    client.release();
  }
  return { created: true, organizationSlug: DEMO_ORGANIZATION.slug, accounts, credentialsFile };
}
