// Finance tenant jobs. invoices:overdue marks issued invoices past their due date as overdue; the
// database notifies the customer's owner and the Finance members in-app and queues the customer's
// e-mail (consent honoured), once per invoice, in the job's transaction (trigger _300_overdue_notify on
// crm.invoices). Every invoice marked is logged here.
import type { TenantJobFn } from "../tenant/runner.ts";

export interface OverdueInvoice {
  id: string;
  number: string;
  customer_id: string;
  balance: string;
  currency: string;
  due_date: string;
}

export function makeMarkOverdue(): TenantJobFn {
  return async (ctx) => {
    const { rows } = await ctx.client.query<OverdueInvoice>(
      "select id, number, customer_id, balance::text, currency, due_date::text from crm_jobs.mark_overdue_invoices($1::jsonb)",
      [JSON.stringify(ctx.payload)],
    );
    for (const inv of rows) {
      ctx.logger.info(
        { invoiceId: inv.id, number: inv.number, customerId: inv.customer_id, balance: inv.balance, currency: inv.currency, dueDate: inv.due_date },
        "invoice overdue",
      );
    }
    return rows.length;
  };
}
