// The printable invoice (GET /invoices/:id.pdf, under row-level security) parsed back to text, and the
// Stripe payment webhook verified by the `stripe` library (its own test header generator signs the
// events here): a bad signature is refused, a replay records nothing twice.
import zlib from "node:zlib";
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import Stripe from "stripe";
import { PDFDocument } from "pdf-lib";
import { createTestDb, type TestDb } from "../helpers/db.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { addMember, createOrg, startSession, type TestOrg } from "../helpers/identity.ts";
import { customer } from "../helpers/commerce.ts";
import { asMember } from "../helpers/finance.ts";

let db: TestDb;
let server: TestServer;
let org: TestOrg;
let other: TestOrg;
let clerkId: string;
let clerk: string;
let admin: string;
let rep: string;
let otherAdmin: string;
let buyer: string;
let invoiceId: string;
let number: string;
const stripe = new Stripe("sk_test_unused");
const SECRET = "whsec_cairnTestSecret0123456789";

/** The text a PDF shows: every text-showing operator of every (inflated) content stream, one per line. */
function pdfText(pdf: Buffer): string {
  const out: string[] = [];
  const bin = pdf.toString("latin1");
  const re = /stream\r?\n/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(bin))) {
    const start = m.index + m[0].length;
    const end = bin.indexOf("endstream", start);
    if (end < 0) break;
    const raw = pdf.subarray(start, end);
    let content: string;
    try {
      content = zlib.inflateSync(raw).toString("latin1");
    } catch {
      content = raw.toString("latin1");
    }
    for (const t of content.matchAll(/<([0-9A-Fa-f]*)>\s*Tj|\(((?:\\.|[^\\)])*)\)\s*Tj/g)) {
      out.push(t[1] !== undefined ? Buffer.from(t[1], "hex").toString("latin1") : t[2]!.replace(/\\(.)/g, "$1"));
    }
    re.lastIndex = end;
  }
  return out.join("\n");
}

/** fetch, once more if a kept-alive connection was closed by the server while idle (a slow step in between). */
async function request(url: string, init: RequestInit): Promise<Response> {
  try {
    return await fetch(url, init);
  } catch (e) {
    if ((e as Error).message !== "fetch failed") throw e;
    return fetch(url, init);
  }
}

async function getPdf(id: string, token?: string) {
  return request(`${server.url}/invoices/${id}.pdf`, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
}

function event(id: string, invoice: string, amountMinor: number, currency = "usd") {
  return JSON.stringify({
    id,
    object: "event",
    type: "payment_intent.succeeded",
    data: { object: { id: `pi_${id}`, object: "payment_intent", amount: amountMinor, amount_received: amountMinor, currency, metadata: { invoice_id: invoice } } },
  });
}
async function post(orgId: string, payload: string, signature?: string) {
  const res = await request(`${server.url}/webhooks/stripe/${orgId}`, {
    method: "POST",
    headers: { "Content-Type": "application/json", "Stripe-Signature": signature ?? stripe.webhooks.generateTestHeaderString({ payload, secret: SECRET }) },
    body: payload,
  });
  return { status: res.status, body: (await res.json()) as any };
}

beforeAll(async () => {
  db = await createTestDb();
  org = await createOrg(db, "pdf-a");
  other = await createOrg(db, "pdf-b");
  clerkId = await addMember(db, org, "pdf-clerk", "Finance");
  const repId = await addMember(db, org, "pdf-rep", "Sales Representative");
  clerk = (await startSession(db, clerkId, org.id)).accessToken;
  rep = (await startSession(db, repId, org.id)).accessToken;
  admin = (await startSession(db, org.adminId, org.id)).accessToken;
  otherAdmin = (await startSession(db, other.adminId, other.id)).accessToken;
  buyer = await customer(db, org.id, org.adminId, "Müller & Söhne GmbH");
  await db.owner.query(`update crm.customers set billing_address = '{"line1": "Hauptstraße 1", "city": "Berlin", "country": "DE"}' where id = $1`, [buyer]);
  await db.owner.query(
    `update crm.finance_settings set pdf_header = 'Acme Billing', pdf_footer = 'Thank you for your business. Acme Ltd, registered in Testland.',
            pdf_accent_color = '#AA3300', legal_name = 'Acme Ltd', billing_address = E'1 Test Road\\nTestville', payment_instructions = 'IBAN XX00 1234'
      where organization_id = $1`,
    [org.id],
  );
  const [d] = await asMember(db, org.id, clerkId, `select (crm.create_invoice($1, array[
      row('Consulting, senior', 10, 100.5, 20, null)::crm.invoice_line, row('Travel', 1, 23.9, 0, null)::crm.invoice_line])).id`, [buyer]);
  invoiceId = d.id;
  const [i] = await asMember(db, org.id, clerkId, "select number from crm.issue_invoice($1, '2026-05-04', '2026-06-03')", [invoiceId]);
  number = i.number;
  server = await startServer(db);
});
afterAll(async () => {
  await server?.stop();
  await db?.drop();
});

describe("GET /invoices/:id.pdf", () => {
  test("the PDF opens and shows the number, total, due date, snapshot and the organization's header and footer", async () => {
    // Edits after issue do not rewrite the printed invoice.
    await db.owner.query("update crm.customers set name = 'Renamed Later' where id = $1", [buyer]);
    const path = await server.gql<any>(`query ($id: UUID!) { invoice(rowId: $id) { pdfPath } }`, { id: invoiceId }, { token: clerk });
    expect(path.body.data.invoice.pdfPath).toBe(`/invoices/${invoiceId}.pdf`);
    const res = await getPdf(invoiceId, clerk);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("application/pdf");
    const pdf = Buffer.from(await res.arrayBuffer());
    expect(pdf.subarray(0, 5).toString()).toBe("%PDF-");
    const doc = await PDFDocument.load(pdf);
    expect(doc.getPageCount()).toBe(1);
    expect(doc.getTitle()).toBe(`Invoice ${number}`);
    const text = pdfText(pdf);
    // 10 × 100.50 = 1,005.00 + 20 % = 201.00; 23.90: total 1,229.90.
    for (const s of [number, "2026-06-03", "2026-05-04", "1,229.90 USD", "1,028.90", "201.00", "1,206.00", "Acme Billing", "Thank you for your business.",
                     "Müller & Söhne GmbH", "Hauptstraße 1", "Acme Ltd", "IBAN XX00 1234", "Consulting, senior", "Balance due"]) {
      expect(text).toContain(s);
    }
    expect(text).not.toContain("Renamed Later");
  });

  test("authenticated and under row-level security", async () => {
    expect((await getPdf(invoiceId)).status).toBe(401);
    const r1 = await getPdf(invoiceId, otherAdmin);
    expect(r1.status).toBe(404);
    expect(((await r1.json()) as any).errors[0].extensions.code).toBe("NOT_FOUND");
    expect((await getPdf(invoiceId, rep)).status).toBe(404);
    expect((await getPdf("not-a-uuid", clerk)).status).toBe(404);
    // The customer's client principal reads its own invoice.
    const clientId = await addMember(db, org, "pdf-client", "Client Viewer");
    await db.owner.query("update crm.organization_memberships set client_customer_id = $1 where user_id = $2", [buyer, clientId]);
    const client = (await startSession(db, clientId, org.id)).accessToken;
    expect((await getPdf(invoiceId, client)).status).toBe(200);
    // A draft is not the customer's yet: its client principal does not see it.
    const [d] = await asMember(db, org.id, clerkId, "select (crm.create_invoice($1, array[row('Draft line', 1, 10, 0, null)::crm.invoice_line])).id", [buyer]);
    const draftId = d.id as string;
    expect((await getPdf(draftId, clerk)).status).toBe(200);
    expect((await getPdf(draftId, client)).status).toBe(404);
  });
});

describe("POST /webhooks/stripe/:organizationId", () => {
  test("the signing secret is set with settings:manage and never read back", async () => {
    const q = `mutation ($s: String) { setPaymentWebhookSecret(input: { provider: "stripe", secret: $s }) { result } }`;
    const denied = await server.gql(q, { s: SECRET }, { token: clerk });
    expect(denied.body.errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
    expect((await server.gql(q, { s: "nope" }, { token: admin })).body.errors?.[0]?.extensions?.code).toBe("VALIDATION");
    const ok = await server.gql<any>(q, { s: SECRET }, { token: admin });
    expect(ok.body.errors).toBeUndefined();
    expect(ok.body.data.setPaymentWebhookSecret.result).toBe(true);
  });

  test("a bad signature, a stale one or another secret is refused and records nothing", async () => {
    const payload = event("evt_bad", invoiceId, 1000);
    const forged = await post(org.id, payload, "t=1,v1=deadbeef");
    expect(forged.status).toBe(400);
    expect(forged.body.errors[0].extensions).toMatchObject({ code: "VALIDATION", field: "stripeSignature" });
    const otherSecret = stripe.webhooks.generateTestHeaderString({ payload, secret: "whsec_someoneElse123456" });
    expect((await post(org.id, payload, otherSecret)).status).toBe(400);
    const stale = stripe.webhooks.generateTestHeaderString({ payload, secret: SECRET, timestamp: Math.floor(Date.now() / 1000) - 3600 });
    expect((await post(org.id, payload, stale)).status).toBe(400);
    const tampered = stripe.webhooks.generateTestHeaderString({ payload, secret: SECRET });
    expect((await post(org.id, event("evt_bad", invoiceId, 999999), tampered)).status).toBe(400);
    // An organization without a secret has no endpoint.
    expect((await post(other.id, payload)).status).toBe(404);
    const n = await db.owner.query("select count(*)::int as n from crm.invoice_payments where invoice_id = $1", [invoiceId]);
    expect(n.rows[0].n).toBe(0);
  });

  test("a payment event records the payment on the invoice it names; a replay records nothing twice", async () => {
    const payload = event("evt_1", invoiceId, 50000);
    const first = await post(org.id, payload);
    expect(first.status).toBe(200);
    expect(first.body).toMatchObject({ recorded: true, replayed: false, invoice: { number, status: "partially_paid", balance: "729.90" } });
    const replay = await post(org.id, payload);
    expect(replay.status).toBe(200);
    expect(replay.body).toMatchObject({ recorded: false, replayed: true, paymentId: first.body.paymentId });
    const both = await Promise.all([post(org.id, payload), post(org.id, payload)]);
    expect(both.map((r) => r.status)).toEqual([200, 200]);
    // The same payment told again by its Checkout Session (another event id, the same PaymentIntent).
    const session = JSON.stringify({
      id: "evt_1_checkout",
      object: "event",
      type: "checkout.session.completed",
      data: { object: { id: "cs_1", object: "checkout.session", amount_total: 50000, currency: "usd", payment_status: "paid", payment_intent: "pi_evt_1", metadata: { invoice_id: invoiceId } } },
    });
    const told = await post(org.id, session);
    expect(told.status).toBe(200);
    expect(told.body).toMatchObject({ recorded: false, replayed: true, paymentId: first.body.paymentId });
    // A payment on the account that names no invoice is acknowledged (Stripe would retry a refusal).
    const unrelated = await post(org.id, JSON.stringify({
      id: "evt_subscription",
      object: "event",
      type: "payment_intent.succeeded",
      data: { object: { id: "pi_sub", object: "payment_intent", amount: 900, amount_received: 900, currency: "usd", metadata: {} } },
    }));
    expect({ status: unrelated.status, body: unrelated.body }).toMatchObject({ status: 200, body: { received: true, recorded: false } });
    const rows = await db.owner.query("select amount::text, method, provider, provider_event_id, recorded_by from crm.invoice_payments where invoice_id = $1", [invoiceId]);
    const principal = (await db.owner.query("select crm.system_principal_id($1) as id", [org.id])).rows[0].id;
    expect(rows.rows).toEqual([{ amount: "500.00", method: "card", provider: "stripe", provider_event_id: "evt_1", recorded_by: principal }]);
  });

  test("over-payment and another currency are refused; the rest pays the invoice", async () => {
    const over = await post(org.id, event("evt_2", invoiceId, 72991));
    expect(over.status).toBe(400);
    expect(over.body.errors[0].extensions.code).toBe("VALIDATION");
    expect((await post(org.id, event("evt_3", invoiceId, 100, "eur"))).status).toBe(400);
    const ignored = await post(org.id, JSON.stringify({ id: "evt_4", object: "event", type: "customer.created", data: { object: {} } }));
    expect(ignored.body).toMatchObject({ received: true, recorded: false });
    const rest = await post(org.id, event("evt_5", invoiceId, 72990));
    expect(rest.body.invoice).toMatchObject({ status: "paid", balance: "0.00" });
  });
});
