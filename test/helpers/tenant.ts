// A tenant with at least one row in every tenant-owned table, so generated isolation tests have
// something to try to reach. A new tenant-owned table must be added here: the isolation test fails
// while a table has no fixture rows.
import type { TestDb } from "./db.ts";
import { addMember, createOrg, type TestOrg } from "./identity.ts";

export interface SeededTenant extends TestOrg {
  memberId: string;
  teamId: string;
  customerId: string;
  contactId: string;
  dealId: string;
  projectId: string;
  taskId: string;
  productId: string;
  promotionId: string;
  orderId: string;
  invoiceId: string;
  campaignId: string;
}

export async function seedTenant(db: TestDb, slug: string): Promise<SeededTenant> {
  const org = await createOrg(db, slug);
  const memberId = await addMember(db, org, `${slug}-rep`, "Sales Representative");
  const q = (sql: string, params: unknown[]) => db.owner.query(sql, params);
  const team = await q("insert into crm.teams (organization_id, name) values ($1, 'Field sales') returning id", [org.id]);
  const teamId = team.rows[0].id as string;
  await q("insert into crm.team_members (organization_id, team_id, user_id, is_lead) values ($1, $2, $3, true)", [org.id, teamId, memberId]);
  await q("insert into crm.roles (organization_id, name, description) values ($1, 'Custom', 'custom role')", [org.id]);
  await q(
    "insert into crm.invitations (organization_id, email, role_id, invited_by, expires_at) values ($1, $2, $3, $4, now() + interval '7 days')",
    [org.id, `invitee@${slug}.test`, org.roles.Viewer, org.adminId],
  );
  // CRM records owned by the representative, one in every table.
  const one = async (sql: string, params: unknown[]) => (await q(sql, params)).rows[0]?.id as string;
  const customerId = await one("insert into crm.customers (organization_id, name, email, owner_id) values ($1, $2, $3, $4) returning id", [
    org.id, `${slug} customer`, `buyer@${slug}.test`, memberId,
  ]);
  await q("update crm.customers set status = 'prospect' where id = $1", [customerId]);
  const contactId = await one("insert into crm.contacts (organization_id, customer_id, first_name, last_name) values ($1, $2, 'Pat', 'Buyer') returning id", [org.id, customerId]);
  const tagId = await one("insert into crm.tags (organization_id, name) values ($1, 'vip') returning id", [org.id]);
  const pipeline = (await q("select id from crm.pipelines where organization_id = $1 and is_default", [org.id])).rows[0].id as string;
  const stages = (await q("select id from crm.pipeline_stages where pipeline_id = $1 order by position", [pipeline])).rows.map((r) => r.id as string);
  await q("insert into crm.pipeline_stage_transitions (organization_id, pipeline_id, from_stage_id, to_stage_id) values ($1, $2, $3, $4)", [org.id, pipeline, stages[0], stages[1]]);
  const dealId = await one("insert into crm.deals (organization_id, customer_id, contact_id, name, amount, owner_id) values ($1, $2, $3, 'First deal', 1000, $4) returning id", [
    org.id, customerId, contactId, memberId,
  ]);
  await q("insert into crm.customer_tags (organization_id, customer_id, tag_id) values ($1, $2, $3)", [org.id, customerId, tagId]);
  await q("insert into crm.contact_tags (organization_id, contact_id, tag_id) values ($1, $2, $3)", [org.id, contactId, tagId]);
  await q("insert into crm.deal_tags (organization_id, deal_id, tag_id) values ($1, $2, $3)", [org.id, dealId, tagId]);
  const projectId = await one("insert into crm.projects (organization_id, customer_id, deal_id, name, manager_id) values ($1, $2, $3, 'Onboarding', $4) returning id", [
    org.id, customerId, dealId, memberId,
  ]);
  const taskA = await one("insert into crm.tasks (organization_id, title, assignee_id, customer_id, project_id) values ($1, 'Call', $2, $3, $4) returning id", [org.id, memberId, customerId, projectId]);
  const taskB = await one("insert into crm.tasks (organization_id, title, assignee_id, customer_id) values ($1, 'Follow up', $2, $3) returning id", [org.id, memberId, customerId]);
  await q("insert into crm.task_dependencies (organization_id, task_id, depends_on_task_id) values ($1, $2, $3)", [org.id, taskB, taskA]);
  await q("insert into crm.work_logs (organization_id, user_id, customer_id, task_id, project_id, minutes) values ($1, $2, $3, $4, $5, 30)", [
    org.id, memberId, customerId, taskA, projectId,
  ]);
  await q("insert into crm.notes (organization_id, content, author_id, customer_id) values ($1, 'Met at the fair', $2, $3)", [org.id, memberId, customerId]);
  await q("insert into crm.custom_field_definitions (organization_id, entity, key, label, field_type) values ($1, 'customer', 'segment', 'Segment', 'text')", [org.id]);
  await q("insert into crm.job_runs (organization_id, task, outcome, rows_affected, finished_at) values ($1, 'tasks:recur', 'succeeded', 0, now())", [org.id]);
  // Realtime and integrations: a notification preference, a webhook endpoint with an event, a
  // delivery and an attempt, an import job with an error (notifications come from the task triggers).
  await q("insert into crm.notification_preferences (organization_id, user_id, kind, channel) values ($1, $2, 'mentioned', 'off')", [org.id, memberId]);
  await q("insert into crm.notifications (organization_id, recipient_id, kind, title) values ($1, $2, 'follow_up_due', 'Follow up')", [org.id, memberId]);
  const endpointId = await one("insert into crm.webhook_endpoints (organization_id, url, event_types, is_active) values ($1, $2, '{*}', false) returning id", [
    org.id, `https://hooks.${slug}.example/cairn`,
  ]);
  const eventId = await one("insert into crm.webhook_events (organization_id, event_type, record_id, payload) values ($1, 'customer.updated', $2, '{}') returning id", [
    org.id, customerId,
  ]);
  const deliveryId = await one("insert into crm.webhook_deliveries (organization_id, endpoint_id, event_id, event_type, status) values ($1, $2, $3, 'customer.updated', 'failed') returning id", [
    org.id, endpointId, eventId,
  ]);
  await q("insert into crm.webhook_delivery_attempts (organization_id, delivery_id, attempt, status_code, duration_ms) values ($1, $2, 1, 500, 12)", [org.id, deliveryId]);
  const importId = await one("insert into crm.import_jobs (organization_id, entity, status, created_by) values ($1, 'customers', 'completed', $2) returning id", [org.id, memberId]);
  await q("insert into crm.import_errors (organization_id, import_job_id, row_number, column_name, message) values ($1, $2, 1, 'name', 'Required.')", [org.id, importId]);
  // Commerce: a product, a promotion, an order placed with it (items, discount, events, points,
  // assignments), a payment, and a level set by hand — through the business functions, as the admin.
  const categoryId = await one("insert into crm.product_categories (organization_id, name) values ($1, 'Services') returning id", [org.id]);
  const productId = await one(
    "insert into crm.products (organization_id, sku, name, category_id, unit_price, currency, tax_rate) values ($1, 'SVC-1', 'Setup', $2, 100, 'USD', 20) returning id",
    [org.id, categoryId],
  );
  const promotionId = await one(
    `insert into crm.promotions (organization_id, name, code, discount_type, discount_value, condition)
     values ($1, 'Welcome', 'WELCOME', 'percent', 10, '{"type":"first_purchase"}') returning id`,
    [org.id],
  );
  const asAdmin = async (sql: string, params: unknown[]) => {
    const c = await db.owner.connect();
    try {
      await c.query("begin");
      await c.query("select set_config('jwt.claims.sub', $1, true), set_config('jwt.claims.org', $2, true)", [org.adminId, org.id]);
      const r = await c.query(sql, params);
      await c.query("commit");
      return r.rows[0];
    } catch (e) {
      await c.query("rollback");
      throw e;
    } finally {
      c.release();
    }
  };
  const orderId = (
    await asAdmin("select (crm.create_order($1, array[row($2, 2, null)::crm.order_line], 'fixture-order', array['WELCOME'])).id", [customerId, productId])
  ).id as string;
  await asAdmin("select crm.record_payment($1, 100, 'card')", [orderId]);
  const gold = (await q("select id from crm.customer_levels where organization_id = $1 and name = 'Gold'", [org.id])).rows[0].id as string;
  await asAdmin("select crm.set_customer_level($1, $2, 'Fixture')", [customerId, gold]);
  // AI: a model, a score in the history, a day of cloud usage, a draft and a stored insight (the
  // settings row comes with the organization).
  await q(
    `insert into crm.lead_score_models (organization_id, version, kind, name, coefficients, training_size, metrics)
     values ($1, 1, 'prior', 'local-prior-v1', '{"intercept": -0.8, "features": {}}', 0, '{}')`,
    [org.id],
  );
  await q(
    "insert into crm.lead_score_history (organization_id, customer_id, score, reasons, model, provider) values ($1, $2, 42, '{Fixture}', 'local-prior-v1', 'local')",
    [org.id, customerId],
  );
  await q("insert into crm.ai_usage (organization_id, day, calls) values ($1, current_date, 3)", [org.id]);
  await q(
    "insert into crm.ai_drafts (organization_id, requested_by, customer_id, purpose, context) values ($1, $2, $3, 'Follow up on the fair', '{}')",
    [org.id, memberId, customerId],
  );
  await q("insert into crm.ai_insights (organization_id, customer_id, sentiment, summary, model) values ($1, $2, 0.5, 'Fixture', 'fixture')", [
    org.id, customerId,
  ]);
  // Finance: an issued invoice (items, snapshot) with a payment and a credit note, a billing
  // schedule, and a submitted expense (settings and categories come with the organization).
  const invoiceId = (
    await asAdmin("select (crm.create_invoice($1, array[row('Consulting', 2, 150, 20, null)::crm.invoice_line])).id", [customerId])
  ).id as string;
  await asAdmin("select crm.issue_invoice($1)", [invoiceId]);
  await asAdmin("select crm.record_invoice_payment($1, 100, 'bank_transfer')", [invoiceId]);
  await asAdmin("select crm.credit_invoice($1, 10, 'Fixture discount')", [invoiceId]);
  await q(
    `insert into crm.billing_schedules (organization_id, customer_id, name, frequency, items, start_date)
     values ($1, $2, 'Support plan', 'monthly', '[{"description": "Support", "quantity": "1", "unitPrice": "99"}]', current_date + 30)`,
    [org.id, customerId],
  );
  const travel = (await q("select id from crm.expense_categories where organization_id = $1 and name = 'Travel'", [org.id])).rows[0].id as string;
  await q(
    "insert into crm.expenses (organization_id, category_id, amount, currency, description, project_id, submitted_by, status) values ($1, $2, 42.5, 'USD', 'Train', $3, $4, 'draft')",
    [org.id, travel, projectId, memberId],
  );
  // RFM: a completed run with the customer's scores in it (the settings row comes with the organization).
  const rfmRun = (
    await q(
      `insert into crm.rfm_runs (organization_id, reason, status, as_of, finished_at, mode, customers_scored, levels_changed)
       values ($1, 'scheduled', 'completed', now(), now(), 'thresholds', 1, 0) returning id`,
      [org.id],
    )
  ).rows[0].id as string;
  await q(
    `insert into crm.rfm_scores (organization_id, run_id, customer_id, recency_score, frequency_score, monetary_score, score,
                                 recency_days, order_count, monetary_value, level_before_id, level_after_id)
     values ($1, $2, $3, 5, 1, 2, 2.67, 0, 1, 100, $4, $4)`,
    [org.id, rfmRun, customerId, gold],
  );
  // Messaging: consent, a suppressed address, a segment, a template, a campaign with a recipient and
  // its queued message (the settings row comes with the organization).
  await q("insert into crm.consents (organization_id, customer_id, channel, status, source) values ($1, $2, 'sms', 'opted_out', 'fixture')", [org.id, customerId]);
  await q("insert into crm.suppressions (organization_id, channel, address, reason) values ($1, 'email', $2, 'manual')", [org.id, `blocked@${slug}.test`]);
  const segmentId = await one(`insert into crm.segments (organization_id, name, filter) values ($1, 'Prospects', '{"all": [{"field": "status", "op": "=", "value": "prospect"}]}') returning id`, [org.id]);
  const templateId = await one("insert into crm.message_templates (organization_id, name, channel, subject, body) values ($1, 'Hello', 'email', 'Hello [FirstName]', '<p>Hi [FirstName]</p>') returning id", [org.id]);
  const campaignId = await one("insert into crm.campaigns (organization_id, name, owner_id, segment_id, template_id) values ($1, 'Spring', $2, $3, $4) returning id", [
    org.id, memberId, segmentId, templateId,
  ]);
  const messageId = await one(
    "insert into crm.messages (organization_id, customer_id, channel, recipient, subject, body, campaign_id, template_id, status) values ($1, $2, 'email', $3, 'Hello', 'Hi', $4, $5, 'cancelled') returning id",
    [org.id, customerId, `buyer@${slug}.test`, campaignId, templateId],
  );
  await q("insert into crm.campaign_contacts (organization_id, campaign_id, customer_id, message_id, status) values ($1, $2, $3, $4, 'queued')", [
    org.id, campaignId, customerId, messageId,
  ]);
  // Audit rows come from the triggers (memberships, teams, roles, every CRM table).
  return { ...org, memberId, teamId, customerId, contactId, dealId, projectId, taskId: taskA, productId, promotionId, orderId, invoiceId, campaignId };
}
