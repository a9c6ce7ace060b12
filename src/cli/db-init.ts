// npm run db:init: one-time bootstrap of an external server with a superuser URL (ROOT_DATABASE_URL):
// creates the roles (passwords from CRM_OWNER_PASSWORD / CRM_AUTHENTICATOR_PASSWORD), the database
// named in DATABASE_URL (owned by crm_owner) and its extensions. The service itself never needs it.
import { ensureDatabase, ensureRoles } from "../db/bootstrap.ts";

const root = process.env.ROOT_DATABASE_URL;
const target = process.env.DATABASE_URL;
if (!root || !target) {
  process.stderr.write("db:init needs ROOT_DATABASE_URL (a superuser) and DATABASE_URL (the crm_owner URL of the database to create)\n");
  process.exit(2);
}
const owner = process.env.CRM_OWNER_PASSWORD;
const authenticator = process.env.CRM_AUTHENTICATOR_PASSWORD;
if (!owner !== !authenticator) {
  process.stderr.write("set both CRM_OWNER_PASSWORD and CRM_AUTHENTICATOR_PASSWORD, or neither (trust/peer auth)\n");
  process.exit(2);
}
await ensureRoles(root, owner && authenticator ? { owner, authenticator } : undefined);
const database = decodeURIComponent(new URL(target).pathname.slice(1));
await ensureDatabase(root, database);
process.stdout.write(`roles and database "${database}" are ready; run npm run migrate (or npm start) next\n`);
