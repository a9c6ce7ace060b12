// Finance tenant jobs. invoices:overdue marks issued invoices past their due date as overdue; the
// database notifies the customer's owner and the Finance members in-app, once per invoice (trigger
// _300_overdue_notify on crm.invoices). The customer is not e-mailed yet: when the messaging module
// lands, `notifyCustomer` below queues its consent-checked e-mail for each invoice (in the job's
// transaction, so a failed run sends nothing), and until then every invoice marked is logged.
import type { TenantJobContext, TenantJobFn } from "../tenant/runner.ts";

export interface OverdueInvoice {
  id: string;
  number: string;
  customer_id: string;
  balance: string;
  currency: string;
  due_date: string;
}

/** The hook for e-mailing the customer about an overdue invoice (none yet: in-app and log only). */
export type OverdueCustomerNotifier = (ctx: TenantJobContext, invoice: OverdueInvoice) => Promise<void>;

export function makeMarkOverdue(notifyCustomer?: OverdueCustomerNotifier): TenantJobFn {
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
      if (notifyCustomer) await notifyCustomer(ctx, inv);
    }
    return rows.length;
  };
}
