// Notifications: the triggers that create them in their cause's transaction, the time-based scans,
// typed preferences, e-mail (immediate and the daily digest, through the e-mail provider), reading
// them, and who may see them.
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "@jest/globals";
import { asUser, createTestDb, sqlError, type TestDb } from "../helpers/db.ts";
import { addMember, createOrg, createUser, startSession, type TestOrg } from "../helpers/identity.ts";
import { jobs, runJobs } from "../helpers/worker.ts";
import { startServer, type TestServer } from "../helpers/server.ts";

let db: TestDb;
let org: TestOrg;
let other: TestOrg;
let manager: string;
let rep: string;
let rep2: string;
let customerId: string;

const as = (user: string, o: TestOrg = org) => ({ sub: user, org: o.id });

async function notificationsOf(user: string, o: TestOrg = org) {
  const { rows } = await db.owner.query<{ kind: string; title: string; body: string; actor_id: string | null; record_id: string | null; channel: string }>(
    "select kind::text, title, body, actor_id, record_id, channel::text from crm.notifications where recipient_id = $1 and organization_id = $2 order by created_at, id",
    [user, o.id],
  );
  return rows;
}

beforeAll(async () => {
  db = await createTestDb();
  org = await createOrg(db, "notify");
  other = await createOrg(db, "notify-other");
  manager = await addMember(db, org, "nt-manager", "Sales Manager");
  rep = await addMember(db, org, "nt-rep", "Sales Representative");
  rep2 = await addMember(db, org, "nt-rep2", "Sales Representative");
  customerId = (await db.owner.query("insert into crm.customers (organization_id, name, owner_id) values ($1, 'Acme', $2) returning id", [org.id, rep])).rows[0].id;
});
afterAll(async () => {
  await db.drop();
});
beforeEach(async () => {
  await db.owner.query("delete from crm.notifications");
  await db.owner.query("delete from crm.notification_preferences");
  await db.owner.query("delete from graphile_worker._private_jobs");
  await db.owner.query("delete from crm_private.email_outbox");
});

describe("created by triggers in the transaction of their cause", () => {
  test("a task assigned to someone else notifies them; assigning yourself does not", async () => {
    const taskId = await asUser(db, as(manager), async (c) => {
      const t = await c.query("insert into crm.tasks (title, assignee_id, customer_id) values ('Call Acme', $1, $2) returning id", [rep, customerId]);
      await c.query("insert into crm.tasks (title, assignee_id) values ('My own', $1)", [manager]);
      return t.rows[0].id as string;
    }, { commit: true });
    expect(await notificationsOf(rep)).toEqual([
      { kind: "task_assigned", title: "Task assigned to you: Call Acme", body: "", actor_id: manager, record_id: taskId, channel: "in_app" },
    ]);
    expect(await notificationsOf(manager)).toEqual([]);
    // Reassignment through assignTask notifies the new assignee.
    await asUser(db, as(manager), (c) => c.query("select crm.assign_task($1, $2)", [taskId, rep2]), { commit: true });
    expect((await notificationsOf(rep2)).map((n) => n.kind)).toEqual(["task_assigned"]);
  });

  test("a rolled-back cause leaves no notification", async () => {
    await asUser(db, as(manager), (c) => c.query("insert into crm.tasks (title, assignee_id) values ('Never', $1)", [rep]));
    expect(await notificationsOf(rep)).toEqual([]);
    expect(await jobs(db)).toEqual([]);
  });

  test("the owner of a deal hears when someone else moves, wins or loses it; not when they move it themselves", async () => {
    const stages = (await db.owner.query<{ id: string; name: string }>(
      "select s.id, s.name from crm.pipeline_stages s join crm.pipelines p on p.id = s.pipeline_id where p.organization_id = $1 and p.is_default order by s.position",
      [org.id],
    )).rows;
    const byName = Object.fromEntries(stages.map((s) => [s.name, s.id]));
    const dealId = (await db.owner.query("insert into crm.deals (organization_id, customer_id, name, owner_id) values ($1, $2, 'Big one', $3) returning id", [org.id, customerId, rep])).rows[0].id;
    const another = (await db.owner.query("insert into crm.deals (organization_id, customer_id, name, owner_id) values ($1, $2, 'Small one', $3) returning id", [org.id, customerId, rep])).rows[0].id;
    await asUser(db, as(rep), (c) => c.query("select crm.move_deal_stage($1, $2)", [dealId, byName.Qualification]), { commit: true });
    expect(await notificationsOf(rep)).toEqual([]);
    await asUser(db, as(manager), (c) => c.query("select crm.move_deal_stage($1, $2)", [dealId, byName.Proposal]), { commit: true });
    await asUser(db, as(manager), (c) => c.query("select crm.move_deal_stage($1, $2)", [dealId, byName["Closed won"]]), { commit: true });
    await asUser(db, as(manager), (c) => c.query("select crm.move_deal_stage($1, $2, 'Budget cut')", [another, byName["Closed lost"]]), { commit: true });
    expect((await notificationsOf(rep)).map((n) => [n.kind, n.title, n.body])).toEqual([
      ["deal_stage_changed", "Deal moved to Proposal: Big one", ""],
      ["deal_won", "Deal won: Big one", ""],
      ["deal_lost", "Deal lost: Small one", "Reason: Budget cut"],
    ]);
  });

  test("@username in a note notifies active members of the organization once, with an excerpt", async () => {
    const outsider = await createUser(db, "nt-outsider");
    await db.owner.query("insert into crm.organization_memberships (organization_id, user_id, role_id) values ($1, $2, $3)", [other.id, outsider, other.roles.Viewer]);
    const noteId = await asUser(db, as(manager), async (c) =>
      (await c.query("insert into crm.notes (content, customer_id) values ($1, $2) returning id", [
        "Ask @nt-rep about pricing; cc @nt-manager, @nt-outsider and @nobody (mail nt-rep2@example.test)",
        customerId,
      ])).rows[0].id as string,
    { commit: true });
    const got = await notificationsOf(rep);
    expect(got).toEqual([
      expect.objectContaining({ kind: "mentioned", title: "nt-manager Name mentioned you in a note", record_id: noteId, channel: "email" }),
    ]);
    expect(got[0]!.body).toContain("Ask @nt-rep about pricing");
    expect(await notificationsOf(manager)).toEqual([]); // the author
    expect(await notificationsOf(rep2)).toEqual([]); // an e-mail address is not a mention
    expect((await db.owner.query("select count(*)::int as n from crm.notifications where recipient_id = $1", [outsider])).rows[0].n).toBe(0);
    // Editing the note notifies only members mentioned for the first time.
    await asUser(db, as(manager), (c) => c.query("update crm.notes set content = content || ' and @nt-rep2' where id = $1", [noteId]), { commit: true });
    expect((await notificationsOf(rep)).length).toBe(1);
    expect((await notificationsOf(rep2)).map((n) => n.kind)).toEqual(["mentioned"]);
  });

  test("accepting an invitation notifies whoever sent it", async () => {
    const inv = await asUser(db, as(org.adminId), async (c) =>
      (await c.query("select (crm.invite_member('joiner@example.test', $1)).id as id", [org.roles.Viewer])).rows[0].id as string,
    { commit: true });
    const token = (await db.owner.query("select payload->'data'->>'token' as t from graphile_worker._private_jobs where payload->>'template' = 'invitation'")).rows[0].t;
    await db.owner.query("select set_config('cairn.auth.bcrypt_cost', '4', false)");
    const client = await db.auth.connect();
    try {
      await client.query("begin; set local role crm_anonymous; select set_config('cairn.auth.bcrypt_cost', '4', true)");
      await client.query("select crm.accept_invitation($1, 'the-joiner', 'a long enough secret phrase', 'Jo Iner')", [token]);
      await client.query("commit");
    } finally {
      client.release();
    }
    expect(await notificationsOf(org.adminId)).toEqual([
      expect.objectContaining({ kind: "invitation_accepted", title: "Jo Iner accepted your invitation", record_id: inv }),
    ]);
  });
});

describe("time-based notifications (one set-based statement per organization)", () => {
  test("a follow-up date reached notifies the customer's owner once", async () => {
    await db.owner.query("update crm.customers set next_follow_up_at = now() - interval '1 hour' where id = $1", [customerId]);
    const n1 = (await db.owner.query("select crm_private.notify_follow_ups($1) as n", [org.id])).rows[0].n;
    const n2 = (await db.owner.query("select crm_private.notify_follow_ups($1) as n", [org.id])).rows[0].n;
    expect([n1, n2]).toEqual([1, 0]);
    expect((await notificationsOf(rep)).map((n) => [n.kind, n.title])).toEqual([["follow_up_due", "Follow up with Acme"]]);
    // A new follow-up date is a new reminder.
    await db.owner.query("update crm.customers set next_follow_up_at = now() - interval '1 minute' where id = $1", [customerId]);
    await db.owner.query("select crm_private.add_job('notifications:scan', jsonb_build_object('organizationId', $1::text))", [org.id]);
    await runJobs(db);
    expect((await notificationsOf(rep)).length).toBe(2);
  });

  test("tasks due tomorrow (in the organization's time zone) and overdue tasks notify their assignee once", async () => {
    await db.owner.query("update crm.organizations set settings = settings || '{\"timezone\": \"Pacific/Auckland\"}' where id = $1", [org.id]);
    const at = new Date("2030-06-10T12:00:00Z"); // 2030-06-11 00:00 in Auckland (NZST, UTC+12)
    const ins = (title: string, due: string, status = "not_started") =>
      db.owner.query("insert into crm.tasks (organization_id, title, assignee_id, due_at, status) values ($1, $2, $3, $4, $5)", [org.id, title, rep2, due, status]);
    await ins("Tomorrow morning", "2030-06-11T21:00:00Z"); // 2030-06-12 09:00 local: tomorrow
    await ins("Later today", "2030-06-10T20:00:00Z"); // 2030-06-11 08:00 local: today
    await ins("Late", "2030-06-09T12:00:00Z");
    await ins("Late but done", "2030-06-09T12:00:00Z", "in_progress");
    await db.owner.query("update crm.tasks set status = 'completed' where title = 'Late but done'");
    await db.owner.query("delete from crm.notifications");
    const run = async () => (await db.owner.query("select crm_private.notify_due_tasks($1, $2) as n", [org.id, at])).rows[0].n;
    expect(await run()).toBe(2);
    expect(await run()).toBe(0);
    expect((await notificationsOf(rep2)).map((n) => [n.kind, n.title]).sort()).toEqual([
      ["task_due_soon", "Due tomorrow: Tomorrow morning"],
      ["task_overdue", "Overdue: Late"],
    ]);
    await db.owner.query("update crm.organizations set settings = settings - 'timezone' where id = $1", [org.id]);
  });
});

describe("preferences", () => {
  test("OFF stops a kind; EMAIL sends it at once through the e-mail provider; others keep their default", async () => {
    await asUser(db, as(rep), async (c) => {
      await c.query("select crm.set_notification_preference('task_assigned', 'off')");
      await c.query("select crm.set_notification_preference('deal_won', 'email')");
    }, { commit: true });
    const prefs = await asUser(db, as(rep), async (c) => (await c.query("select kind::text, channel::text, is_default from crm.my_notification_preferences()")).rows);
    expect(prefs).toEqual(expect.arrayContaining([
      { kind: "task_assigned", channel: "off", is_default: false },
      { kind: "deal_won", channel: "email", is_default: false },
      { kind: "mentioned", channel: "email", is_default: true },
      { kind: "follow_up_due", channel: "in_app", is_default: true },
    ]));
    await asUser(db, as(manager), (c) => c.query("insert into crm.tasks (title, assignee_id) values ('Silent', $1)", [rep]), { commit: true });
    expect(await notificationsOf(rep)).toEqual([]);
    const dealId = (await db.owner.query("insert into crm.deals (organization_id, customer_id, name, owner_id) values ($1, $2, 'Mail me', $3) returning id", [org.id, customerId, rep])).rows[0].id;
    const won = (await db.owner.query("select s.id from crm.pipeline_stages s join crm.pipelines p on p.id = s.pipeline_id where p.organization_id = $1 and s.is_won", [org.id])).rows[0].id;
    await asUser(db, as(manager), (c) => c.query("select crm.move_deal_stage($1, $2)", [dealId, won]), { commit: true });
    expect((await notificationsOf(rep)).map((n) => [n.kind, n.channel])).toEqual([["deal_won", "email"]]);
    await runJobs(db);
    const mail = (await db.owner.query("select to_address::text, template, subject from crm_private.email_outbox")).rows;
    expect(mail).toEqual([{ to_address: "nt-rep@example.test", template: "notification", subject: "Deal won: Mail me" }]);
    expect((await db.owner.query("select count(*)::int as n from crm.notifications where emailed_at is not null")).rows[0].n).toBe(1);
    // Running the job again does not send it twice.
    await db.owner.query("select crm_private.add_job('notifications:email', jsonb_build_object('notificationId', (select id from crm.notifications limit 1)))");
    await runJobs(db);
    expect((await db.owner.query("select count(*)::int as n from crm_private.email_outbox")).rows[0].n).toBe(1);
  });

  test("preferences are typed and validated", async () => {
    const bad = await sqlError(asUser(db, as(rep), (c) => c.query("select crm.set_notification_preference('nonsense', 'email')")));
    expect(bad.code).toBe("22P02");
    const noMail = await createUser(db, "nt-nomail", { email: undefined });
    await db.owner.query("update crm.users set email = null where id = $1", [noMail]);
    await db.owner.query("insert into crm.organization_memberships (organization_id, user_id, role_id) values ($1, $2, $3)", [org.id, noMail, org.roles.Viewer]);
    const err = await sqlError(asUser(db, as(noMail), (c) => c.query("select crm.set_notification_preference('mentioned', 'digest')")));
    expect([err.code, err.column]).toEqual(["CRVAL", "channel"]);
    // Preferences are per organization and per member: nobody sees or changes another member's.
    await asUser(db, as(rep), (c) => c.query("select crm.set_notification_preference('mentioned', 'in_app')"), { commit: true });
    const seen = await asUser(db, as(manager), async (c) => (await c.query("select count(*)::int as n from crm.notification_preferences")).rows[0].n);
    expect(seen).toBe(0);
  });

  test("the daily digest sends one e-mail per member, listing their DIGEST notifications", async () => {
    for (const u of [rep, rep2]) {
      await asUser(db, as(u), async (c) => {
        await c.query("select crm.set_notification_preference('task_assigned', 'digest')");
        await c.query("select crm.set_notification_preference('follow_up_due', 'digest')");
      }, { commit: true });
    }
    await asUser(db, as(manager), async (c) => {
      await c.query("insert into crm.tasks (title, assignee_id) values ('Digest one', $1), ('Digest two', $1), ('Digest three', $2)", [rep, rep2]);
    }, { commit: true });
    await db.owner.query("update crm.customers set next_follow_up_at = now() - interval '5 minutes' where id = $1", [customerId]);
    await db.owner.query("select crm_private.notify_follow_ups($1)", [org.id]);
    expect(await jobs(db, "notifications:email")).toEqual([]); // nothing immediate
    await db.owner.query("select crm_private.add_job('notifications:digest', '{}')");
    await runJobs(db); // the digest task queues one e-mail per member …
    await runJobs(db); // … which the e-mail task sends
    const mails = (await db.owner.query<{ to_address: string; subject: string; body: string }>(
      "select to_address::text, subject, body from crm_private.email_outbox where template = 'notification_digest'",
    )).rows.sort((x, y) => (x.to_address < y.to_address ? -1 : 1));
    expect(mails.map((m) => [m.to_address, m.subject])).toEqual([
      ["nt-rep2@example.test", "1 new notification in notify Inc"],
      ["nt-rep@example.test", "3 new notifications in notify Inc"],
    ]);
    expect(mails[1]!.body).toContain("Task assigned to you: Digest one");
    expect(mails[1]!.body).toContain("Follow up with Acme");
    // The next digest has nothing left to send.
    expect((await db.owner.query("select crm_private.send_digests($1) as n", [org.id])).rows[0].n).toBe(0);
  });
});

describe("reading notifications", () => {
  test("only the recipient sees them, in the organization of the token; markNotificationsRead and the unread count", async () => {
    const ids = (await db.owner.query<{ id: string }>(
      "insert into crm.notifications (organization_id, recipient_id, kind, title) values ($1, $2, 'follow_up_due', 'one'), ($1, $2, 'follow_up_due', 'two'), ($1, $3, 'follow_up_due', 'not yours') returning id",
      [org.id, rep, rep2],
    )).rows.map((r) => r.id);
    await db.owner.query("insert into crm.organization_memberships (organization_id, user_id, role_id) values ($1, $2, $3)", [other.id, rep, other.roles.Viewer]);
    await db.owner.query("insert into crm.notifications (organization_id, recipient_id, kind, title) values ($1, $2, 'follow_up_due', 'other org')", [other.id, rep]);
    await asUser(db, as(rep), async (c) => {
      expect((await c.query("select title from crm.notifications order by title")).rows.map((r) => r.title)).toEqual(["one", "two"]);
      expect((await c.query("select crm.unread_notification_count() as n")).rows[0].n).toBe(2);
      // Someone else's id is simply not there for them.
      expect((await c.query("select crm.mark_notifications_read($1) as n", [[ids[0], ids[2]]])).rows[0].n).toBe(1);
      expect((await c.query("select crm.unread_notification_count() as n")).rows[0].n).toBe(1);
      expect((await c.query("select crm.mark_notifications_read(all_unread => true) as n")).rows[0].n).toBe(1);
      expect((await c.query("select crm.unread_notification_count() as n")).rows[0].n).toBe(0);
    }, { commit: true });
    expect((await db.owner.query("select count(*)::int as n from crm.notifications where read_at is null")).rows[0].n).toBe(2);
    const err = await sqlError(asUser(db, as(rep), (c) => c.query("select crm.mark_notifications_read()")));
    expect([err.code, err.column]).toEqual(["CRVAL", "ids"]);
    const hidden = await sqlError(asUser(db, as(rep), (c) => c.query("update crm.notifications set title = 'x'")));
    expect(hidden.code).toBe("42501");
  });

  test("over GraphQL: notifications, unreadNotificationCount, markNotificationsRead, setNotificationPreference", async () => {
    let server: TestServer | undefined;
    try {
      server = await startServer(db);
      const token = (await startSession(db, rep2, org.id)).accessToken;
      await db.owner.query("insert into crm.notifications (organization_id, recipient_id, kind, title) values ($1, $2, 'task_overdue', 'Overdue: X')", [org.id, rep2]);
      const list = await server.gql(`{ unreadNotificationCount notifications(orderBy: CREATED_AT_DESC) { nodes { rowId kind title readAt } } }`, {}, { token });
      expect(list.body.errors).toBeUndefined();
      expect(list.body.data!.unreadNotificationCount).toBe(1);
      const n = list.body.data!.notifications.nodes[0];
      expect([n.kind, n.title, n.readAt]).toEqual(["task_overdue", "Overdue: X", null]);
      const marked = await server.gql(`mutation ($ids: [UUID]) { markNotificationsRead(input: { ids: $ids }) { result } }`, { ids: [n.rowId] }, { token });
      expect(marked.body.data!.markNotificationsRead.result).toBe(1);
      const pref = await server.gql(`mutation { setNotificationPreference(input: { kind: mentioned, channel: digest }) { result { kind channel } } }`, {}, { token });
      expect(pref.body.data!.setNotificationPreference.result).toEqual({ kind: "mentioned", channel: "digest" });
      const badKind = await server.gql(`mutation { setNotificationPreference(input: { kind: whatever, channel: digest }) { clientMutationId } }`, {}, { token });
      expect(badKind.body.errors?.[0]?.extensions?.code).toBe("GRAPHQL_VALIDATION");
    } finally {
      await server?.stop();
    }
  });
});
