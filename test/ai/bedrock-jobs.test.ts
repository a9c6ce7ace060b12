// The Bedrock path end to end, through the worker with the real SDK client against the local Converse
// endpoint: scores written with reasons; malformed answers retried, then the local score used and the
// fallback recorded; throttling backed off; the daily budget; the opt-out. Drafts and insights too.
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "@jest/globals";
import { asUser, createTestDb, sqlError, type TestDb } from "../helpers/db.ts";
import { seedTenant, type SeededTenant } from "../helpers/tenant.ts";
import { addMember, startSession } from "../helpers/identity.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { runJobs } from "../helpers/worker.ts";
import { startBedrockEndpoint, type BedrockEndpoint } from "../helpers/bedrock.ts";

let db: TestDb;
let a: SeededTenant;
let b: SeededTenant;
let endpoint: BedrockEndpoint;
let server: TestServer;

beforeAll(async () => {
  db = await createTestDb();
  a = await seedTenant(db, "cloud-a");
  b = await seedTenant(db, "cloud-b");
  await db.owner.query("delete from crm.lead_score_models where organization_id = any ($1)", [[a.id, b.id]]);
  await db.owner.query("delete from graphile_worker._private_jobs");
  endpoint = await startBedrockEndpoint();
  server = await startServer(db);
});
afterAll(async () => {
  await server?.stop();
  await endpoint?.stop();
  await db?.drop();
});
beforeEach(() => {
  endpoint.requests.length = 0;
  endpoint.script.length = 0;
});

async function score(orgId: string, extraEnv: Record<string, string> = {}): Promise<void> {
  await db.owner.query("select crm_private.enqueue_tenant_job('ai:score-leads', $1)", [orgId]);
  await runJobs(db, { ...endpoint.env, ...extraEnv });
}
const subject = async (id: string) =>
  (await db.owner.query("select lead_score, lead_score_reasons, lead_score_model from crm.customers where id = $1", [id])).rows[0];
const lastHistory = async (id: string) =>
  (await db.owner.query("select provider, model, score, fallback_reason from crm.lead_score_history where customer_id = $1 order by scored_at desc, id limit 1", [id])).rows[0];
const usage = async (orgId: string) =>
  (await db.owner.query("select coalesce(sum(calls), 0)::int as calls, coalesce(sum(fallbacks), 0)::int as fallbacks from crm.ai_usage where organization_id = $1", [orgId])).rows[0];

describe("lead scores from Amazon Bedrock", () => {
  test("good answers: every customer and contact scored by the model, with its reasons; requests signed; only A's data sent", async () => {
    await db.owner.query("delete from crm.ai_usage where organization_id = $1", [a.id]);
    await score(a.id);
    expect(await subject(a.customerId)).toEqual({
      lead_score: 77,
      lead_score_reasons: ["Engaged in the last month", "A deal reached the proposal stage", "Complete profile"],
      lead_score_model: "bedrock:anthropic.claude-3-haiku-20240307-v1:0",
    });
    expect(await lastHistory(a.customerId)).toMatchObject({ provider: "bedrock", score: 77, fallback_reason: null });
    const subjects = (await db.owner.query("select (select count(*) from crm.customers where organization_id = $1) + (select count(*) from crm.contacts where organization_id = $1) as n", [a.id])).rows[0].n;
    expect(endpoint.requests).toHaveLength(Number(subjects));
    expect(endpoint.requests.every((r) => r.signatureValid)).toBe(true);
    // Nothing identifying leaves the database: no ids, names or e-mail addresses of any organization.
    const sent = endpoint.requests.map((r) => r.user).join("\n");
    for (const secret of [a.customerId, b.customerId, "buyer@cloud-a.test", "cloud-a customer", "cloud-b"]) expect(sent).not.toContain(secret);
    expect(await usage(a.id)).toEqual({ calls: Number(subjects), fallbacks: 0 });
  });

  test("unchanged records are not sent again; a changed one is", async () => {
    await score(a.id);
    expect(endpoint.requests).toHaveLength(0);
    await db.owner.query("insert into crm.notes (organization_id, content, customer_id) values ($1, 'Good call', $2)", [a.id, a.customerId]);
    await score(a.id);
    // The customer and its contact (contacts carry the customer's engagement).
    expect(endpoint.requests).toHaveLength(2);
  });

  test("malformed answers are retried, then the local score is used and the fallback recorded", async () => {
    await asUser(db, { sub: a.adminId, org: a.id }, (c) => c.query("select crm.score_leads(array[$1]::uuid[])", [a.customerId]), { commit: true });
    endpoint.respond = () => ({ kind: "text", text: "I think this lead is promising." });
    try {
      await runJobs(db, endpoint.env);
    } finally {
      endpoint.respond = (await import("../helpers/bedrock.ts")).defaultAnswer;
    }
    expect(endpoint.requests.map((r) => r.answered)).toEqual(["text", "text", "text"]);
    const c = await subject(a.customerId);
    expect(c.lead_score_model).toBe("local-prior-v1");
    expect(await lastHistory(a.customerId)).toMatchObject({
      provider: "local",
      model: "local-prior-v1",
      score: c.lead_score,
      fallback_reason: "Bedrock gave no usable answer after 3 attempts (malformed answer: no JSON object in the answer)",
    });
    expect((await usage(a.id)).fallbacks).toBe(1);
  });

  test("throttling is backed off and the model's answer used", async () => {
    await asUser(db, { sub: a.adminId, org: a.id }, (c) => c.query("select crm.score_leads(array[$1]::uuid[])", [a.customerId]), { commit: true });
    endpoint.script.push({ kind: "throttle" }, { kind: "throttle" });
    await runJobs(db, endpoint.env);
    expect(endpoint.requests.map((r) => r.answered)).toEqual(["throttle", "throttle", "text"]);
    expect(await subject(a.customerId)).toMatchObject({ lead_score: 77, lead_score_model: "bedrock:anthropic.claude-3-haiku-20240307-v1:0" });
  });

  test("when the daily budget is spent, the local score is used and the fallback recorded", async () => {
    await db.owner.query("update crm.ai_settings set daily_call_budget = 1 where organization_id = $1", [b.id]);
    await db.owner.query("delete from crm.ai_usage where organization_id = $1", [b.id]);
    await score(b.id);
    expect(endpoint.requests).toHaveLength(1);
    const models = (await db.owner.query(
      "select lead_score_model as m from crm.customers where organization_id = $1 union all select lead_score_model from crm.contacts where organization_id = $1", [b.id])).rows;
    expect(models.map((r) => r.m).sort()).toEqual(["bedrock:anthropic.claude-3-haiku-20240307-v1:0", "local-prior-v1"]);
    const fallbacks = (await db.owner.query("select distinct fallback_reason from crm.lead_score_history where organization_id = $1 and provider = 'local'", [b.id])).rows;
    expect(fallbacks).toContainEqual({ fallback_reason: "the daily cloud AI budget is spent" });
    expect(await usage(b.id)).toMatchObject({ calls: 1 });
  });

  test("an organization that opted out of cloud AI is never sent to the model", async () => {
    await db.owner.query("update crm.ai_settings set cloud_enabled = false where organization_id = $1", [b.id]);
    await asUser(db, { sub: b.adminId, org: b.id }, (c) => c.query("select crm.score_leads(array[$1]::uuid[])", [b.customerId]), { commit: true });
    await runJobs(db, endpoint.env);
    expect(endpoint.requests).toHaveLength(0);
    expect((await subject(b.customerId)).lead_score_model).toBe("local-prior-v1");
    await db.owner.query("update crm.ai_settings set cloud_enabled = true, daily_call_budget = 500 where organization_id = $1", [b.id]);
  });

  test("ai:manage changes the settings; others may not", async () => {
    const token = (await startSession(db, a.adminId, a.id)).accessToken;
    const settingsId = (await db.owner.query("select id from crm.ai_settings where organization_id = $1", [a.id])).rows[0].id;
    const ok = await server.gql(`mutation ($id: UUID!) { updateAiSetting(input: { rowId: $id, patch: { cloudEnabled: false, dailyCallBudget: 100 } }) { aiSetting { cloudEnabled dailyCallBudget } } }`, { id: settingsId }, { token });
    expect(ok.body).toEqual({ data: { updateAiSetting: { aiSetting: { cloudEnabled: false, dailyCallBudget: 100 } } } });
    const rep = (await startSession(db, a.memberId, a.id)).accessToken;
    const refused = await server.gql(`mutation ($id: UUID!) { updateAiSetting(input: { rowId: $id, patch: { cloudEnabled: true } }) { aiSetting { cloudEnabled } } }`, { id: settingsId }, { token: rep });
    expect(refused.body.errors?.[0]?.extensions?.code).toBe("NOT_FOUND");
    await db.owner.query("update crm.ai_settings set cloud_enabled = true, daily_call_budget = 500 where organization_id = $1", [a.id]);
  });
});

const DRAFT = `mutation ($customerId: UUID, $dealId: UUID, $purpose: String!, $tone: String) {
  draftEmail(input: { customerId: $customerId, dealId: $dealId, purpose: $purpose, tone: $tone }) { result { rowId status context } } }`;

describe("e-mail drafts", () => {
  test("draftEmail builds the context from what the requester sees, the job writes it, and only the requester reads it", async () => {
    await db.owner.query("update crm.ai_settings set cloud_enabled = false where organization_id = $1", [a.id]);
    const rep = (await startSession(db, a.memberId, a.id)).accessToken;
    const res = await server.gql(DRAFT, { dealId: a.dealId, purpose: "Follow up on the proposal", tone: "formal" }, { token: rep });
    expect(res.body.errors).toBeUndefined();
    const draft = res.body.data!.draftEmail.result;
    expect(draft.status).toBe("pending");
    expect(draft.context).toMatchObject({ purpose: "Follow up on the proposal", tone: "formal", customer: { name: "cloud-a customer" }, deal: { name: "First deal", stage: "Prospecting" } });
    expect(draft.context.recentNotes.length).toBeGreaterThanOrEqual(1);
    await runJobs(db, endpoint.env);
    const read = await server.gql(`query ($id: UUID!) { aiDraft(rowId: $id) { status subject body provider model } }`, { id: draft.rowId }, { token: rep });
    expect(read.body.data!.aiDraft).toMatchObject({ status: "ready", provider: "local", model: "template-v1", subject: "Follow up on the proposal — cloud-a customer" });
    expect(read.body.data!.aiDraft.body).toMatch(/^Dear Pat Buyer,\n/);
    expect(read.body.data!.aiDraft.body).toContain("This concerns First deal (currently at Prospecting).");
    // The same context gives the same draft.
    const again = await server.gql(DRAFT, { dealId: a.dealId, purpose: "Follow up on the proposal", tone: "formal" }, { token: rep });
    await runJobs(db, endpoint.env);
    const second = (await db.owner.query("select body from crm.ai_drafts where id = $1", [again.body.data!.draftEmail.result.rowId])).rows[0].body;
    expect(second).toBe(read.body.data!.aiDraft.body);
    // Another member (even an Administrator) does not see it.
    const adminToken = (await startSession(db, a.adminId, a.id)).accessToken;
    const hidden = await server.gql(`query ($id: UUID!) { aiDraft(rowId: $id) { rowId } }`, { id: draft.rowId }, { token: adminToken });
    expect(hidden.body.data!.aiDraft).toBeNull();
    await db.owner.query("update crm.ai_settings set cloud_enabled = true where organization_id = $1", [a.id]);
  });

  test("with Bedrock: the model writes the draft from the context", async () => {
    const rep = (await startSession(db, a.memberId, a.id)).accessToken;
    const res = await server.gql(DRAFT, { customerId: a.customerId, purpose: "Thank them for the order", tone: "friendly" }, { token: rep });
    await runJobs(db, endpoint.env);
    const d = (await db.owner.query("select status, subject, provider, model from crm.ai_drafts where id = $1", [res.body.data!.draftEmail.result.rowId])).rows[0];
    expect(d).toEqual({ status: "ready", subject: "Next steps on your proposal", provider: "bedrock", model: "bedrock:anthropic.claude-3-haiku-20240307-v1:0" });
    const sent = JSON.parse(endpoint.requests.at(-1)!.user);
    expect(sent).toMatchObject({ purpose: "Thank them for the order", customer: { name: "cloud-a customer" } });
  });

  test("bad input: one subject, a purpose, a known tone, a visible record, ai:use", async () => {
    const rep = (await startSession(db, a.memberId, a.id)).accessToken;
    const code = async (vars: Record<string, unknown>, token = rep) => {
      const r = await server.gql(DRAFT, vars, { token });
      return [r.body.errors?.[0]?.extensions?.code, r.body.errors?.[0]?.extensions?.field];
    };
    expect(await code({ customerId: a.customerId, dealId: a.dealId, purpose: "x" })).toEqual(["VALIDATION", "customerId"]);
    expect(await code({ customerId: a.customerId, purpose: "  " })).toEqual(["VALIDATION", "purpose"]);
    expect(await code({ customerId: a.customerId, purpose: "Hi", tone: "angry" })).toEqual(["VALIDATION", "tone"]);
    expect(await code({ customerId: b.customerId, purpose: "Hi" })).toEqual(["NOT_FOUND", "customerId"]);
    const viewer = await addMember(db, a, "cloud-a-viewer", "Viewer");
    expect(await code({ customerId: a.customerId, purpose: "Hi" }, (await startSession(db, viewer, a.id)).accessToken)).toEqual(["FORBIDDEN", undefined]);
    const drafts = (await db.owner.query("select count(*)::int as n from crm.ai_drafts where organization_id = $1 and requested_by = $2", [a.id, viewer])).rows[0].n;
    expect(drafts).toBe(0);
  });
});

const INSIGHTS = `query ($id: UUID!) { customerInsights(customerId: $id) { sentiment sentimentLabel notesConsidered summary nextBestAction actionReason provider model } }`;

describe("customer insights", () => {
  test("local: lexicon sentiment of the recent notes, a summary, and the first next-best-action rule that holds", async () => {
    await db.owner.query("update crm.ai_settings set cloud_enabled = false where organization_id = $1", [a.id]);
    const token = (await startSession(db, a.adminId, a.id)).accessToken;
    await db.owner.query("insert into crm.notes (organization_id, content, customer_id) values ($1, 'They are unhappy: the delivery was late and broken, they want a refund', $2)", [a.id, a.customerId]);
    await db.owner.query("insert into crm.notes (organization_id, content, customer_id) values ($1, 'Angry call, escalated to management', $2)", [a.id, a.customerId]);
    let res = await server.gql(INSIGHTS, { id: a.customerId }, { token });
    expect(res.body.errors).toBeUndefined();
    let i = res.body.data!.customerInsights;
    expect(i).toMatchObject({ sentimentLabel: "negative", provider: "local", model: "lexicon-v1", actionReason: "negative_sentiment" });
    expect(i.notesConsidered).toBeGreaterThanOrEqual(3);
    expect(i.summary).toContain("mostly negative");
    // An overdue task comes first.
    await db.owner.query("update crm.tasks set due_at = now() - interval '2 days' where id = $1", [a.taskId]);
    res = await server.gql(INSIGHTS, { id: a.customerId }, { token });
    i = res.body.data!.customerInsights;
    expect(i.actionReason).toBe("overdue_task");
    expect(i.nextBestAction).toMatch(/^Do the overdue task "Call" \(due \d{4}-\d{2}-\d{2}\)\.$/);
  });

  test("with Bedrock: the model's reading of the notes, while no newer note exists", async () => {
    await db.owner.query("update crm.ai_settings set cloud_enabled = true where organization_id = $1", [a.id]);
    await db.owner.query("delete from crm.ai_insights where organization_id = $1", [a.id]);
    await db.owner.query("select crm_private.enqueue_tenant_job('ai:insights', $1)", [a.id]);
    await runJobs(db, endpoint.env);
    const token = (await startSession(db, a.adminId, a.id)).accessToken;
    let i = (await server.gql(INSIGHTS, { id: a.customerId }, { token })).body.data!.customerInsights;
    expect(i).toMatchObject({ provider: "bedrock", sentiment: -0.6, summary: "The customer is unhappy about delays. A call is needed." });
    await asUser(db, { sub: a.adminId, org: a.id }, (c) => c.query("insert into crm.notes (content, customer_id) values ('Great news, they renewed', $1)", [a.customerId]), { commit: true });
    i = (await server.gql(INSIGHTS, { id: a.customerId }, { token })).body.data!.customerInsights;
    expect(i.provider).toBe("local");
  });

  test("another organization's customer is NOT_FOUND; without ai:use, FORBIDDEN", async () => {
    const tokenB = (await startSession(db, b.adminId, b.id)).accessToken;
    const res = await server.gql(INSIGHTS, { id: a.customerId }, { token: tokenB });
    expect(res.body.errors?.[0]?.extensions).toMatchObject({ code: "NOT_FOUND", field: "customerId" });
    const viewer = (await db.owner.query("select id from crm.users where username = 'cloud-a-viewer'")).rows[0].id;
    const refused = await server.gql(INSIGHTS, { id: a.customerId }, { token: (await startSession(db, viewer, a.id)).accessToken });
    expect(refused.body.errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
  });

  test("the lexicon: polarity, negation, normalisation", async () => {
    const s = async (t: string) => (await db.owner.query("select crm.text_sentiment($1) as s", [t])).rows[0].s as number;
    expect(await s("Great meeting, they are very happy")).toBeGreaterThan(0.5);
    expect(await s("Frustrated and angry about the delay")).toBeLessThan(-0.5);
    expect(await s("not happy")).toBeLessThan(0);
    expect(await s("")).toBe(0);
    expect(await s("great great great great great great great great")).toBeLessThan(1);
    expect(await sqlError(asUser(db, { sub: a.adminId, org: a.id }, (c) => c.query("select crm.customer_insights($1)", [b.customerId])))).toMatchObject({ code: "CRNFD" });
  });
});
