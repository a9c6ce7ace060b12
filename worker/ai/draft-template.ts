// The local provider's e-mail draft: a deterministic template filled from the context draftEmail
// built in SQL (the same context always gives the same draft).

export interface DraftContext {
  purpose?: string;
  tone?: "friendly" | "formal" | "concise" | string;
  organization?: string;
  sender?: string;
  customer?: { name?: string; kind?: string; status?: string; industry?: string };
  contact?: { firstName?: string; lastName?: string; title?: string };
  deal?: { name?: string; stage?: string; amount?: number | string; currency?: string; expectedCloseDate?: string };
  recentNotes?: { at?: string; text?: string }[];
  openTasks?: { title?: string; type?: string; due?: string }[];
  recentlyDone?: { title?: string; completed?: string }[];
  lastOrders?: { number?: string; at?: string; amount?: number | string; currency?: string; status?: string }[];
}

export interface EmailDraft {
  subject: string;
  body: string;
}

const sentence = (s: string) => {
  const t = s.trim().replace(/\s+/g, " ");
  if (!t) return t;
  const first = t.charAt(0).toUpperCase() + t.slice(1);
  return /[.!?]$/.test(first) ? first : `${first}.`;
};

export function localDraft(c: DraftContext): EmailDraft {
  const tone = c.tone === "formal" || c.tone === "concise" ? c.tone : "friendly";
  const purpose = (c.purpose ?? "").trim().replace(/\s+/g, " ");
  const first = c.contact?.firstName?.trim();
  const full = [c.contact?.firstName, c.contact?.lastName].filter((s) => s && s.trim()).join(" ");
  const greeting =
    tone === "formal" ? (full ? `Dear ${full},` : `Dear ${c.customer?.name ?? "Sir or Madam"} team,`) : tone === "concise" ? `Hi ${first || "there"},` : `Hi ${first || "there"},`;
  const lines: string[] = [];
  if (tone === "friendly") lines.push("I hope you are well.");
  if (tone === "formal") lines.push("I hope this message finds you well.");
  lines.push(sentence(`I am writing about ${purpose.charAt(0).toLowerCase()}${purpose.slice(1)}`));
  if (c.deal?.name) {
    const stage = c.deal.stage ? ` (currently at ${c.deal.stage})` : "";
    lines.push(tone === "concise" ? `Re: ${c.deal.name}${stage}.` : `This concerns ${c.deal.name}${stage}.`);
  }
  const order = c.lastOrders?.[0];
  if (order?.number && tone !== "concise") lines.push(`Thank you for your recent order ${order.number}.`);
  const task = c.openTasks?.[0];
  if (task?.title) lines.push(tone === "concise" ? `Next step: ${task.title}.` : `As a next step, I suggest: ${task.title}${task.due ? ` (by ${task.due})` : ""}.`);
  lines.push(
    tone === "formal" ? "Please let me know a convenient time to discuss this further." : tone === "concise" ? "Let me know what works for you." : "Would you have time for a short call this week?",
  );
  const closing = tone === "formal" ? "Kind regards," : tone === "concise" ? "Thanks," : "Best wishes,";
  const signature = [c.sender, c.organization].filter((s) => s && s.trim()).join("\n");
  const body = [greeting, "", lines.join(tone === "concise" ? " " : "\n\n"), "", closing, signature].filter((l, i, all) => !(l === "" && all[i - 1] === "")).join("\n").trim();
  const topic = purpose.length > 80 ? `${purpose.slice(0, 77)}…` : purpose;
  const subject = c.customer?.name && tone !== "concise" ? `${sentence(topic).replace(/\.$/, "")} — ${c.customer.name}` : sentence(topic).replace(/\.$/, "");
  return { subject: subject.slice(0, 300), body: body.slice(0, 20000) };
}
