// GraphiQL opens signed in (development with the demo organization only): each page load gets a
// demo-admin access token for Ruru's headers pane, minted through the same crm.login the `login`
// mutation calls. A token is reused until a minute before it expires.
import crypto from "node:crypto";
import type { Pool } from "pg";
import type { Config } from "../config.ts";
import { authSettings } from "./context.ts";
import { signAccessToken, authPluginOptions } from "../graphql/plugins/auth.ts";

export function makeDemoSignIn(config: Config, authPool: Pool, jwtSecret: string, login: { username: string; password: string }) {
  let cached: { token: string; renewAt: number } | undefined;
  return async (): Promise<Record<string, string> | undefined> => {
    if (cached && Date.now() < cached.renewAt) return { Authorization: `Bearer ${cached.token}` };
    const client = await authPool.connect();
    try {
      await client.query("begin");
      const settings = { role: "crm_anonymous", "cairn.client_ip": "127.0.0.1", "cairn.request_id": crypto.randomUUID(), ...authSettings(config) };
      await client.query("select set_config(key, value, true) from json_each_text($1::json)", [JSON.stringify(settings)]);
      const { rows } = await client.query<{ r: { session?: Parameters<typeof signAccessToken>[1] } }>(
        "select crm.login(identifier => $1, password => $2, organization => null) as r",
        [login.username, login.password],
      );
      await client.query("commit");
      const session = rows[0]?.r.session;
      if (!session) return undefined;
      const signed = signAccessToken(authPluginOptions(config, jwtSecret), session);
      cached = { token: signed.accessToken, renewAt: Date.now() + Math.max(0, config.jwt.accessTokenTtlSeconds - 60) * 1000 };
      return { Authorization: `Bearer ${signed.accessToken}` };
    } catch {
      await client.query("rollback").catch(() => undefined);
      return undefined;
    } finally {
      client.release();
    }
  };
}
