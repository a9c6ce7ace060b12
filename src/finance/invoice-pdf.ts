// The printable invoice: a PDF drawn with pdf-lib (pure JavaScript, no browser) from the invoice's
// billing snapshot (the organization's and customer's details and the lines as they were at issue),
// with the organization's header, footer and colours (crm.finance_settings).
import { PDFDocument, StandardFonts, rgb, type PDFFont, type PDFPage, type RGB } from "pdf-lib";

export interface InvoicePdfData {
  number: string | null;
  status: string;
  currency: string;
  issueDate: string | null;
  dueDate: string | null;
  subtotal: string;
  taxTotal: string;
  total: string;
  creditedAmount: string;
  amountPaid: string;
  balance: string;
  notes: string | null;
  snapshot: {
    organization: { name?: string; address?: string; taxId?: string; email?: string | null };
    customer: { name?: string; email?: string | null; phone?: string | null; address?: Record<string, unknown> | null };
    paymentInstructions?: string;
    items: { lineNo: number; description: string; quantity: string | number; unitPrice: string | number; taxRate: string | number; lineTotal: string | number }[];
  };
}

export interface InvoicePdfStyle {
  header: string;
  footer: string;
  accentColor: string;
  textColor: string;
}

const A4: [number, number] = [595.28, 841.89];
const MARGIN = 50;

function hex(color: string, fallback: RGB): RGB {
  const m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(color);
  return m ? rgb(parseInt(m[1]!, 16) / 255, parseInt(m[2]!, 16) / 255, parseInt(m[3]!, 16) / 255) : fallback;
}

/** Money as 1,234.56 (the amounts come from the database as exact decimal strings). */
export function formatAmount(amount: string | number): string {
  const s = String(amount);
  const neg = s.startsWith("-");
  const [int, frac] = (neg ? s.slice(1) : s).split(".");
  const grouped = int!.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return `${neg ? "-" : ""}${grouped}${frac !== undefined ? `.${frac}` : ""}`;
}

function addressLines(address: Record<string, unknown> | null | undefined): string[] {
  if (!address) return [];
  const keys = ["line1", "line2", "street", "city", "postal_code", "postalCode", "state", "region", "country"];
  const parts = keys.map((k) => address[k]).filter((v): v is string => typeof v === "string" && v.trim() !== "");
  return parts.length ? parts : Object.values(address).filter((v): v is string => typeof v === "string");
}

export async function renderInvoicePdf(inv: InvoicePdfData, style: InvoicePdfStyle): Promise<Uint8Array> {
  const doc = await PDFDocument.create();
  const title = inv.number ? `Invoice ${inv.number}` : "Draft invoice";
  doc.setTitle(title);
  doc.setSubject(inv.snapshot.customer.name ?? "");
  doc.setProducer("Cairn");
  doc.setCreator("Cairn");
  const font = await doc.embedFont(StandardFonts.Helvetica);
  const bold = await doc.embedFont(StandardFonts.HelveticaBold);
  const accent = hex(style.accentColor, rgb(0.12, 0.31, 0.47));
  const ink = hex(style.textColor, rgb(0.13, 0.13, 0.13));
  const grey = rgb(0.45, 0.45, 0.45);

  // Standard fonts speak WinAnsi only: anything else becomes "?" rather than failing the render.
  const safe = (f: PDFFont, text: string) =>
    [...text.replace(/[\u2212\u2010-\u2013]/g, "-").replace(/\s+/g, " ")]
      .map((ch) => {
        try {
          f.encodeText(ch);
          return ch;
        } catch {
          return "?";
        }
      })
      .join("");

  let page: PDFPage = doc.addPage(A4);
  let y = A4[1] - MARGIN;
  const text = (t: string, x: number, size = 10, f = font, color = ink) => page.drawText(safe(f, t), { x, y, size, font: f, color });
  const right = (t: string, xRight: number, size = 10, f = font, color = ink) => {
    const s = safe(f, t);
    page.drawText(s, { x: xRight - f.widthOfTextAtSize(s, size), y, size, font: f, color });
  };
  const footer = () => {
    if (!style.footer) return;
    const size = 8;
    const lines = wrap(safe(font, style.footer), font, size, A4[0] - 2 * MARGIN).slice(0, 4);
    lines.forEach((l, i) => page.drawText(l, { x: MARGIN, y: MARGIN - 10 - i * 10 + (lines.length - 1) * 10, size, font, color: grey }));
  };

  // Header band.
  page.drawRectangle({ x: 0, y: A4[1] - 90, width: A4[0], height: 90, color: accent });
  page.drawText(safe(bold, style.header || inv.snapshot.organization.name || ""), { x: MARGIN, y: A4[1] - 55, size: 18, font: bold, color: rgb(1, 1, 1) });
  const label = inv.status === "void" ? "VOID" : inv.number ? "INVOICE" : "DRAFT";
  const lw = bold.widthOfTextAtSize(label, 22);
  page.drawText(label, { x: A4[0] - MARGIN - lw, y: A4[1] - 58, size: 22, font: bold, color: rgb(1, 1, 1) });
  y = A4[1] - 125;

  // Invoice facts, then from / bill to.
  const facts: [string, string][] = [
    ["Invoice number", inv.number ?? "(not issued)"],
    ["Issue date", inv.issueDate ?? "-"],
    ["Due date", inv.dueDate ?? "-"],
    ["Currency", inv.currency],
  ];
  for (const [k, v] of facts) {
    text(k, A4[0] - 230, 9, font, grey);
    right(v, A4[0] - MARGIN, 10, bold);
    y -= 15;
  }
  y = A4[1] - 125;
  const org = inv.snapshot.organization;
  text("From", MARGIN, 9, font, grey);
  y -= 14;
  for (const l of [org.name ?? "", ...(org.address ? org.address.split(/\r?\n/) : []), org.taxId ? `Tax id: ${org.taxId}` : "", org.email ?? ""].filter(Boolean)) {
    text(l, MARGIN, 10, l === org.name ? bold : font);
    y -= 13;
  }
  y -= 10;
  const cust = inv.snapshot.customer;
  text("Bill to", MARGIN, 9, font, grey);
  y -= 14;
  for (const l of [cust.name ?? "", ...addressLines(cust.address), cust.email ?? "", cust.phone ?? ""].filter(Boolean)) {
    text(l, MARGIN, 10, l === cust.name ? bold : font);
    y -= 13;
  }
  y = Math.min(y, A4[1] - 200) - 20;

  // Lines.
  const cols = { desc: MARGIN, qty: 340, price: 410, tax: 460, total: A4[0] - MARGIN };
  const headerRow = () => {
    page.drawRectangle({ x: MARGIN - 5, y: y - 5, width: A4[0] - 2 * MARGIN + 10, height: 18, color: accent, opacity: 0.12 });
    text("Description", cols.desc, 9, bold);
    right("Qty", cols.qty + 40, 9, bold);
    right("Unit price", cols.price + 40, 9, bold);
    right("Tax %", cols.tax + 30, 9, bold);
    right("Amount", cols.total, 9, bold);
    y -= 22;
  };
  headerRow();
  for (const item of inv.snapshot.items) {
    const desc = wrap(safe(font, item.description), font, 10, cols.qty - cols.desc - 20);
    if (y - desc.length * 12 < MARGIN + 60) {
      footer();
      page = doc.addPage(A4);
      y = A4[1] - MARGIN;
      headerRow();
    }
    right(trimZeros(String(item.quantity)), cols.qty + 40);
    right(formatAmount(trimZeros(String(item.unitPrice), 2)), cols.price + 40);
    right(trimZeros(String(item.taxRate)), cols.tax + 30);
    right(formatAmount(String(item.lineTotal)), cols.total);
    for (const l of desc) {
      text(l, cols.desc);
      y -= 12;
    }
    y -= 4;
  }

  // Totals.
  if (y < MARGIN + 170) {
    footer();
    page = doc.addPage(A4);
    y = A4[1] - MARGIN;
  }
  y -= 6;
  page.drawLine({ start: { x: 330, y: y + 8 }, end: { x: A4[0] - MARGIN, y: y + 8 }, thickness: 0.5, color: grey });
  const totals: [string, string, boolean][] = [
    ["Subtotal", inv.subtotal, false],
    ["Tax", inv.taxTotal, false],
    ["Total", inv.total, true],
  ];
  if (Number(inv.creditedAmount) !== 0) totals.push(["Credited", `-${inv.creditedAmount}`, false]);
  if (Number(inv.amountPaid) !== 0) totals.push(["Paid", `-${inv.amountPaid}`, false]);
  totals.push(["Balance due", inv.balance, true]);
  for (const [k, v, strong] of totals) {
    text(k, 340, 10, strong ? bold : font);
    right(`${formatAmount(v)} ${inv.currency}`, cols.total, strong ? 11 : 10, strong ? bold : font, strong ? accent : ink);
    y -= 16;
  }

  // Payment instructions and notes.
  y -= 10;
  for (const [k, v] of [["Payment instructions", inv.snapshot.paymentInstructions ?? ""], ["Notes", inv.notes ?? ""]] as const) {
    if (!v.trim()) continue;
    text(k, MARGIN, 9, bold, grey);
    y -= 13;
    for (const l of v.split(/\r?\n/).flatMap((p) => wrap(safe(font, p), font, 9, A4[0] - 2 * MARGIN)).slice(0, 12)) {
      text(l, MARGIN, 9);
      y -= 11;
    }
    y -= 6;
  }
  footer();
  return doc.save();
}

function trimZeros(n: string, minDecimals = 0): string {
  if (!n.includes(".")) return minDecimals ? `${n}.${"0".repeat(minDecimals)}` : n;
  let [i, f] = n.split(".") as [string, string];
  f = f.replace(/0+$/, "");
  if (f.length < minDecimals) f = f.padEnd(minDecimals, "0");
  return f ? `${i}.${f}` : i;
}

function wrap(text: string, font: PDFFont, size: number, width: number): string[] {
  const words = text.split(" ");
  const lines: string[] = [];
  let line = "";
  for (const w of words) {
    const next = line ? `${line} ${w}` : w;
    if (font.widthOfTextAtSize(next, size) <= width || !line) line = next;
    else {
      lines.push(line);
      line = w;
    }
  }
  if (line) lines.push(line);
  return lines;
}
