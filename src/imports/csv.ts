// The little CSV the server itself handles: the header record of an upload (PostgreSQL's COPY reads
// the rest) and the lines of an export.

const MAX_HEADER_BYTES = 64 * 1024;

export class CsvHeaderError extends Error {
  override name = "CsvHeaderError";
  readonly status = 400;
  readonly code = "VALIDATION";
  readonly field = "file";
}

/**
 * Reads from `source` until the first CSV record (the header) is complete. Returns its fields and
 * the bytes after it, which belong to the data rows. A UTF-8 byte order mark is dropped.
 */
export async function readCsvHeader(source: AsyncIterator<Buffer>): Promise<{ header: string[]; rest: Buffer }> {
  let buf = Buffer.alloc(0);
  for (;;) {
    const end = headerEnd(buf);
    if (end >= 0) {
      let text = buf.subarray(0, end).toString("utf8");
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
      const rest = buf.subarray(end + 1);
      return { header: parseRecord(text.replace(/\r$/, "")), rest };
    }
    if (buf.length > MAX_HEADER_BYTES) throw new CsvHeaderError("The header row is longer than 64 KB.");
    const r = await source.next();
    if (r.done) {
      if (buf.length === 0) throw new CsvHeaderError("The file is empty; it needs a header row.");
      let text = buf.toString("utf8");
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
      return { header: parseRecord(text.replace(/\r?\n?$/, "")), rest: Buffer.alloc(0) };
    }
    buf = Buffer.concat([buf, r.value]);
  }
}

/** Index of the newline ending the first record (outside quotes), or -1. */
function headerEnd(buf: Buffer): number {
  let quoted = false;
  for (let i = 0; i < buf.length; i++) {
    const c = buf[i];
    if (c === 0x22) quoted = !quoted;
    else if (c === 0x0a && !quoted) return i;
  }
  return -1;
}

function parseRecord(line: string): string[] {
  const out: string[] = [];
  let field = "";
  let quoted = false;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i]!;
    if (quoted) {
      if (ch === '"' && line[i + 1] === '"') {
        field += '"';
        i++;
      } else if (ch === '"') quoted = false;
      else field += ch;
    } else if (ch === '"') quoted = true;
    else if (ch === ",") {
      out.push(field);
      field = "";
    } else field += ch;
  }
  out.push(field);
  return out;
}

/** One CSV line (RFC 4180 quoting) ending in \n. */
export function csvLine(values: string[]): string {
  return values.map((v) => (/[",\r\n]/.test(v) || /^\s|\s$/.test(v) ? `"${v.replace(/"/g, '""')}"` : v)).join(",") + "\n";
}
