// graphile-migrate `afterReset` action: graphile-worker's schema, which our migrations reference, in
// the database graphile-migrate has just recreated (GM_DBURL; the shadow database during `commit`).
import { runMigrations } from "graphile-worker";

const url = process.env.GM_DBURL;
if (!url) {
  process.stderr.write("worker-schema: GM_DBURL is not set (this runs as a graphile-migrate action)\n");
  process.exit(1);
}
await runMigrations({ connectionString: url });
