// The SQLSTATE → extensions.code table of maskError, fed with the errors PostgreSQL really raises.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { GraphQLError } from "postgraphile/graphql";
import { pino } from "pino";
import { makeMaskError } from "../../src/http/errors.ts";
import { createTestDb, sqlError, type TestDb } from "../helpers/db.ts";

let db: TestDb;
const logged: unknown[] = [];
const logger = pino({ level: "error" }, { write: (m: string) => void logged.push(JSON.parse(m)) });
const mask = makeMaskError(logger);

async function maskedFrom(sql: string) {
  const original = await db.owner.query(sql).then(
    () => {
      throw new Error("expected an error");
    },
    (e: Error) => e,
  );
  return mask(new GraphQLError("x", { originalError: original, path: ["field"] }));
}

beforeAll(async () => {
  db = await createTestDb();
  await db.owner.query(`
    create table public.err_t (
      id int primary key, email text unique, qty int constraint err_t_qty_check check (qty > 0),
      parent_id int references public.err_t(id), must text not null default 'x')`);
  await db.owner.query("insert into public.err_t (id, email, qty) values (1, 'a@b.c', 1)");
});
afterAll(async () => {
  await db.drop();
});

describe("maskError", () => {
  test.each([
    ["insert into public.err_t (id, email, qty) values (2, 'a@b.c', 1)", "CONFLICT", "email"],
    ["insert into public.err_t (id, qty, parent_id) values (3, 1, 99)", "VALIDATION", "parentId"],
    ["insert into public.err_t (id, qty) values (4, 0)", "VALIDATION", "qty"],
    ["insert into public.err_t (id, qty, must) values (5, 1, null)", "VALIDATION", "must"],
    ["select 'nope'::uuid", "VALIDATION", undefined],
    ["select 'abc'::int", "VALIDATION", undefined],
    ["do $$ begin raise exception 'No such deal' using errcode = 'P0002'; end $$", "NOT_FOUND", undefined],
    ["do $$ begin raise exception 'Deal is closed' using errcode = '55000'; end $$", "INVALID_STATE", undefined],
    ["do $$ begin raise exception 'Bad email' using errcode = 'CRVAL', column = 'email_address'; end $$", "VALIDATION", "emailAddress"],
    ["do $$ begin raise exception 'Slow down' using errcode = 'CRRLM'; end $$", "RATE_LIMITED", undefined],
    ["do $$ begin raise exception 'Nope' using errcode = 'CRFBD'; end $$", "FORBIDDEN", undefined],
    ["do $$ begin raise exception 'Who?' using errcode = 'CRUNA'; end $$", "UNAUTHENTICATED", undefined],
    ["do $$ begin raise exception 'Taken' using errcode = 'CRCNF', column = 'slug'; end $$", "CONFLICT", "slug"],
    ["set role crm_user; delete from crm.organizations", "FORBIDDEN", undefined],
  ])("%s → %s", async (sql, code, field) => {
    const masked = await maskedFrom(sql);
    expect(masked.extensions.code).toBe(code);
    expect(masked.extensions.field).toBe(field);
    expect(masked.path).toEqual(["field"]);
  });

  test("a hint travels with the error", async () => {
    const masked = await maskedFrom("do $$ begin raise exception 'Too short' using errcode = 'CRVAL', column = 'password', hint = 'use 10 or more characters'; end $$");
    expect(masked.extensions).toEqual({ code: "VALIDATION", field: "password", hint: "use 10 or more characters" });
    expect(masked.message).toBe("Too short");
  });

  test("anything else is masked as INTERNAL with a logged error id", async () => {
    const masked = await maskedFrom("select 1/0");
    expect(masked.extensions.code).toBe("INTERNAL");
    expect(masked.message).not.toContain("division");
    const errorId = masked.extensions.errorId as string;
    expect(errorId).toMatch(/^[0-9a-f-]{36}$/);
    expect(logged.some((l) => (l as { errorId?: string }).errorId === errorId)).toBe(true);
  });

  test("a sqlError helper sees the raw SQLSTATE", async () => {
    expect((await sqlError(db.owner.query("select 1/0"))).code).toBe("22012");
  });
});
