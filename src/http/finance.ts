// Finance over HTTP (docs/finance.md):
//   GET  /invoices/:id.pdf                    the printable invoice, read under the caller's row-level
//                                             security (Bearer token, like /graphql)
//   POST /webhooks/stripe/:organizationId     Stripe payment events, verified with the organization's
//                                             signing secret by the official `stripe` library; records
//                                             the payment on the invoice named in the event's metadata
//                                             (`invoice_id`); a replayed event records nothing twice
import express, { type Express, type Request, type Response } from "express";
import Stripe from "stripe";
import { renderInvoicePdf, type InvoicePdfData } from "../finance/invoice-pdf.ts";
import { asCaller, authenticate, handle, HttpProblem, UUID, type IntegrationDeps } from "./integrations.ts";

/** Stripe event types that carry a payment, and how to read it. */
const PAYMENT_EVENTS: Record<string, (o: Record<string, any>) => { amount: number; currency: string; reference: string; paid: boolean }> = {
  "payment_intent.succeeded": (o) => ({ amount: Number(o.amount_received ?? o.amount), currency: String(o.currency), reference: String(o.id), paid: true }),
  "checkout.session.completed": (o) => ({
    amount: Number(o.amount_total),
    currency: String(o.currency),
    reference: String(o.payment_intent ?? o.id),
    paid: o.payment_status === "paid",
  }),
};

export function mountFinanceRoutes(app: Express, deps: IntegrationDeps): void {
  // Only the signature checks need the Stripe client; no API key is used (no call goes to Stripe).
  const stripe = new Stripe("sk_unused_webhook_verification_only");

  app.get(
    "/invoices/:id.pdf",
    handle(deps, async (req: Request, res: Response) => {
      const settings = await authenticate(deps, req);
      const id = String(req.params.id);
      if (!UUID.test(id)) throw new HttpProblem(404, "NOT_FOUND", "No such invoice.");
      const inv = await asCaller(deps.authPool, settings, async (c) => {
        const { rows } = await c.query(
          `select i.organization_id, i.number, i.status, i.currency, i.issue_date::text, i.due_date::text, i.subtotal::text, i.tax_total::text,
                  i.total::text, i.credited_amount::text, i.amount_paid::text, i.balance::text, i.notes, i.payment_instructions,
                  coalesce(i.billing_snapshot, jsonb_build_object(
                    'organization', jsonb_build_object('name', (select o.name from crm.organizations o where o.id = i.organization_id)),
                    'customer', (select jsonb_build_object('name', c.name, 'email', c.email, 'phone', c.phone, 'address', c.billing_address)
                                   from crm.customers c where c.id = i.customer_id),
                    'paymentInstructions', i.payment_instructions,
                    'items', (select coalesce(jsonb_agg(jsonb_build_object('lineNo', x.line_no, 'description', x.description, 'quantity', x.quantity::text,
                                'unitPrice', x.unit_price::text, 'taxRate', x.tax_rate::text, 'lineTotal', x.line_total::text) order by x.line_no), '[]')
                                from crm.invoice_items x where x.invoice_id = i.id))) as snapshot
             from crm.invoices i where i.id = $1`,
          [id],
        );
        return rows[0];
      });
      if (!inv) throw new HttpProblem(404, "NOT_FOUND", "No such invoice.");
      // Presentation settings of the invoice's organization (header, footer, colours): not secret,
      // read once the invoice itself was found under the caller's row-level security.
      const pool = deps.ownerPool ?? deps.authPool;
      const style = (
        await pool.query(
          "select coalesce(pdf_header, '') as header, coalesce(pdf_footer, '') as footer, pdf_accent_color as accent, pdf_text_color as ink from crm.finance_settings where organization_id = $1",
          [inv.organization_id],
        )
      ).rows[0] ?? { header: "", footer: "", accent: "#1F4E79", ink: "#222222" };
      const data: InvoicePdfData = {
        number: inv.number,
        status: inv.status,
        currency: inv.currency,
        issueDate: inv.issue_date,
        dueDate: inv.due_date,
        subtotal: inv.subtotal,
        taxTotal: inv.tax_total,
        total: inv.total,
        creditedAmount: inv.credited_amount,
        amountPaid: inv.amount_paid,
        balance: inv.balance,
        notes: inv.notes,
        snapshot: inv.snapshot,
      };
      const pdf = await renderInvoicePdf(data, { header: style.header, footer: style.footer, accentColor: style.accent, textColor: style.ink });
      res.setHeader("Content-Type", "application/pdf");
      res.setHeader("Content-Disposition", `inline; filename="${inv.number ?? `draft-${id}`}.pdf"`);
      res.setHeader("Cache-Control", "private, no-store");
      res.end(Buffer.from(pdf));
    }),
  );

  app.post(
    "/webhooks/stripe/:organizationId",
    express.raw({ type: () => true, limit: "512kb" }),
    handle(deps, async (req: Request, res: Response) => {
      const org = String(req.params.organizationId);
      const owner = deps.ownerPool;
      if (!owner) throw new HttpProblem(503, "UNAVAILABLE", "The payment webhook needs the owner connection.");
      if (!UUID.test(org)) throw new HttpProblem(404, "NOT_FOUND", "No payment webhook here.");
      const secret = (await owner.query<{ s: string | null }>("select crm_private.payment_webhook_secret($1, 'stripe') as s", [org])).rows[0]?.s;
      if (!secret) throw new HttpProblem(404, "NOT_FOUND", "No payment webhook here.");
      const signature = req.header("stripe-signature");
      const raw = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
      let event: { id: string; type: string; data: { object: Record<string, any> } };
      try {
        event = stripe.webhooks.constructEvent(raw, signature ?? "", secret) as unknown as typeof event;
      } catch {
        req.log.warn({ organizationId: org }, "payment webhook: signature refused");
        throw new HttpProblem(400, "VALIDATION", "The Stripe-Signature header does not verify with this organization's signing secret.", "stripeSignature");
      }
      const read = PAYMENT_EVENTS[event.type];
      const object = event.data?.object ?? {};
      const invoiceId = object.metadata?.invoice_id;
      if (!read || !read(object).paid) {
        res.json({ received: true, recorded: false, reason: "not a payment event" });
        return;
      }
      // Other payments on the same Stripe account (subscriptions, unrelated charges) are acknowledged,
      // not refused: a refusal would make Stripe retry them for days and then disable the endpoint.
      if (typeof invoiceId !== "string" || !UUID.test(invoiceId)) {
        res.json({ received: true, recorded: false, reason: "the event names no invoice (metadata.invoice_id)" });
        return;
      }
      const p = read(object);
      if (!Number.isSafeInteger(p.amount) || p.amount <= 0) throw new HttpProblem(400, "VALIDATION", "The event carries no amount.", "amount");
      const client = await owner.connect();
      try {
        await client.query("begin");
        await client.query("select set_config('cairn.request_id', $1, true)", [req.id]);
        const paid = await client.query(
          "select p.id, p.invoice_id, p.created_at < now() as replayed from crm_private.record_provider_payment($1, 'stripe', $2, $3, $4, $5, $6) p",
          [org, event.id, invoiceId, p.amount, p.currency, p.reference],
        );
        // A statement of its own: the payment's statement saw the invoice as it was before.
        const inv = await client.query("select status, balance::text, number from crm.invoices where id = $1", [paid.rows[0].invoice_id]);
        await client.query("commit");
        const r = { ...paid.rows[0], ...inv.rows[0] };
        req.log.info({ organizationId: org, eventId: event.id, invoiceId, paymentId: r.id, replayed: r.replayed }, "payment webhook: payment recorded");
        res.json({ received: true, recorded: !r.replayed, replayed: r.replayed, paymentId: r.id, invoice: { number: r.number, status: r.status, balance: r.balance } });
      } catch (e) {
        await client.query("rollback").catch(() => undefined);
        throw e;
      } finally {
        client.release();
      }
    }),
  );
}
