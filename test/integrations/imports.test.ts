// CSV import and export over HTTP: COPY staging, set-based validation with an exact per-row report,
// nothing half-applied, duplicate handling, the importer's row-level security and permissions, large
// imports as a job, and exports under the caller's RLS with the GraphQL list's filters, page by page.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { createTestDb, type TestDb } from "../helpers/db.ts";
import { addMember, createOrg, startSession, type TestOrg } from "../helpers/identity.ts";
import { runJobs } from "../helpers/worker.ts";
import { startServer, type TestServer } from "../helpers/server.ts";

let db: TestDb;
let server: TestServer;
let org: TestOrg;
let rep: string;
let rep2: string;
let adminToken: string;
let repToken: string;

async function post(path: string, csv: string, token?: string) {
  const res = await fetch(`${server.url}${path}`, {
    method: "POST",
    headers: { "content-type": "text/csv", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: csv,
  });
  return { status: res.status, body: (await res.json()) as any };
}

async function get(path: string, token?: string) {
  const res = await fetch(`${server.url}${path}`, { headers: token ? { authorization: `Bearer ${token}` } : {} });
  return { status: res.status, type: res.headers.get("content-type"), text: await res.text() };
}

const count = async (sql: string, params: unknown[] = []) => (await db.owner.query(sql, params)).rows[0].n as number;
const customers = () => count("select count(*)::int as n from crm.customers where organization_id = $1", [org.id]);

beforeAll(async () => {
  db = await createTestDb();
  org = await createOrg(db, "imports");
  rep = await addMember(db, org, "imp-rep", "Sales Representative");
  rep2 = await addMember(db, org, "imp-rep2", "Sales Representative");
  await db.owner.query(
    "insert into crm.custom_field_definitions (organization_id, entity, key, label, field_type, options) values ($1, 'customer', 'segment', 'Segment', 'select', '[\"smb\", \"enterprise\"]')",
    [org.id],
  );
  adminToken = (await startSession(db, org.adminId, org.id)).accessToken;
  repToken = (await startSession(db, rep, org.id)).accessToken;
  server = await startServer(db, { PAGE_SIZE_MAX: "7", IMPORT_SYNC_MAX_ROWS: "50" });
});
afterAll(async () => {
  await server?.stop();
  await db?.drop();
});

const BAD_FILE = [
  "Name,E-Mail,status,lead_score,custom_fields.segment,next_follow_up_at",
  "Good One,one@good.example,lead,10,smb,2030-01-01T09:00:00Z",
  "Bad Score,score@bad.example,prospect,101,enterprise,",
  ",noname@bad.example,lead,,,",
  "Bad Mail,not-an-address,churned,5,,",
  "Good Two,two@good.example,customer,,enterprise,",
  '"Quoted, Inc.",one@good.example,lead,,,',
  "Bad Segment,seg@bad.example,lead,,huge,tomorrow",
].join("\n");

describe("import", () => {
  test("a file with bad rows yields an exact error report, and with onError=abort imports nothing", async () => {
    const r = await post("/import/customers?onError=abort", BAD_FILE, adminToken);
    expect(r.status).toBe(422);
    expect(r.body.importJob).toMatchObject({ status: "failed", totalRows: 7, errorRows: 5, createdRows: 0 });
    expect(await customers()).toBe(0);
    const report = await get(r.body.importJob.errorsUrl, adminToken);
    expect(report.type).toMatch(/^text\/csv/);
    expect(report.text).toBe(
      [
        "row,column,message,value",
        "2,lead_score,Between 0 and 100.,101",
        "3,name,Required.,",
        "4,email,Not a valid e-mail address.,not-an-address",
        "6,email,Same email as row 1.,one@good.example",
        "7,custom_fields.segment,\"One of: smb, enterprise.\",huge",
        "7,next_follow_up_at,\"Not a date and time (ISO 8601, e.g. 2025-03-01T09:00:00Z).\",tomorrow",
        "",
      ].join("\n"),
    );
    const job = await get(`/import/${r.body.importJob.id}`, adminToken);
    expect(JSON.parse(job.text).importJob).toMatchObject({ status: "failed", error: "Rows have errors; nothing was imported (onError: abort)." });
  });

  test("with onError=skip_rows only the good rows are imported, through the normal rules", async () => {
    const r = await post("/import/customers?onError=skip_rows&fileName=leads.csv", BAD_FILE, adminToken);
    expect(r.status).toBe(200);
    expect(r.body.importJob).toMatchObject({ status: "completed", totalRows: 7, errorRows: 5, createdRows: 2, updatedRows: 0, skippedRows: 0 });
    const rows = (await db.owner.query("select name, email::text, status, lead_score, custom_fields, owner_id, next_follow_up_at from crm.customers where organization_id = $1 order by name", [org.id])).rows;
    expect(rows).toEqual([
      { name: "Good One", email: "one@good.example", status: "lead", lead_score: 10, custom_fields: { segment: "smb" }, owner_id: org.adminId, next_follow_up_at: new Date("2030-01-01T09:00:00Z") },
      { name: "Good Two", email: "two@good.example", status: "customer", lead_score: 0, custom_fields: { segment: "enterprise" }, owner_id: org.adminId, next_follow_up_at: null },
    ]);
    // Status history and the audit log name the importer, as for any other change.
    expect(await count("select count(*)::int as n from crm.customer_status_history h join crm.customers c on c.id = h.customer_id where c.organization_id = $1", [org.id])).toBe(2);
    expect(await count("select count(*)::int as n from crm.audit_log where organization_id = $1 and table_name = 'customers' and actor_id = $2", [org.id, org.adminId])).toBe(2);
  });

  test("duplicates are skipped, updated or refused, per import", async () => {
    const file = "email,name,lead_score\none@good.example,Good One Renamed,50\nthree@good.example,Good Three,";
    const skip = await post("/import/customers?onDuplicate=skip", file, adminToken);
    expect(skip.body.importJob).toMatchObject({ status: "completed", createdRows: 1, skippedRows: 1, updatedRows: 0 });
    const update = await post("/import/customers?onDuplicate=update", file, adminToken);
    expect(update.body.importJob).toMatchObject({ status: "completed", createdRows: 0, skippedRows: 0, updatedRows: 2 });
    const one = (await db.owner.query("select name, lead_score, status, custom_fields from crm.customers where email = 'one@good.example'")).rows[0];
    // Columns not in the file, and empty cells, keep their values.
    expect(one).toEqual({ name: "Good One Renamed", lead_score: 50, status: "lead", custom_fields: { segment: "smb" } });
    const create = await post("/import/customers?onDuplicate=create&onError=skip_rows", file, adminToken);
    expect(create.body.importJob).toMatchObject({ status: "completed", createdRows: 0, errorRows: 2 });
    const report = await get(create.body.importJob.errorsUrl, adminToken);
    expect(report.text.split("\n").slice(1, 3)).toEqual([
      "1,email,A customer with this e-mail address already exists.,",
      "2,email,A customer with this e-mail address already exists.,",
    ]);
  });

  test("a Sales Representative's import cannot create records owned by others", async () => {
    const file = "name,owner,email\nMine,,mine@rep.example\nFor rep two,imp-rep2,rep2@rep.example\nFor admin,imports-admin@example.test,admin@rep.example\nAlso mine,imp-rep,also@rep.example";
    const r = await post("/import/customers?onError=skip_rows", file, repToken);
    expect(r.body.importJob).toMatchObject({ status: "completed", createdRows: 2, errorRows: 2 });
    expect(await count("select count(*)::int as n from crm.customers where organization_id = $1 and owner_id <> $2 and email like '%@rep.example'", [org.id, rep])).toBe(0);
    expect(await count("select count(*)::int as n from crm.customers where owner_id = $1", [rep])).toBe(2);
    const report = await get(r.body.importJob.errorsUrl, repToken);
    expect(report.text).toContain("2,owner,You may only import customers you own (customers:update_all needed).,");
    // An update by the representative cannot reach customers they cannot see: the e-mail matches
    // nothing they can see, and the unique address makes it a conflict, not a silent overwrite.
    const sneaky = await post("/import/customers?onDuplicate=update&onError=skip_rows", "email,name\none@good.example,Taken over", repToken);
    expect(sneaky.body.importJob).toMatchObject({ createdRows: 0, updatedRows: 0, errorRows: 1 });
    expect((await db.owner.query("select name, owner_id from crm.customers where email = 'one@good.example'")).rows[0]).toEqual({ name: "Good One Renamed", owner_id: org.adminId });
    // Someone else's import is not theirs to read.
    const adminImport = (await db.owner.query("select id from crm.import_jobs where created_by = $1 limit 1", [org.adminId])).rows[0].id;
    expect((await get(`/import/${adminImport}`, repToken)).status).toBe(404);
  });

  test("contacts name their customer by e-mail or id; a representative adds contacts only to customers they may change", async () => {
    const adminCustomer = (await db.owner.query("select id from crm.customers where email = 'two@good.example'")).rows[0].id;
    const file = `customer,first_name,last_name,email\nmine@rep.example,Pat,Mine,pat@mine.example\n${adminCustomer},Sam,Theirs,sam@theirs.example\nnobody@nowhere.example,Al,Nowhere,`;
    const r = await post("/import/contacts?onError=skip_rows", file, repToken);
    expect(r.body.importJob).toMatchObject({ status: "completed", createdRows: 1, errorRows: 2 });
    const report = (await get(r.body.importJob.errorsUrl, repToken)).text.split("\n").slice(1, 3);
    expect(report).toEqual([
      "2,customer,No customer you can see has this id or e-mail address.,",
      "3,customer,No customer you can see has this id or e-mail address.,",
    ]);
    const contact = (await db.owner.query("select first_name, is_primary from crm.contacts where email = 'pat@mine.example'")).rows[0];
    expect(contact).toEqual({ first_name: "Pat", is_primary: true });
  });

  test("bad requests: unknown columns, missing required columns, malformed CSV, no token, unknown entity", async () => {
    const before = await customers();
    const unknown = await post("/import/customers", "name,shoe_size\nX,42", adminToken);
    expect([unknown.status, unknown.body.errors[0].extensions]).toEqual([400, { code: "VALIDATION", field: "file" }]);
    expect(unknown.body.errors[0].message).toBe("Unknown columns: shoe_size.");
    const missing = await post("/import/customers", "email\nx@y.example", adminToken);
    expect(missing.body.errors[0].message).toBe("Missing required columns: name.");
    const malformed = await post("/import/customers", "name,email\nok,ok@x.example\ntoo,many,cells", adminToken);
    expect(malformed.status).toBe(400);
    expect(malformed.body.errors[0].message).toBe("The CSV could not be read at data row 2: extra data after last expected column");
    expect((await post("/import/customers", "name\nX")).status).toBe(401);
    expect((await post("/import/products", "name\nX", adminToken)).status).toBe(404);
    expect((await post("/import/customers", "", adminToken)).body.errors[0].message).toBe("The file is empty; it needs a header row.");
    expect(await customers()).toBe(before);
    expect(await count("select count(*)::int as n from pg_tables where schemaname = 'crm_private' and tablename like 'import_staging_%'")).toBe(0);
  });

  test("large imports run as a job; progress and counts are visible", async () => {
    const lines = ["name,email,status"];
    for (let i = 1; i <= 60; i++) lines.push(`Bulk ${i},bulk${i}@big.example,prospect`);
    const r = await post("/import/customers", lines.join("\n"), adminToken);
    expect(r.status).toBe(202);
    expect(r.body.importJob).toMatchObject({ status: "queued", totalRows: 60 });
    await runJobs(db);
    const job = JSON.parse((await get(`/import/${r.body.importJob.id}`, adminToken)).text).importJob;
    expect(job).toMatchObject({ status: "completed", totalRows: 60, createdRows: 60, errorRows: 0 });
    const gql = await server.gql(`query ($id: UUID!) { importJob(rowId: $id) { status createdRows entity } }`, { id: job.id }, { token: adminToken });
    expect(gql.body.data!.importJob).toEqual({ status: "completed", createdRows: 60, entity: "customers" });
    const note = await count("select count(*)::int as n from crm.notifications where recipient_id = $1 and kind = 'import_finished' and record_id = $2", [org.adminId, job.id]);
    expect(note).toBe(1);
  });
});

describe("export", () => {
  const parse = (csv: string) => csv.trim().split("\n").map((l) => l.split(","));

  test("streams under the caller's row-level security, page by page", async () => {
    const rep2Token = (await startSession(db, rep2, org.id)).accessToken;
    await db.owner.query("insert into crm.customers (organization_id, name, owner_id) values ($1, 'Rep two only', $2)", [org.id, rep2]);
    const mine = parse((await get("/export/customers.csv", rep2Token)).text);
    expect(mine[0]!.slice(0, 3)).toEqual(["id", "name", "kind"]);
    expect(mine.slice(1).map((r) => r[1])).toEqual(["Rep two only"]);
    const all = await get("/export/customers.csv?orderBy=NAME_ASC", adminToken);
    expect(all.type).toMatch(/^text\/csv/);
    const rows = parse(all.text);
    const total = await customers();
    expect(total).toBeGreaterThan(7 * 3); // several pages of PAGE_SIZE_MAX = 7
    expect(rows).toHaveLength(total + 1);
    const names = rows.slice(1).map((r) => r[1]!);
    const inOrder = (await db.owner.query("select name from crm.customers where organization_id = $1 and deleted_at is null order by name, id", [org.id])).rows.map((x) => x.name);
    expect(names).toEqual(inOrder);
    expect(new Set(rows.slice(1).map((r) => r[0])).size).toBe(total);
    expect(rows[0]).toContain("custom_fields.segment");
  });

  test("uses the GraphQL list's filter and orderBy", async () => {
    const filter = encodeURIComponent(JSON.stringify({ status: { equalTo: "customer" } }));
    const r = await get(`/export/customers.csv?filter=${filter}&orderBy=NAME_DESC`, adminToken);
    const rows = parse(r.text);
    const expected = (await db.owner.query("select name from crm.customers where organization_id = $1 and status = 'customer' and deleted_at is null order by name desc, id desc", [org.id])).rows.map((x) => x.name);
    expect(rows.slice(1).map((x) => x[1])).toEqual(expected);
    const bad = await get(`/export/customers.csv?filter=${encodeURIComponent('{"shoeSize":{"equalTo":1}}')}`, adminToken);
    expect(bad.status).toBe(400);
    expect((await get(`/export/customers.csv?filter=not-json`, adminToken)).status).toBe(400);
    expect((await get(`/export/customers.csv`)).status).toBe(401);
  });

  test("an export imports back (update by id) without creating anything", async () => {
    const csv = (await get("/export/customers.csv", adminToken)).text;
    const total = await customers();
    const r = await post("/import/customers?onDuplicate=update", csv, adminToken);
    expect(r.status).toBe(202); // more rows than IMPORT_SYNC_MAX_ROWS: a job
    await runJobs(db);
    const job = JSON.parse((await get(`/import/${r.body.importJob.id}`, adminToken)).text).importJob;
    expect(job).toMatchObject({ status: "completed", createdRows: 0, updatedRows: total, errorRows: 0 });
    const contacts = (await get("/export/contacts.csv", adminToken)).text;
    expect(contacts.split("\n")[0]).toBe("id,customer,first_name,last_name,email,phone,mobile,title,department,status,is_primary,created_at,updated_at");
  });
});
