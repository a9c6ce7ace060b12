// The sorted SDL of the API as introspected from a migrated database (authenticator connection).
import pg from "pg";
import { makeSchema } from "postgraphile";
import { lexicographicSortSchema, printSchema } from "postgraphile/graphql";
import { makePreset } from "./preset.ts";

export async function sdlFromDatabase(authUrl: string): Promise<string> {
  const authPool = new pg.Pool({ connectionString: authUrl, max: 2 });
  try {
    const { schema } = await makeSchema(makePreset({ authPool, graphiql: false, development: false, maxRequestBytes: 1_000_000 }));
    return printSchema(lexicographicSortSchema(schema)) + "\n";
  } finally {
    await authPool.end();
  }
}
