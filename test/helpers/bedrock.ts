// A local HTTP endpoint that speaks the Bedrock Runtime Converse API (POST /model/{modelId}/converse),
// for tests of the real @aws-sdk/client-bedrock-runtime client. It verifies each request's AWS
// Signature Version 4 with the test credentials (a wrong signature is refused as AWS refuses it),
// records what it was sent, and answers from a script: a good answer, a malformed one, throttling, or
// a server error.
import crypto from "node:crypto";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";

export const BEDROCK_TEST_CREDENTIALS = { accessKeyId: "AKIDCAIRNTEST0000001", secretAccessKey: "cairn-test-secret-key/for+sigv4", region: "eu-west-1" };

export type BedrockAnswer =
  | { kind: "text"; text: string }
  | { kind: "throttle" }
  | { kind: "error"; status: number; type: string; message?: string }
  /** Answers only after `ms` (for the client's time limit). */
  | { kind: "slow"; ms: number; answer: BedrockAnswer };

export interface BedrockRequest {
  modelId: string;
  system: string;
  user: string;
  signatureValid: boolean;
  authorization: string;
  answered: BedrockAnswer["kind"] | "refused";
}

export interface BedrockEndpoint {
  url: string;
  requests: BedrockRequest[];
  /** Answers used first, in order; then `respond`. */
  script: BedrockAnswer[];
  /** The default answer for a request (by its system prompt). */
  respond: (req: { system: string; user: string }) => BedrockAnswer;
  env: Record<string, string>;
  stop: () => Promise<void>;
}

const sha256 = (data: string | Buffer) => crypto.createHash("sha256").update(data).digest("hex");
const hmac = (key: crypto.BinaryLike, data: string) => crypto.createHmac("sha256", key).update(data).digest();
const rfc3986 = (s: string) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);

/** Recomputes the SigV4 signature of a request (service bedrock) and compares it with the one sent. */
export function verifySigV4(req: http2.Http2ServerRequest, body: Buffer, secretAccessKey: string): boolean {
  const auth = String(req.headers.authorization ?? "");
  const m = /^AWS4-HMAC-SHA256 Credential=([^/]+)\/(\d{8})\/([^/]+)\/([^/]+)\/aws4_request, ?SignedHeaders=([^,]+), ?Signature=([0-9a-f]{64})$/.exec(auth);
  if (!m) return false;
  const [, , date, region, service, signedHeaders, signature] = m as unknown as string[];
  const amzDate = String(req.headers["x-amz-date"] ?? "");
  if (!amzDate.startsWith(date!) || service !== "bedrock") return false;
  const url = new URL(req.url ?? "/", "http://localhost");
  // Services other than S3 sign the path escaped once more (the SDK's uriEscapePath).
  const canonicalUri = url.pathname.split("/").map((seg) => rfc3986(seg)).join("/");
  const canonicalQuery = [...url.searchParams.entries()].map(([k, v]) => `${rfc3986(k)}=${rfc3986(v)}`).sort().join("&");
  const names = signedHeaders!.split(";");
  // HTTP/2 carries the host as the :authority pseudo-header.
  const header = (n: string) => String(req.headers[n] ?? (n === "host" ? req.headers[":authority"] : "") ?? "");
  const canonicalHeaders = names.map((n) => `${n}:${header(n).trim().replace(/\s+/g, " ")}\n`).join("");
  const payloadHash = String(req.headers["x-amz-content-sha256"] ?? sha256(body));
  const canonicalRequest = [req.method, canonicalUri, canonicalQuery, canonicalHeaders, signedHeaders, payloadHash].join("\n");
  const scope = `${date}/${region}/${service}/aws4_request`;
  const stringToSign = ["AWS4-HMAC-SHA256", amzDate, scope, sha256(canonicalRequest)].join("\n");
  const key = hmac(hmac(hmac(hmac(`AWS4${secretAccessKey}`, date!), region!), service!), "aws4_request");
  const expected = crypto.createHmac("sha256", key).update(stringToSign).digest("hex");
  return payloadHash === sha256(body) && crypto.timingSafeEqual(Buffer.from(expected), Buffer.from(signature!));
}

/** A good answer for each of the project's prompts. */
export function defaultAnswer({ system }: { system: string; user: string }): BedrockAnswer {
  if (system.includes("score B2B sales leads")) {
    return { kind: "text", text: JSON.stringify({ score: 77, reasons: ["Engaged in the last month", "A deal reached the proposal stage", "Complete profile"] }) };
  }
  if (system.includes("sales e-mails")) {
    return { kind: "text", text: JSON.stringify({ subject: "Next steps on your proposal", body: "Hello,\n\nThank you for your time.\n\nBest regards" }) };
  }
  return { kind: "text", text: JSON.stringify({ sentiment: -0.6, summary: "The customer is unhappy about delays. A call is needed." }) };
}

function converseOutput(text: string, requestBytes: number) {
  return {
    output: { message: { role: "assistant", content: [{ text }] } },
    stopReason: "end_turn",
    usage: { inputTokens: Math.ceil(requestBytes / 4), outputTokens: Math.ceil(text.length / 4), totalTokens: Math.ceil((requestBytes + text.length) / 4) },
    metrics: { latencyMs: 3 },
  };
}

export async function startBedrockEndpoint(credentials = BEDROCK_TEST_CREDENTIALS): Promise<BedrockEndpoint> {
  const endpoint: BedrockEndpoint = {
    url: "",
    requests: [],
    script: [],
    respond: defaultAnswer,
    env: {},
    stop: async () => undefined,
  };
  // The SDK's Bedrock Runtime client speaks HTTP/2 (as Bedrock does); without TLS here (h2c).
  const server = http2.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      const send = (status: number, payload: unknown, headers: Record<string, string> = {}) => {
        res.writeHead(status, { "content-type": "application/json", "x-amzn-requestid": crypto.randomUUID(), ...headers });
        res.end(JSON.stringify(payload));
      };
      const match = /^\/model\/([^/]+)\/converse$/.exec(new URL(req.url ?? "/", "http://localhost").pathname);
      if (req.method !== "POST" || !match) return send(404, { message: "Unknown operation" }, { "x-amzn-errortype": "UnknownOperationException" });
      const signatureValid = verifySigV4(req, body, credentials.secretAccessKey);
      let parsed: { system?: { text?: string }[]; messages?: { content?: { text?: string }[] }[] } = {};
      try {
        parsed = JSON.parse(body.toString("utf8"));
      } catch {
        // recorded below as an empty request
      }
      const record: BedrockRequest = {
        modelId: decodeURIComponent(match[1]!),
        system: (parsed.system ?? []).map((s) => s.text ?? "").join(""),
        user: (parsed.messages?.[0]?.content ?? []).map((c) => c.text ?? "").join(""),
        signatureValid,
        authorization: String(req.headers.authorization ?? ""),
        answered: "refused",
      };
      endpoint.requests.push(record);
      if (!signatureValid) {
        return send(403, { message: "The request signature we calculated does not match the signature you provided." }, { "x-amzn-errortype": "InvalidSignatureException" });
      }
      const answer = endpoint.script.shift() ?? endpoint.respond(record);
      if (answer.kind === "slow") {
        const { ms, answer: later } = answer;
        record.answered = "slow";
        const timer = setTimeout(() => {
          if (!res.destroyed) send(200, converseOutput(later.kind === "text" ? later.text : "{}", body.length));
        }, ms);
        res.on("close", () => clearTimeout(timer));
        return;
      }
      record.answered = answer.kind;
      if (answer.kind === "throttle") {
        return send(429, { message: "Too many requests, please wait before trying again." }, { "x-amzn-errortype": "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/" });
      }
      if (answer.kind === "error") return send(answer.status, { message: answer.message ?? answer.type }, { "x-amzn-errortype": answer.type });
      send(200, converseOutput(answer.text, body.length));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  endpoint.url = `http://127.0.0.1:${port}`;
  endpoint.env = {
    AI_PROVIDER: "bedrock",
    BEDROCK_ENDPOINT: endpoint.url,
    BEDROCK_REGION: credentials.region,
    BEDROCK_ACCESS_KEY_ID: credentials.accessKeyId,
    BEDROCK_SECRET_ACCESS_KEY: credentials.secretAccessKey,
    BEDROCK_MODEL_ID: "anthropic.claude-3-haiku-20240307-v1:0",
    BEDROCK_RETRY_BASE_MS: "5",
    BEDROCK_MAX_ATTEMPTS: "3",
    BEDROCK_CONCURRENCY: "1",
  };
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (session) => {
    sessions.add(session);
    session.on("close", () => sessions.delete(session));
  });
  endpoint.stop = () =>
    new Promise<void>((resolve) => {
      for (const session of sessions) session.destroy();
      server.close(() => resolve());
    });
  return endpoint;
}
