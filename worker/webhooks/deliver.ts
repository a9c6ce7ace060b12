// One HTTP POST of a webhook: bounded in time (the whole exchange), redirects not followed (a 3xx is a
// failure), the response body read up to a small limit and kept truncated for the log.
import http from "node:http";
import https from "node:https";
import { checkWebhookUrl, safeLookup, type SafetyOptions } from "./safety.ts";

export const RESPONSE_BODY_KEPT = 2048;
const RESPONSE_BODY_READ = 64 * 1024;

export interface DeliveryResult {
  statusCode: number | null;
  durationMs: number;
  error: string | null;
  responseBody: string | null;
}

export async function postWebhook(
  rawUrl: string,
  body: string,
  headers: Record<string, string>,
  opts: SafetyOptions & { timeoutMs: number },
): Promise<DeliveryResult> {
  const started = performance.now();
  const elapsed = () => Math.round(performance.now() - started);
  let url: URL;
  try {
    url = checkWebhookUrl(rawUrl, opts);
  } catch (e) {
    return { statusCode: null, durationMs: elapsed(), error: (e as Error).message, responseBody: null };
  }
  const client = url.protocol === "https:" ? https : http;
  return new Promise<DeliveryResult>((resolve) => {
    let settled = false;
    const finish = (r: Omit<DeliveryResult, "durationMs">) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve({ ...r, durationMs: elapsed() });
    };
    const req = client.request(
      url,
      {
        method: "POST",
        agent: false,
        lookup: safeLookup(opts) as never,
        headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body), "user-agent": "Cairn-Webhooks/1", ...headers },
      },
      (res) => {
        const chunks: Buffer[] = [];
        let read = 0;
        res.on("data", (chunk: Buffer) => {
          read += chunk.length;
          if (read <= RESPONSE_BODY_KEPT + chunk.length) chunks.push(chunk);
          if (read > RESPONSE_BODY_READ) res.destroy();
        });
        const done = () => {
          const text = Buffer.concat(chunks).subarray(0, RESPONSE_BODY_KEPT).toString("utf8");
          const code = res.statusCode ?? null;
          finish({
            statusCode: code,
            error: code !== null && code >= 200 && code < 300 ? null : `HTTP ${code}`,
            responseBody: text,
          });
        };
        res.on("end", done);
        res.on("close", done);
        res.on("error", done);
      },
    );
    const timer = setTimeout(() => {
      req.destroy(new Error(`timed out after ${opts.timeoutMs} ms`));
    }, opts.timeoutMs);
    req.on("error", (e) => finish({ statusCode: null, error: e.message, responseBody: null }));
    req.end(body);
  });
}
