// Catalog rules every table, function and role must follow, as queries over pg_catalog. Each returns
// the offenders; an exception has to be written down here, with its reason.
import type pg from "pg";

/** Tables that are not tenant-owned (global catalogs), with the reason. */
export const GLOBAL_TABLES: Record<string, string> = {
  "crm.organizations": "the tenant itself",
  "crm.users": "users are global; memberships tie them to tenants",
  "crm.permissions": "the global catalog of permission codes",
};

/** SECURITY DEFINER functions allowed in the exposed schema `crm`, with the reason. */
const AUTH = "authentication entry point: reads secrets in crm_private; wired by the server, hidden from the generated API";
const ADMIN = "access administration: checks its permission explicitly, then writes memberships, grants or private tokens";
const HELPER = "identity helper used by policies: reads grants without recursing through row-level security";
const WORKFLOW = "business workflow: checks its permission explicitly (the action is allowed where a plain update is not)";
const TRASH = "soft delete: works on hidden (deleted) rows after an explicit permission check";
const COMMERCE = "commerce workflow: checks its permission and the visibility of the customer or order explicitly (NOT_FOUND otherwise)";
const FINANCE = "finance workflow: checks its permission and the visibility of the customer, order, invoice or expense explicitly (NOT_FOUND otherwise)";
export const EXPOSED_SECURITY_DEFINER: Record<string, string> = {
  "crm.login": AUTH,
  "crm.refresh_session": AUTH,
  "crm.logout": AUTH,
  "crm.logout_all": AUTH,
  "crm.switch_organization": AUTH,
  "crm.register": AUTH,
  "crm.confirm_email": AUTH,
  "crm.resend_email_confirmation": AUTH,
  "crm.request_password_reset": AUTH,
  "crm.reset_password": AUTH,
  "crm.change_password": AUTH,
  "crm.create_organization": AUTH,
  "crm.accept_invitation": AUTH,
  "crm.grant_permission": ADMIN,
  "crm.revoke_permission": ADMIN,
  "crm.add_member": ADMIN,
  "crm.invite_member": ADMIN,
  "crm.revoke_invitation": ADMIN,
  "crm.change_member_role": ADMIN,
  "crm.set_member_active": ADMIN,
  "crm.remove_member": ADMIN,
  "crm.decline_invitation": "membership by consent: the invited person declines an invitation of another organization (checked: addressed to them)",
  "crm.my_invitations": "membership by consent: lists the open invitations addressed to the signed-in user, from other organizations",
  "crm.current_permissions": HELPER,
  "crm.has_permission": HELPER,
  "crm.visible_owner_ids": HELPER,
  "crm.visible_owner_bounds": HELPER,
  "crm.my_organization_ids": HELPER,
  "crm.current_org_member_ids": HELPER,
  "crm.reference_exists": "reference guard helper: tells a hidden row from a missing one, within the caller's organization only",
  "crm.visible_customer_ids": HELPER,
  "crm.assign_task": WORKFLOW,
  "crm.move_deal_stage": WORKFLOW,
  "crm.delete_customer": TRASH,
  "crm.delete_contact": TRASH,
  "crm.delete_deal": TRASH,
  "crm.delete_project": TRASH,
  "crm.delete_note": TRASH,
  "crm.update_task_status": WORKFLOW,
  "crm.reports_overview": "organization-wide report: needs reports:read_all, then counts across every owner",
  "crm.search":
    "search: applies the policies' visibility rules itself, because row-level security keeps the non-leakproof text-search operators away from the GIN indexes",
  "crm.restore_customer": TRASH,
  "crm.restore_contact": TRASH,
  "crm.restore_deal": TRASH,
  "crm.restore_project": TRASH,
  "crm.restore_note": TRASH,
  "crm.purge_customer": TRASH,
  "crm.purge_deal": TRASH,
  "crm.purge_project": TRASH,
  "crm.purge_note": TRASH,
  "crm.deleted_customers": TRASH,
  "crm.my_notification_preferences": "reads the default channel of each kind (crm_private); returns only the caller's own preferences",
  "crm.webhook_event_types": "lists the webhook event catalog kept in crm_private (names only)",
  "crm.redeliver_webhook": WORKFLOW,
  "crm.rotate_webhook_secret": WORKFLOW,
  "crm.delete_product": TRASH,
  "crm.restore_product": TRASH,
  "crm.create_order": `${COMMERCE}: prices, applies promotions, writes the order, its lines, points and events`,
  "crm.record_payment": `${COMMERCE}: writes the payment and moves the order's status`,
  "crm.refund_order": `${COMMERCE}: writes the refund, moves the order's status and takes points back`,
  "crm.cancel_order": `${COMMERCE}: cancels, gives back points and promotion uses`,
  "crm.redeem_points": `${COMMERCE}: appends to the append-only loyalty ledger under the customer's lock`,
  "crm.adjust_loyalty_points": `${COMMERCE}: appends to the append-only loyalty ledger under the customer's lock`,
  "crm.set_customer_level": `${COMMERCE}: changes the level (not writable by the API) and records why`,
  "crm.assign_promotion": `${COMMERCE}: writes an assignment (not writable by the API)`,
  "crm.revoke_promotion": `${COMMERCE}: closes an assignment (not writable by the API)`,
  "crm.score_leads":
    "AI: checks ai:use and that every id is a customer or contact the caller sees (NOT_FOUND otherwise), unpins those scores and enqueues the scoring job",
  "crm.client_customer_id": HELPER,
  "crm.create_invoice": `${FINANCE}: writes the draft and its lines (not writable by the API), totals exact to the cent`,
  "crm.create_invoice_from_orders": `${FINANCE}: bills orders the caller sees, once each`,
  "crm.issue_invoice": `${FINANCE}: takes the organization's locked number counter (crm_private) and snapshots the billing details`,
  "crm.void_invoice": `${FINANCE}: moves the status; refuses an invoice with payments not credited in full`,
  "crm.record_invoice_payment": `${FINANCE}: writes the payment and moves the invoice's status; refuses over-payment`,
  "crm.credit_invoice": `${FINANCE}: numbers and writes the credit note, lowers the balance`,
  "crm.submit_expense": `${FINANCE}: the submitter moves their draft on (status is not writable by the API)`,
  "crm.approve_expense": `${FINANCE}: expenses:approve, never one's own expense`,
  "crm.reject_expense": `${FINANCE}: expenses:approve, never one's own expense`,
  "crm.reimburse_expense": `${FINANCE}: expenses:approve`,
  "crm.bill_schedule_period": `${FINANCE}: the invoices:recur job's step, through createInvoice and issueInvoice (their checks)`,
  "crm.set_payment_webhook_secret": `${FINANCE}: settings:manage; writes the secret to crm_private, never reads it back`,
  "crm.set_client_customer": ADMIN,
  "crm.expire_loyalty_points_as_job":
    "loyalty:expire tenant job: refuses everyone but the organization's system principal, then appends expiries to the append-only ledger (not writable by crm_user) under the loyalty lock; hidden from the API",
  "crm.recalculate_rfm": "RFM: checks settings:manage, then queues a run (crm.rfm_runs is written by the job's system principal only) and the rfm:score job",
  "crm.set_consent": "messaging: checks consent:manage and the customer's visibility explicitly, then upserts the subject's consent row (no direct writes)",
  "crm.delete_campaign": TRASH,
  "crm.add_campaign_recipients": "messaging workflow: checks campaigns:update and the customers' visibility explicitly, then writes campaign_contacts (no direct writes)",
  "crm.add_campaign_segment": "messaging workflow: checks campaigns:update, then adds the segment's members across the organization",
  "crm.remove_campaign_recipients": "messaging workflow: checks campaigns:update, then marks recipients removed and cancels their unsent messages",
  "crm.execute_campaign": "messaging workflow: checks campaigns:execute, then fans the campaign out to the whole organization's recipients in one statement (consent and suppression in SQL)",
  "crm.campaign_metrics": "messaging report: needs campaigns:read, then counts the campaign's messages and the recipients' orders across every owner",
  "crm.run_message_automation": "messaging automation: only the organization's system principal (tenant job) or settings:manage; queues messages with the owner's signing key",
};

type Q = Pick<pg.ClientBase, "query">;

async function rows<T>(db: Q, sql: string): Promise<T[]> {
  return (await db.query(sql)).rows as T[];
}

export const catalogRules: Record<string, (db: Q) => Promise<string[]>> = {
  async tablesWithoutRls(db) {
    const r = await rows<{ name: string; rls: boolean; policies: number }>(db, `
      select n.nspname || '.' || c.relname as name, c.relrowsecurity as rls,
             (select count(*)::int from pg_policy p where p.polrelid = c.oid) as policies
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
       where n.nspname in ('crm', 'crm_private') and c.relkind in ('r', 'p')
       order by 1`);
    return r.filter((t) => !t.rls || t.policies === 0).map((t) => `${t.name} (rls: ${t.rls}, policies: ${t.policies})`);
  },

  async tenantTablesWithoutIndexedOrganization(db) {
    const r = await rows<{ name: string; has_col: boolean; not_null: boolean; indexed: boolean }>(db, `
      select n.nspname || '.' || c.relname as name,
             a.attname is not null as has_col,
             coalesce(a.attnotnull, false) as not_null,
             exists (select 1 from pg_index i where i.indrelid = c.oid and i.indkey[0] = a.attnum) as indexed
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        left join pg_attribute a on a.attrelid = c.oid and a.attname = 'organization_id' and not a.attisdropped
       where n.nspname = 'crm' and c.relkind in ('r', 'p')
       order by 1`);
    return r
      .filter((t) => !(t.name in GLOBAL_TABLES))
      .filter((t) => !t.has_col || !t.not_null || !t.indexed)
      .map((t) => `${t.name} (column: ${t.has_col}, not null: ${t.not_null}, indexed: ${t.indexed})`);
  },

  async policyColumnsWithoutIndex(db) {
    // Columns a policy reads must be in an index of their table (the policy runs on every query).
    const exempt: Record<string, string> = {
      deleted_at: "soft-delete flag: rows are found through the other, indexed predicates",
    };
    const r = await rows<{ tbl: string; policy: string; col: string; indexed: boolean }>(db, `
      select c.oid::regclass::text as tbl, p.polname as policy, a.attname as col,
             exists (select 1 from pg_index i where i.indrelid = c.oid and a.attnum = any (i.indkey::int2[])) as indexed
        from pg_policy p
        join pg_class c on c.oid = p.polrelid
        join pg_namespace n on n.oid = c.relnamespace
        join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
       where n.nspname in ('crm', 'crm_private')
         and regexp_replace(coalesce(pg_get_expr(p.polqual, p.polrelid), '') || ' ' || coalesce(pg_get_expr(p.polwithcheck, p.polrelid), ''),
                            '''[^'']*''', '', 'g')
             ~ ('(^|[^a-z_.])(' || c.relname || '\.)?' || a.attname || '([^a-z_(]|$)')`);
    return [...new Set(r.filter((x) => !x.indexed && !(x.col in exempt)).map((x) => `${x.tbl}.${x.col} (policy ${x.policy})`))];
  },

  async foreignKeysWithoutIndex(db) {
    const r = await rows<{ name: string; covered: boolean }>(db, `
      select con.conrelid::regclass::text || '.' || con.conname as name,
             exists (
               select 1 from pg_index i
                where i.indrelid = con.conrelid
                  and (i.indkey::int2[])[0:array_length(con.conkey, 1) - 1] @> con.conkey
                  and (i.indkey::int2[])[0:array_length(con.conkey, 1) - 1] <@ con.conkey
             ) as covered
        from pg_constraint con join pg_namespace n on n.oid = con.connamespace
       where con.contype = 'f' and n.nspname in ('crm', 'crm_private')
       order by 1`);
    return r.filter((f) => !f.covered).map((f) => f.name);
  },

  async tenantForeignKeysNotComposite(db) {
    const r = await rows<{ name: string; child: string; parent: string; cols: string[]; parent_cols: string[] }>(db, `
      select con.conrelid::regclass::text || '.' || con.conname as name,
             con.conrelid::regclass::text as child, con.confrelid::regclass::text as parent,
             array(select a.attname::text from unnest(con.conkey) with ordinality k(n, i)
                     join pg_attribute a on a.attrelid = con.conrelid and a.attnum = k.n order by k.i) as cols,
             array(select a.attname::text from unnest(con.confkey) with ordinality k(n, i)
                     join pg_attribute a on a.attrelid = con.confrelid and a.attnum = k.n order by k.i) as parent_cols
        from pg_constraint con join pg_namespace n on n.oid = con.connamespace
       where con.contype = 'f' and n.nspname = 'crm'`);
    const tenantOwned = (t: string) => t.startsWith("crm.") && !(t in GLOBAL_TABLES);
    return r
      .filter((f) => tenantOwned(f.child) && tenantOwned(f.parent))
      .filter((f) => {
        const i = f.cols.indexOf("organization_id");
        return i < 0 || f.parent_cols[i] !== "organization_id";
      })
      .map((f) => f.name);
  },

  async securityDefinerUnpinned(db) {
    const r = await rows<{ name: string; schema: string; pinned: boolean }>(db, `
      select p.oid::regprocedure::text as name, n.nspname as schema,
             exists (select 1 from unnest(coalesce(p.proconfig, '{}')) c where c like 'search_path=%') as pinned
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace
       where p.prosecdef and n.nspname in ('crm', 'crm_private')`);
    return r
      .filter((f) => !f.pinned || (f.schema === "crm" && !(f.name.replace(/\(.*$/, "") in EXPOSED_SECURITY_DEFINER)))
      .map((f) => `${f.name}${f.pinned ? " (SECURITY DEFINER in crm, not allow-listed)" : " (search_path not pinned)"}`);
  },

  async referencesUnguarded(db) {
    // Every table with a foreign key into a tenant-owned table checks that the row it points at is
    // visible to the caller (migrations/current/120-reference-scope.sql).
    const r = await rows<{ name: string }>(db, `
      select c.oid::regclass::text as name
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
       where n.nspname = 'crm' and c.relkind in ('r', 'p')
         and exists (select 1 from pg_constraint con
                      where con.conrelid = c.oid and con.contype = 'f'
                        and exists (select 1 from pg_attribute x where x.attrelid = con.confrelid and x.attname = 'organization_id' and not x.attisdropped))
         and not exists (select 1 from pg_trigger t where t.tgrelid = c.oid and t.tgname = '_950_references_visible'
                           and t.tgfoid = 'crm_private.tg_references_visible'::regproc)
       order by 1`);
    return r.map((t) => `${t.name}: add \`select crm_private.guard_references('${t.name}');\` to its migration`);
  },

  async viewsNotSecurityInvoker(db) {
    const r = await rows<{ name: string; invoker: boolean }>(db, `
      select c.oid::regclass::text as name,
             coalesce('security_invoker=true' = any(c.reloptions) or 'security_invoker=on' = any(c.reloptions), false) as invoker
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
       where n.nspname = 'crm' and c.relkind in ('v', 'm')`);
    return r.filter((v) => !v.invoker).map((v) => v.name);
  },

  async requestRolesCanBypassRls(db) {
    const r = await rows<{ role: string; bypass: boolean; owns: number; powerful_member_of: string[] }>(db, `
      with recursive memberships(member, role) as (
        select r.oid, r.oid from pg_roles r where r.rolname in ('crm_user', 'crm_anonymous', 'crm_authenticator')
        union
        select m.member, am.roleid from memberships m join pg_auth_members am on am.member = m.role
      )
      select r.rolname as role,
             r.rolsuper or r.rolbypassrls as bypass,
             (select count(*)::int from pg_class c join pg_namespace n on n.oid = c.relnamespace
               where n.nspname in ('crm', 'crm_private') and c.relowner in (select role from memberships where member = r.oid)) as owns,
             array(select g.rolname::text from memberships m join pg_roles g on g.oid = m.role
                    where m.member = r.oid and m.role <> r.oid
                      and (g.rolsuper or g.rolbypassrls or g.rolname = 'crm_owner' or g.rolname like 'pg\\_%')) as powerful_member_of
        from pg_roles r where r.rolname in ('crm_user', 'crm_anonymous', 'crm_authenticator')
       order by 1`);
    const problems: string[] = [];
    if (r.length !== 3) problems.push(`expected 3 request roles, found ${r.length}`);
    for (const x of r) {
      if (x.bypass) problems.push(`${x.role} is superuser or BYPASSRLS`);
      if (x.owns) problems.push(`${x.role} owns ${x.owns} relations in crm/crm_private (owners bypass RLS)`);
      if (x.powerful_member_of.length) problems.push(`${x.role} is a member of ${x.powerful_member_of.join(", ")}`);
    }
    return problems;
  },

  async grantedToPublic(db) {
    const r = await rows<{ name: string }>(db, `
      select p.oid::regprocedure::text as name
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace
       where n.nspname in ('crm', 'crm_private')
         and exists (select 1 from aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a where a.grantee = 0)
      union all
      select c.oid::regclass::text from pg_class c join pg_namespace n on n.oid = c.relnamespace
       where n.nspname in ('crm', 'crm_private')
         and exists (select 1 from aclexplode(c.relacl) a where a.grantee = 0)`);
    return r.map((x) => x.name);
  },

  async tenantJobFunctionsNotInvoker(db) {
    // Tenant job SQL (schema crm_jobs) must run under the organization's row-level security as the
    // system principal: SECURITY INVOKER, executable by crm_user only.
    const r = await rows<{ name: string; definer: boolean; anonymous: boolean }>(db, `
      select p.oid::regprocedure::text as name, p.prosecdef as definer,
             has_function_privilege('crm_anonymous', p.oid, 'execute') as anonymous
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace
       where n.nspname = 'crm_jobs'`);
    return r
      .filter((f) => f.definer || f.anonymous)
      .map((f) => `${f.name}${f.definer ? " (SECURITY DEFINER: would escape RLS)" : ""}${f.anonymous ? " (executable by crm_anonymous)" : ""}`);
  },

  async privateSchemaUsable(db) {
    const r = await rows<{ role: string }>(db, `
      select r as role from unnest(array['crm_user', 'crm_anonymous']) r where has_schema_privilege(r, 'crm_private', 'usage')
      union all
      -- The authenticator may use crm_private only to check sessions (begin_request does it inside the
      -- request's transaction) and provision external users.
      select 'crm_authenticator can execute ' || p.oid::regprocedure::text
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace
       where n.nspname = 'crm_private' and has_function_privilege('crm_authenticator', p.oid, 'execute')
         and p.proname not in ('session_principal', 'external_principal', 'begin_request')`);
    return r.map((x) => `${x.role} has USAGE on crm_private`);
  },
};
