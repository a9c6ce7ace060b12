// CRM core through GraphQL over HTTP: the seed-000 role semantics, tenant-safe references, workflows,
// custom fields, soft delete, search, reports, timeline and lists.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { createTestDb, type TestDb } from "../helpers/db.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { addMember, startSession, type TestOrg } from "../helpers/identity.ts";
import { seedTenant, type SeededTenant } from "../helpers/tenant.ts";

let db: TestDb;
let server: TestServer;
let org: SeededTenant;
let other: SeededTenant;
const users: Record<string, string> = {};
const tokens: Record<string, string> = {};
const customers: Record<string, string> = {};

type Body = { data?: any; errors?: { message: string; extensions?: Record<string, unknown> }[] };
const as = async (who: string, query: string, variables: Record<string, unknown> = {}): Promise<Body> =>
  ((b) => { if (process.env.DEBUG_GQL && b.errors) console.log(query.slice(0, 80), JSON.stringify(b.errors)); return b; })((await server.gql(query, variables, { token: tokens[who] })).body as Body);
const code = (b: Body) => b.errors?.[0]?.extensions?.code;
const count = async (sql: string, params: unknown[] = []) => (await db.owner.query(sql, params)).rows[0].n as number;

async function customer(owner: string, name: string): Promise<string> {
  const { rows } = await db.owner.query("insert into crm.customers (organization_id, name, owner_id) values ($1, $2, $3) returning id", [org.id, name, users[owner]]);
  return rows[0].id;
}

beforeAll(async () => {
  db = await createTestDb();
  org = await seedTenant(db, "core");
  other = await seedTenant(db, "other");
  users.admin = org.adminId;
  users.manager = await addMember(db, org, "core-manager", "Sales Manager");
  users.rep1 = org.memberId; // in team "Field sales"
  users.rep2 = await addMember(db, org, "core-rep2", "Sales Representative");
  users.rep3 = await addMember(db, org, "core-rep3", "Sales Representative");
  users.viewer = await addMember(db, org, "core-viewer", "Viewer");
  users.lead = await addMember(db, org, "core-lead", "Sales Representative");
  await db.owner.query("insert into crm.team_members (organization_id, team_id, user_id) values ($1, $2, $3), ($1, $2, $4)", [org.id, org.teamId, users.rep2, users.lead]);
  // A custom role: customers of the team, nothing else.
  const role = (await db.owner.query("insert into crm.roles (organization_id, name) values ($1, 'Team Lead') returning id", [org.id])).rows[0].id;
  await db.owner.query("insert into crm.role_permissions (organization_id, role_id, permission_code) values ($1, $2, 'customers:read_team')", [org.id, role]);
  await db.owner.query("update crm.organization_memberships set role_id = $1 where organization_id = $2 and user_id = $3", [role, org.id, users.lead]);
  customers.rep1 = org.customerId;
  customers.rep2 = await customer("rep2", "Rep Two Ltd");
  customers.rep3 = await customer("rep3", "Rep Three plc");
  for (const [who, id] of Object.entries(users)) tokens[who] = (await startSession(db, id, org.id)).accessToken;
  tokens.otherAdmin = (await startSession(db, other.adminId, other.id)).accessToken;
  server = await startServer(db);
});
afterAll(async () => {
  await server?.stop();
  await db?.drop();
});

const CUSTOMERS = `{ customers(orderBy: NAME_ASC) { totalCount nodes { rowId name } } }`;
const names = (b: Body) => (b.data.customers.nodes as { name: string }[]).map((n) => n.name).sort();

describe("role matrix (seed 000)", () => {
  test("a Sales Representative sees and edits only the customers they own, and cannot delete", async () => {
    expect(names(await as("rep1", CUSTOMERS))).toEqual(["core customer"]);
    const own = await as("rep1", `mutation ($id: UUID!) { updateCustomer(input: { rowId: $id, patch: { phone: "+1 555 0100" } }) { customer { phone } } }`, { id: customers.rep1 });
    expect(own.data.updateCustomer.customer.phone).toBe("+1 555 0100");
    const theirs = await as("rep1", `mutation ($id: UUID!) { updateCustomer(input: { rowId: $id, patch: { phone: "hacked" } }) { customer { phone } } }`, { id: customers.rep2 });
    expect(theirs.data?.updateCustomer?.customer ?? null).toBeNull();
    expect(await count("select count(*)::int as n from crm.customers where phone = 'hacked'")).toBe(0);
    const del = await as("rep1", `mutation ($id: UUID!) { deleteCustomer(input: { id: $id }) { result { rowId } } }`, { id: customers.rep1 });
    expect(code(del)).toBe("FORBIDDEN");
    expect(await count("select count(*)::int as n from crm.customers where id = $1 and deleted_at is null", [customers.rep1])).toBe(1);
    // …and creates customers for themselves only.
    const created = await as("rep1", `mutation { createCustomer(input: { customer: { name: "Rep One New" } }) { customer { ownerId } } }`);
    expect(created.data.createCustomer.customer.ownerId).toBe(users.rep1);
    const forOther = await as("rep1", `mutation ($o: UUID!) { createCustomer(input: { customer: { name: "Gift", ownerId: $o } }) { customer { rowId } } }`, { o: users.rep2 });
    expect(code(forOther)).toBe("FORBIDDEN");
  });

  test("a Sales Representative sees only tasks assigned to them, and updates only their status", async () => {
    const t = await as("rep1", `{ tasks { nodes { rowId title assigneeId } } }`);
    expect(t.data.tasks.nodes.every((n: { assigneeId: string }) => n.assigneeId === users.rep1)).toBe(true);
    expect(t.data.tasks.nodes.length).toBe(2);
    const edit = await as("rep1", `mutation ($id: UUID!) { updateTask(input: { rowId: $id, patch: { title: "Renamed" } }) { task { title } } }`, { id: org.taskId });
    expect(edit.data?.updateTask?.task ?? null).toBeNull();
    const status = await as("rep1", `mutation ($id: UUID!) { updateTaskStatus(input: { taskId: $id, status: "in_progress" }) { result { status } } }`, { id: org.taskId });
    expect(status.data.updateTaskStatus.result.status).toBe("in_progress");
    const assign = await as("rep1", `mutation ($id: UUID!, $u: UUID!) { assignTask(input: { taskId: $id, assigneeId: $u }) { result { assigneeId } } }`, { id: org.taskId, u: users.rep2 });
    expect(code(assign)).toBe("FORBIDDEN");
  });

  test("a Sales Manager sees every customer and task, and assigns tasks", async () => {
    const all = await count("select count(*)::int as n from crm.customers where organization_id = $1 and deleted_at is null", [org.id]);
    expect((await as("manager", CUSTOMERS)).data.customers.totalCount).toBe(all);
    const task = await as("manager", `mutation ($c: UUID!) { createTask(input: { task: { title: "Demo for Rep Two", type: "demo", customerId: $c } }) { task { rowId assigneeId } } }`, { c: customers.rep2 });
    const id = task.data.createTask.task.rowId;
    expect(task.data.createTask.task.assigneeId).toBe(users.manager);
    const assigned = await as("manager", `mutation ($id: UUID!, $u: UUID!) { assignTask(input: { taskId: $id, assigneeId: $u }) { result { assigneeId } } }`, { id, u: users.rep2 });
    expect(assigned.data.assignTask.result.assigneeId).toBe(users.rep2);
    const outsider = await as("manager", `mutation ($id: UUID!, $u: UUID!) { assignTask(input: { taskId: $id, assigneeId: $u }) { result { assigneeId } } }`, { id, u: other.adminId });
    expect(outsider.errors?.[0]?.extensions).toMatchObject({ code: "VALIDATION", field: "assigneeId" });
    const mine = await as("rep2", `{ myTasks { nodes { title status } } }`);
    expect(mine.data.myTasks.nodes.map((n: { title: string }) => n.title)).toContain("Demo for Rep Two");
  });

  test("a Viewer reads everything and writes nothing", async () => {
    const all = await count("select count(*)::int as n from crm.customers where organization_id = $1 and deleted_at is null", [org.id]);
    expect((await as("viewer", CUSTOMERS)).data.customers.totalCount).toBe(all);
    expect((await as("viewer", `{ tasks { totalCount } }`)).data.tasks.totalCount).toBeGreaterThan(0);
    expect(code(await as("viewer", `mutation { createCustomer(input: { customer: { name: "Nope" } }) { customer { rowId } } }`))).toBe("FORBIDDEN");
    const upd = await as("viewer", `mutation ($id: UUID!) { updateCustomer(input: { rowId: $id, patch: { name: "Nope" } }) { customer { name } } }`, { id: customers.rep1 });
    expect(upd.data?.updateCustomer?.customer ?? null).toBeNull();
    expect(code(await as("viewer", `mutation ($c: UUID!) { createNote(input: { note: { content: "hi", customerId: $c } }) { note { rowId } } }`, { c: customers.rep1 }))).toBe("FORBIDDEN");
  });

  test("a custom role with customers:read_team sees exactly its teams' customers", async () => {
    // The team: rep1 (two customers, one created above) and rep2; rep3 is outside.
    expect(names(await as("lead", CUSTOMERS))).toEqual(["Rep One New", "Rep Two Ltd", "core customer"].sort());
    expect(names(await as("rep3", CUSTOMERS))).toEqual(["Rep Three plc"]);
  });
});

describe("references never cross organizations", () => {
  test.each([
    ["a deal", `mutation ($c: UUID!) { createDeal(input: { deal: { name: "x", customerId: $c } }) { deal { rowId } } }`, "crm.deals"],
    ["a contact", `mutation ($c: UUID!) { createContact(input: { contact: { firstName: "x", customerId: $c } }) { contact { rowId } } }`, "crm.contacts"],
    ["a note", `mutation ($c: UUID!) { createNote(input: { note: { content: "x", customerId: $c } }) { note { rowId } } }`, "crm.notes"],
    ["a task", `mutation ($c: UUID!) { createTask(input: { task: { title: "x", customerId: $c } }) { task { rowId } } }`, "crm.tasks"],
    ["a project", `mutation ($c: UUID!) { createProject(input: { project: { name: "x", customerId: $c } }) { project { rowId } } }`, "crm.projects"],
    ["a work log", `mutation ($c: UUID!) { createWorkLog(input: { workLog: { minutes: 5, customerId: $c } }) { workLog { rowId } } }`, "crm.work_logs"],
  ])("attaching %s to another tenant's customer is refused and writes nothing", async (_what, mutation, table) => {
    const before = await count(`select count(*)::int as n from ${table}`);
    const res = await as("admin", mutation, { c: other.customerId });
    expect(["VALIDATION", "NOT_FOUND", "FORBIDDEN"]).toContain(code(res));
    expect(await count(`select count(*)::int as n from ${table}`)).toBe(before);
  });

  test("an update cannot move a record onto a customer the caller cannot see", async () => {
    const deal = await as("rep1", `mutation ($c: UUID!) { createDeal(input: { deal: { name: "Mine", customerId: $c } }) { deal { rowId } } }`, { c: customers.rep1 });
    const id = deal.data.createDeal.deal.rowId;
    const moved = await as("rep1", `mutation ($id: UUID!, $c: UUID!) { updateDeal(input: { rowId: $id, patch: { customerId: $c } }) { deal { customerId } } }`, { id, c: customers.rep3 });
    expect(code(moved)).toBe("FORBIDDEN");
    expect((await db.owner.query("select customer_id from crm.deals where id = $1", [id])).rows[0].customer_id).toBe(customers.rep1);
  });

  test("a reference into another organization names the field at fault", async () => {
    const res = await as("manager", `mutation ($c: UUID!) { createTask(input: { task: { title: "x", customerId: $c } }) { task { rowId } } }`, { c: other.customerId });
    expect(["VALIDATION", "FORBIDDEN"]).toContain(code(res));
    if (code(res) === "VALIDATION") expect(res.errors?.[0]?.extensions?.field).toBe("customerId");
  });

  test("a deal's contact must belong to the deal's customer", async () => {
    const res = await as("admin", `mutation ($c: UUID!, $k: UUID!) { createDeal(input: { deal: { name: "x", customerId: $c, contactId: $k } }) { deal { rowId } } }`, {
      c: customers.rep2,
      k: org.contactId,
    });
    expect(res.errors?.[0]?.extensions).toMatchObject({ code: "VALIDATION", field: "contactId" });
  });
});

describe("deal stages", () => {
  let dealId: string;
  let stages: Record<string, string>;
  beforeAll(async () => {
    const res = await as("manager", `{ pipelines { nodes { rowId isDefault pipelineStages(orderBy: POSITION_ASC) { nodes { rowId name probability } } } } }`);
    const pipeline = res.data.pipelines.nodes.find((p: { isDefault: boolean }) => p.isDefault);
    stages = Object.fromEntries(pipeline.pipelineStages.nodes.map((s: { name: string; rowId: string }) => [s.name, s.rowId]));
    expect(Object.keys(stages)).toEqual(["Prospecting", "Qualification", "Proposal", "Negotiation", "Closed won", "Closed lost"]);
    const deal = await as("rep2", `mutation ($c: UUID!) { createDeal(input: { deal: { name: "Big one", amount: "25000", customerId: $c } }) { deal { rowId probability currency stageId } } }`, { c: customers.rep2 });
    expect(deal.errors).toBeUndefined();
    dealId = deal.data.createDeal.deal.rowId;
    expect(deal.data.createDeal.deal).toMatchObject({ probability: 10, currency: "USD", stageId: stages.Prospecting });
  });

  const move = (who: string, stage: string, lostReason?: string) =>
    as(who, `mutation ($d: UUID!, $s: UUID!, $r: String) { moveDealStage(input: { dealId: $d, stageId: $s, lostReason: $r }) { result { stageId probability actualCloseDate lostReason } } }`, {
      d: dealId,
      s: stages[stage],
      r: lostReason,
    });

  test("the stage is never set directly", async () => {
    const res = await as("rep2", `mutation ($d: UUID!, $s: UUID!) { updateDeal(input: { rowId: $d, patch: { stageId: $s } }) { deal { stageId } } }`, { d: dealId, s: stages["Closed won"] });
    expect(code(res)).toBe("GRAPHQL_VALIDATION");
  });

  test("allowed moves are configurable; illegal ones get INVALID_STATE", async () => {
    const pipeline = (await db.owner.query("select pipeline_id from crm.deals where id = $1", [dealId])).rows[0].pipeline_id;
    await db.owner.query("delete from crm.pipeline_stage_transitions where pipeline_id = $1", [pipeline]);
    const allow = async (from: string, to: string) =>
      as("admin", `mutation ($p: UUID!, $f: UUID!, $t: UUID!) { createPipelineStageTransition(input: { pipelineStageTransition: { pipelineId: $p, fromStageId: $f, toStageId: $t } }) { clientMutationId } }`, {
        p: pipeline,
        f: stages[from],
        t: stages[to],
      });
    for (const [f, t] of [["Prospecting", "Qualification"], ["Qualification", "Proposal"], ["Proposal", "Closed lost"], ["Proposal", "Closed won"], ["Closed lost", "Proposal"]]) {
      expect((await allow(f!, t!)).errors).toBeUndefined();
    }
    expect(code(await move("rep2", "Negotiation"))).toBe("INVALID_STATE");
    const ok = await move("rep2", "Qualification");
    expect(ok.data.moveDealStage.result).toMatchObject({ stageId: stages.Qualification, probability: 25, actualCloseDate: null });
    await move("rep2", "Proposal");
  });

  test("a lost deal needs a reason; closing stamps the date; reopening needs deals:reopen", async () => {
    const noReason = await move("rep2", "Closed lost");
    expect(noReason.errors?.[0]?.extensions).toMatchObject({ code: "VALIDATION", field: "lostReason" });
    const lost = await move("rep2", "Closed lost", "Went with a competitor");
    expect(lost.data.moveDealStage.result).toMatchObject({ probability: 0, lostReason: "Went with a competitor" });
    expect(lost.data.moveDealStage.result.actualCloseDate).toMatch(/^\d{4}-\d{2}-\d{2}$/);
    expect(code(await move("rep2", "Proposal"))).toBe("INVALID_STATE");
    const reopened = await move("manager", "Proposal");
    expect(reopened.data.moveDealStage.result).toMatchObject({ stageId: stages.Proposal, actualCloseDate: null, lostReason: null });
  });

  test("every accepted move is in the stage history and the audit log with the acting user", async () => {
    const h = await as("manager", `query ($d: UUID!) { deal(rowId: $d) { dealStageHistories(orderBy: ROW_ID_ASC) { nodes { fromStageId toStageId changedBy } } } }`, { d: dealId });
    const moves = h.data.deal.dealStageHistories.nodes.map((n: { fromStageId: string | null; toStageId: string; changedBy: string }) => [n.fromStageId, n.toStageId, n.changedBy]);
    expect(moves).toEqual([
      [null, stages.Prospecting, users.rep2],
      [stages.Prospecting, stages.Qualification, users.rep2],
      [stages.Qualification, stages.Proposal, users.rep2],
      [stages.Proposal, stages["Closed lost"], users.rep2],
      [stages["Closed lost"], stages.Proposal, users.manager],
    ]);
    const { rows } = await db.owner.query(
      `select actor_id, changes->'stage_id'->>'new' as to_stage from crm.audit_log
        where table_name = 'deals' and record_id = $1 and operation = 'UPDATE' and changes ? 'stage_id' order by id`,
      [dealId],
    );
    expect(rows.map((r) => [r.to_stage, r.actor_id])).toEqual([
      [stages.Qualification, users.rep2],
      [stages.Proposal, users.rep2],
      [stages["Closed lost"], users.rep2],
      [stages.Proposal, users.manager],
    ]);
  });

  test("a stage with deals cannot be deleted", async () => {
    const res = await as("admin", `mutation ($s: UUID!) { deletePipelineStage(input: { rowId: $s }) { pipelineStage { rowId } } }`, { s: stages.Proposal });
    expect(res.errors?.[0]?.extensions).toMatchObject({ code: "INVALID_STATE" });
    expect(await count("select count(*)::int as n from crm.pipeline_stages where id = $1", [stages.Proposal])).toBe(1);
  });
});

describe("task workflow", () => {
  test("illegal status moves get INVALID_STATE; accepted ones are audited with the actor and stamp completion", async () => {
    const t = await as("manager", `mutation ($u: UUID!) { createTask(input: { task: { title: "Workflow", assigneeId: $u } }) { task { rowId status } } }`, { u: users.rep3 });
    const id = t.data.createTask.task.rowId;
    const status = (s: string, who = "rep3") => as(who, `mutation ($id: UUID!, $s: String!) { updateTaskStatus(input: { taskId: $id, status: $s }) { result { status completedAt } } }`, { id, s });
    expect(code(await status("completed"))).toBe("INVALID_STATE");
    expect(code(await status("under_review"))).toBe("INVALID_STATE");
    expect((await status("in_progress")).data.updateTaskStatus.result.status).toBe("in_progress");
    expect((await status("under_review")).data.updateTaskStatus.result.status).toBe("under_review");
    const done = await status("completed");
    expect(done.data.updateTaskStatus.result.completedAt).toBeTruthy();
    expect(code(await status("not_started"))).toBe("INVALID_STATE");
    expect(code(await status("in_progress", "rep1"))).toBe("NOT_FOUND");
    const { rows } = await db.owner.query(
      `select changes->'status'->>'new' as s, actor_id from crm.audit_log where table_name = 'tasks' and record_id = $1 and changes ? 'status' and operation = 'UPDATE' order by id`,
      [id],
    );
    expect(rows).toEqual([
      { s: "in_progress", actor_id: users.rep3 },
      { s: "under_review", actor_id: users.rep3 },
      { s: "completed", actor_id: users.rep3 },
    ]);
  });

  test("task dependencies refuse cycles", async () => {
    const mk = async (title: string) => (await as("manager", `mutation ($t: String!) { createTask(input: { task: { title: $t } }) { task { rowId } } }`, { t: title })).data.createTask.task.rowId as string;
    const [a, b, c] = [await mk("A"), await mk("B"), await mk("C")];
    const dep = (x: string, y: string) => as("manager", `mutation ($x: UUID!, $y: UUID!) { createTaskDependency(input: { taskDependency: { taskId: $x, dependsOnTaskId: $y } }) { clientMutationId } }`, { x, y });
    expect((await dep(b, a)).errors).toBeUndefined();
    expect((await dep(c, b)).errors).toBeUndefined();
    expect(code(await dep(a, c))).toBe("INVALID_STATE");
    expect(["INVALID_STATE", "VALIDATION"]).toContain(code(await dep(a, a)));
    // Only tasks the caller can see can be linked: a rep with tasks:create sees only their own.
    const rogue = (await db.owner.query("insert into crm.roles (organization_id, name) values ($1, 'Planner') returning id", [org.id])).rows[0].id;
    await db.owner.query("insert into crm.role_permissions (organization_id, role_id, permission_code) values ($1, $2, 'tasks:create'), ($1, $2, 'tasks:read_own')", [org.id, rogue]);
    const planner = await addMember(db, org, "core-planner", "Viewer");
    await db.owner.query("update crm.organization_memberships set role_id = $1 where user_id = $2", [rogue, planner]);
    tokens.planner = (await startSession(db, planner, org.id)).accessToken;
    const own = (await as("planner", `mutation { createTask(input: { task: { title: "Mine" } }) { task { rowId } } }`)).data.createTask.task.rowId;
    const linked = await as("planner", `mutation ($x: UUID!, $y: UUID!) { createTaskDependency(input: { taskDependency: { taskId: $x, dependsOnTaskId: $y } }) { clientMutationId } }`, { x: own, y: a });
    expect(code(linked)).toBe("FORBIDDEN");
  });
});

describe("contacts", () => {
  test("the first contact is primary; making another primary moves the flag in one call", async () => {
    const first = await as("rep2", `mutation ($c: UUID!) { createContact(input: { contact: { firstName: "Ann", lastName: "One", customerId: $c } }) { contact { rowId isPrimary } } }`, { c: customers.rep2 });
    expect(first.data.createContact.contact.isPrimary).toBe(true);
    const second = await as("rep2", `mutation ($c: UUID!) { createContact(input: { contact: { firstName: "Bob", lastName: "Two", customerId: $c } }) { contact { rowId isPrimary } } }`, { c: customers.rep2 });
    expect(second.data.createContact.contact.isPrimary).toBe(false);
    const moved = await as("rep2", `mutation ($k: UUID!) { makePrimaryContact(input: { contactId: $k }) { result { rowId isPrimary } } }`, { k: second.data.createContact.contact.rowId });
    expect(moved.data.makePrimaryContact.result.isPrimary).toBe(true);
    expect(await count("select count(*)::int as n from crm.contacts where customer_id = $1 and is_primary", [customers.rep2])).toBe(1);
    // The database itself refuses a second primary.
    await expect(db.owner.query("update crm.contacts set is_primary = true where customer_id = $1", [customers.rep2])).rejects.toMatchObject({ code: "23505" });
  });
});

describe("custom fields", () => {
  beforeAll(async () => {
    const def = (key: string, type: string, extra = "") =>
      as("admin", `mutation { createCustomFieldDefinition(input: { customFieldDefinition: { entity: "customer", key: "${key}", label: "${key}", fieldType: "${type}" ${extra} } }) { clientMutationId } }`);
    for (const r of [await def("tier", "select", `, options: ["gold", "silver"]`), await def("seats", "number"), await def("renewal_date", "date"), await def("region", "text", ", isRequired: false")]) {
      expect(r.errors).toBeUndefined();
    }
  });
  const setFields = (fields: unknown) =>
    as("manager", `mutation ($id: UUID!, $f: JSON!) { updateCustomer(input: { rowId: $id, patch: { customFields: $f } }) { customer { customFields } } }`, { id: customers.rep3, f: fields });

  test("valid values are stored and filterable", async () => {
    const ok = await setFields({ tier: "gold", seats: 12, renewal_date: "2027-01-31" });
    expect(ok.data.updateCustomer.customer.customFields).toEqual({ tier: "gold", seats: 12, renewal_date: "2027-01-31" });
    const found = await as("manager", `{ customers(filter: { customFields: { contains: { tier: "gold" } } }) { nodes { name } } }`);
    expect(found.data.customers.nodes).toEqual([{ name: "Rep Three plc" }]);
  });

  test.each([
    [{ unknown: 1 }, "customFields.unknown"],
    [{ tier: "bronze" }, "customFields.tier"],
    [{ seats: "twelve" }, "customFields.seats"],
    [{ renewal_date: "2027-02-30" }, "customFields.renewal_date"],
  ])("%j is refused with VALIDATION naming the field", async (fields, field) => {
    const res = await setFields(fields);
    expect(res.errors?.[0]?.extensions).toMatchObject({ code: "VALIDATION", field });
  });

  test("a required field must be present", async () => {
    await db.owner.query("update crm.custom_field_definitions set is_required = true where key = 'region' and organization_id = $1", [org.id]);
    const res = await as("manager", `mutation { createCustomer(input: { customer: { name: "No region" } }) { customer { rowId } } }`);
    expect(res.errors?.[0]?.extensions).toMatchObject({ code: "VALIDATION", field: "customFields.region" });
    await db.owner.query("update crm.custom_field_definitions set is_required = false where key = 'region' and organization_id = $1", [org.id]);
  });
});

describe("soft delete", () => {
  test("delete hides a customer with its children; restore brings them back; purge needs its own permission", async () => {
    const id = await customer("rep3", "Doomed Inc");
    await db.owner.query("insert into crm.contacts (organization_id, customer_id, first_name) values ($1, $2, 'Dee')", [org.id, id]);
    await db.owner.query("insert into crm.notes (organization_id, customer_id, content, author_id) values ($1, $2, 'note', $3)", [org.id, id, users.rep3]);
    const deleted = await as("manager", `mutation ($id: UUID!) { deleteCustomer(input: { id: $id }) { result { deletedAt } } }`, { id });
    expect(deleted.data.deleteCustomer.result.deletedAt).toBeTruthy();
    expect(await count("select count(*)::int as n from crm.customers where id = $1 and deleted_at is not null", [id])).toBe(1);
    expect(await count("select count(*)::int as n from crm.contacts where customer_id = $1 and deleted_at is not null", [id])).toBe(1);
    expect((await as("manager", `query ($id: UUID!) { customer(rowId: $id) { rowId } }`, { id })).data.customer).toBeNull();
    const trash = await as("manager", `{ deletedCustomers { nodes { rowId } } }`);
    expect(trash.data.deletedCustomers.nodes).toEqual([{ rowId: id }]);
    expect(code(await as("manager", `mutation ($id: UUID!) { purgeCustomer(input: { id: $id }) { result } }`, { id }))).toBe("FORBIDDEN");
    const restored = await as("manager", `mutation ($id: UUID!) { restoreCustomer(input: { id: $id }) { result { rowId deletedAt } } }`, { id });
    expect(restored.data.restoreCustomer.result).toEqual({ rowId: id, deletedAt: null });
    expect(await count("select count(*)::int as n from crm.contacts where customer_id = $1 and deleted_at is null", [id])).toBe(1);
    expect(await count("select count(*)::int as n from crm.notes where customer_id = $1 and deleted_at is null", [id])).toBe(1);
    await as("admin", `mutation ($id: UUID!) { deleteCustomer(input: { id: $id }) { clientMutationId } }`, { id });
    const purged = await as("admin", `mutation ($id: UUID!) { purgeCustomer(input: { id: $id }) { result } }`, { id });
    expect(purged.data.purgeCustomer.result).toBe(true);
    expect(await count("select count(*)::int as n from crm.customers where id = $1", [id])).toBe(0);
    expect(await count("select count(*)::int as n from crm.contacts where customer_id = $1", [id])).toBe(0);
  });

  test("email is unique per organization among live customers only", async () => {
    const mk = () => as("manager", `mutation { createCustomer(input: { customer: { name: "Dup", email: "dup@example.test" } }) { customer { rowId } } }`);
    const first = await mk();
    expect(code(await mk())).toBe("CONFLICT");
    await as("manager", `mutation ($id: UUID!) { deleteCustomer(input: { id: $id }) { clientMutationId } }`, { id: first.data.createCustomer.customer.rowId });
    expect((await mk()).errors).toBeUndefined();
  });
});

describe("search, timeline, reports, lists", () => {
  test("search ranks names, emails and notes, and respects row-level security", async () => {
    await db.owner.query("update crm.customers set email = 'orders@reptwo.example' where id = $1", [customers.rep2]);
    await db.owner.query("insert into crm.notes (organization_id, customer_id, content, author_id) values ($1, $2, 'Discussed the quarterly renewal pricing', $3)", [org.id, customers.rep2, users.rep2]);
    const q = `query ($q: String!, $t: [String]) { search(query: $q, types: $t, first: 10) { nodes { entity recordId title rank } } }`;
    const byName = await as("manager", q, { q: "Rep Two" });
    expect(byName.data.search.nodes[0]).toMatchObject({ entity: "customer", recordId: customers.rep2 });
    const typo = await as("manager", q, { q: "Rep Thre" });
    expect(typo.data.search.nodes.map((n: { recordId: string }) => n.recordId)).toContain(customers.rep3);
    const byEmail = await as("manager", q, { q: "orders@reptwo.example" });
    expect(byEmail.data.search.nodes[0].recordId).toBe(customers.rep2);
    const notes = await as("manager", q, { q: "renewal pricing", t: ["note"] });
    expect(notes.data.search.nodes[0]).toMatchObject({ entity: "note" });
    const hidden = await as("rep3", q, { q: "Rep Two" });
    expect(hidden.data.search.nodes.map((n: { recordId: string }) => n.recordId)).not.toContain(customers.rep2);
    expect(code(await as("manager", q, { q: "x" }))).toBe("VALIDATION");
    expect((await as("otherAdmin", q, { q: "Rep Two" })).data.search.nodes).toEqual([]);
  });

  test("a customer's timeline merges notes, tasks, stage changes, work logs and status changes in time order", async () => {
    const res = await as("admin", `query ($c: UUID!) { customerTimeline(customerId: $c, first: 100) { nodes { occurredAt kind } } }`, { c: org.customerId });
    const kinds = new Set(res.data.customerTimeline.nodes.map((n: { kind: string }) => n.kind));
    for (const k of ["note", "task", "stage_change", "work_log", "status_change", "audit"]) expect(kinds).toContain(k);
    const times = res.data.customerTimeline.nodes.map((n: { occurredAt: string }) => Date.parse(n.occurredAt));
    expect(times).toEqual([...times].sort((a, b) => b - a));
    const stranger = await as("rep3", `query ($c: UUID!) { customerTimeline(customerId: $c) { nodes { kind } } }`, { c: org.customerId });
    expect(stranger.data.customerTimeline.nodes).toEqual([]);
  });

  test("reportsOverview needs reports:read_all and counts the whole organization", async () => {
    expect(code(await as("rep1", `{ reportsOverview }`))).toBe("FORBIDDEN");
    const r = (await as("manager", `{ reportsOverview }`)).data.reportsOverview;
    const total = r.customersByStatus.reduce((s: number, x: { count: number }) => s + x.count, 0);
    expect(total).toBe(await count("select count(*)::int as n from crm.customers where organization_id = $1 and deleted_at is null", [org.id]));
    expect(r.dealsByStage.map((s: { stage: string }) => s.stage)).toContain("Closed won");
    // Money per currency: a EUR deal is never added to USD amounts.
    await db.owner.query("insert into crm.deals (organization_id, customer_id, name, amount, currency, owner_id) values ($1, $2, 'Euro deal', 500, 'EUR', $3)", [org.id, customers.rep3, users.rep3]);
    const perCurrency = (await as("manager", `{ reportsOverview }`)).data.reportsOverview.openPipeline as { currency: string; count: number; amount: number; weightedForecast: number }[];
    expect(perCurrency.map((p) => p.currency)).toEqual(["EUR", "USD"]);
    const eur = perCurrency.find((p) => p.currency === "EUR")!;
    expect(Number(eur.amount)).toBe(500);
    for (const p of perCurrency) expect(Number(p.weightedForecast)).toBeLessThanOrEqual(Number(p.amount));
    await db.owner.query("update crm.tasks set due_at = now() - interval '1 day' where id = $1", [org.taskId]);
    expect(r.overdueTasksByAssignee).toBeDefined();
    const again = (await as("manager", `{ reportsOverview }`)).data.reportsOverview;
    expect(again.overdueTasksByAssignee.find((x: { assigneeId: string }) => x.assigneeId === users.rep1)?.count).toBeGreaterThanOrEqual(1);
  });

  test("lists page 20 by default, refuse pages over the maximum, and aggregate where enabled", async () => {
    await db.owner.query(
      "insert into crm.customers (organization_id, name, owner_id) select $1, 'Bulk ' || g, $2 from generate_series(1, 30) g",
      [org.id, users.manager],
    );
    const page = await as("manager", `{ customers(orderBy: NAME_ASC) { totalCount pageInfo { hasNextPage endCursor } nodes { name } } }`);
    expect(page.data.customers.nodes).toHaveLength(20);
    expect(page.data.customers.pageInfo.hasNextPage).toBe(true);
    const next = await as("manager", `query ($a: Cursor) { customers(orderBy: NAME_ASC, after: $a, first: 100) { nodes { name } } }`, { a: page.data.customers.pageInfo.endCursor });
    expect(next.data.customers.nodes.length).toBe(page.data.customers.totalCount - 20);
    expect((await as("manager", `{ customers(first: 1000) { totalCount } }`)).errors?.[0]?.extensions).toMatchObject({ code: "VALIDATION", field: "first" });
    const agg = await as("manager", `{ deals { aggregates { sum { amount } } } }`);
    expect(Number(agg.data.deals.aggregates.sum.amount)).toBeGreaterThan(0);
    const filtered = await as("manager", `{ customers(filter: { name: { startsWithInsensitive: "bulk 1" } }) { totalCount } }`);
    expect(filtered.data.customers.totalCount).toBe(11);
  });
});
