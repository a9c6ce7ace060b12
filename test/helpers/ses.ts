// A local HTTP endpoint that speaks Amazon SES's query API (POST / with Action=SendRawEmail, XML
// answers), for tests of the real @aws-sdk/client-ses client. It verifies each request's AWS
// Signature Version 4 with the test credentials (service "ses"; a wrong signature is refused as SES
// refuses it), records what it was sent (the raw MIME message decoded), and answers from a script:
// a MessageId, throttling, or a permanent rejection.
import crypto from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";

export const SES_TEST_CREDENTIALS = { accessKeyId: "AKIDCAIRNSESTEST0001", secretAccessKey: "cairn-ses-test-secret/for+sigv4", region: "eu-central-1" };

export type SesAnswer = { kind: "ok" } | { kind: "throttle" } | { kind: "reject"; message: string };

export interface SesRequest {
  action: string;
  raw: string;
  params: Record<string, string>;
  authorization: string;
  signatureValid: boolean;
  answered: SesAnswer["kind"] | "refused";
  messageId?: string;
}

export interface SesEndpoint {
  url: string;
  requests: SesRequest[];
  script: SesAnswer[];
  env: Record<string, string>;
  stop: () => Promise<void>;
}

const sha256 = (data: string | Buffer) => crypto.createHash("sha256").update(data).digest("hex");
const hmac = (key: crypto.BinaryLike, data: string) => crypto.createHmac("sha256", key).update(data).digest();
const rfc3986 = (s: string) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);

/** Recomputes the SigV4 signature of an HTTP/1.1 request for `service` and compares it with the one sent. */
export function verifySigV4Http1(req: http.IncomingMessage, body: Buffer, secretAccessKey: string, service: string, region: string): boolean {
  const auth = String(req.headers.authorization ?? "");
  const m = /^AWS4-HMAC-SHA256 Credential=([^/]+)\/(\d{8})\/([^/]+)\/([^/]+)\/aws4_request, ?SignedHeaders=([^,]+), ?Signature=([0-9a-f]{64})$/.exec(auth);
  if (!m) return false;
  const [, keyId, date, reqRegion, reqService, signedHeaders, signature] = m as unknown as string[];
  if (keyId !== SES_TEST_CREDENTIALS.accessKeyId || reqService !== service || reqRegion !== region) return false;
  const amzDate = String(req.headers["x-amz-date"] ?? "");
  if (!amzDate.startsWith(date!)) return false;
  const url = new URL(req.url ?? "/", "http://localhost");
  const canonicalUri = url.pathname.split("/").map((seg) => rfc3986(seg)).join("/");
  const canonicalQuery = [...url.searchParams.entries()].map(([k, v]) => `${rfc3986(k)}=${rfc3986(v)}`).sort().join("&");
  const names = signedHeaders!.split(";");
  const canonicalHeaders = names.map((n) => `${n}:${String(req.headers[n] ?? "").trim().replace(/\s+/g, " ")}\n`).join("");
  const payloadHash = String(req.headers["x-amz-content-sha256"] ?? sha256(body));
  const canonicalRequest = [req.method, canonicalUri, canonicalQuery, canonicalHeaders, signedHeaders, payloadHash].join("\n");
  const scope = `${date}/${reqRegion}/${reqService}/aws4_request`;
  const stringToSign = ["AWS4-HMAC-SHA256", amzDate, scope, sha256(canonicalRequest)].join("\n");
  const key = hmac(hmac(hmac(hmac(`AWS4${secretAccessKey}`, date!), reqRegion!), reqService!), "aws4_request");
  const expected = crypto.createHmac("sha256", key).update(stringToSign).digest("hex");
  return payloadHash === sha256(body) && crypto.timingSafeEqual(Buffer.from(expected), Buffer.from(signature!));
}

const XMLNS = "http://ses.amazonaws.com/doc/2010-12-01/";

function errorXml(type: string, code: string, message: string): string {
  return `<ErrorResponse xmlns="${XMLNS}"><Error><Type>${type}</Type><Code>${code}</Code><Message>${message}</Message></Error><RequestId>${crypto.randomUUID()}</RequestId></ErrorResponse>`;
}

/** Decodes the base64 parts of a MIME message (enough to read what the tests sent). */
export function decodeMime(raw: string): { headers: Record<string, string>; text: string; html: string } {
  const [head, ...rest] = raw.split("\r\n\r\n");
  const headers: Record<string, string> = {};
  for (const line of head!.split("\r\n")) {
    const i = line.indexOf(":");
    if (i > 0) headers[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim();
  }
  const body = rest.join("\r\n\r\n");
  if (!/multipart/i.test(headers["content-type"] ?? "")) {
    return { headers, text: Buffer.from(body.replace(/\s+/g, ""), "base64").toString("utf8"), html: "" };
  }
  const parts = body.split(/--cairn-[0-9a-f]+/).map((p) => p.trim());
  let text = "";
  let html = "";
  for (const p of parts) {
    const [ph, ...pb] = p.split("\r\n\r\n");
    if (!ph || !pb.length) continue;
    const decoded = Buffer.from(pb.join("").replace(/\s+/g, ""), "base64").toString("utf8");
    if (/text\/html/i.test(ph)) html = decoded;
    else if (/text\/plain/i.test(ph)) text = decoded;
  }
  return { headers, text, html };
}

export async function startSesEndpoint(credentials = SES_TEST_CREDENTIALS): Promise<SesEndpoint> {
  const endpoint: SesEndpoint = { url: "", requests: [], script: [], env: {}, stop: async () => undefined };
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      const params = Object.fromEntries(new URLSearchParams(body.toString("utf8")));
      const send = (status: number, xml: string) => {
        res.writeHead(status, { "content-type": "text/xml", "x-amzn-requestid": crypto.randomUUID() });
        res.end(xml);
      };
      const signatureValid = verifySigV4Http1(req, body, credentials.secretAccessKey, "ses", credentials.region);
      const record: SesRequest = {
        action: params.Action ?? "",
        raw: params["RawMessage.Data"] ? Buffer.from(params["RawMessage.Data"], "base64").toString("utf8") : "",
        params,
        authorization: String(req.headers.authorization ?? ""),
        signatureValid,
        answered: "refused",
      };
      endpoint.requests.push(record);
      if (!signatureValid) {
        return send(403, errorXml("Sender", "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided."));
      }
      if (req.method !== "POST" || params.Action !== "SendRawEmail" || params.Version !== "2010-12-01") {
        return send(400, errorXml("Sender", "InvalidAction", `Unsupported action ${params.Action}`));
      }
      const answer = endpoint.script.shift() ?? { kind: "ok" };
      record.answered = answer.kind;
      if (answer.kind === "throttle") return send(400, errorXml("Sender", "Throttling", "Maximum sending rate exceeded."));
      if (answer.kind === "reject") return send(400, errorXml("Sender", "MessageRejected", answer.message));
      record.messageId = `0100018c${crypto.randomBytes(12).toString("hex")}-${crypto.randomUUID()}-000000`;
      send(
        200,
        `<SendRawEmailResponse xmlns="${XMLNS}"><SendRawEmailResult><MessageId>${record.messageId}</MessageId></SendRawEmailResult><ResponseMetadata><RequestId>${crypto.randomUUID()}</RequestId></ResponseMetadata></SendRawEmailResponse>`,
      );
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  endpoint.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  endpoint.env = {
    EMAIL_PROVIDER: "ses",
    SES_ENDPOINT: endpoint.url,
    SES_REGION: credentials.region,
    SES_ACCESS_KEY_ID: credentials.accessKeyId,
    SES_SECRET_ACCESS_KEY: credentials.secretAccessKey,
    SES_CONFIGURATION_SET: "cairn-test",
    EMAIL_FROM: "Cairn Test <news@cairn.test>",
  };
  endpoint.stop = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return endpoint;
}
