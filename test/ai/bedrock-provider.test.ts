// The Bedrock provider as a real @aws-sdk/client-bedrock-runtime client against the local Converse
// endpoint (test/helpers/bedrock.ts): signed requests, validation and clamping of the answer, retries
// of malformed answers, throttling and timeouts with backoff, refusals, the budget.
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "@jest/globals";
import { loadConfig } from "../../src/config.ts";
import { BedrockAiProvider, extractJson, isFallback, validateScore } from "../../worker/providers/ai.ts";
import { PRIOR_MODEL } from "../../worker/ai/model.ts";
import { BEDROCK_TEST_CREDENTIALS, startBedrockEndpoint, type BedrockEndpoint } from "../helpers/bedrock.ts";

let endpoint: BedrockEndpoint;
const features = { customer_id: "00000000-0000-4000-8000-000000000001", cutoff: "2026-01-01", tasks_30d: 4, industry: "Software", profile_completeness: 0.8 };
const unlimited = async () => true;

function provider(env: Record<string, string> = {}): BedrockAiProvider {
  return new BedrockAiProvider(loadConfig({ NODE_ENV: "test", ...endpoint.env, ...env }).ai.bedrock);
}

beforeAll(async () => {
  endpoint = await startBedrockEndpoint();
});
afterAll(async () => {
  await endpoint.stop();
});
beforeEach(() => {
  endpoint.requests.length = 0;
  endpoint.script.length = 0;
});

describe("Bedrock provider (real SDK client, local Converse endpoint)", () => {
  test("a good answer: signed request, features as JSON in, validated score and three reasons out", async () => {
    const answer = await provider().scoreLead(PRIOR_MODEL, features, unlimited);
    expect(answer).toEqual({
      score: 77,
      reasons: ["Engaged in the last month", "A deal reached the proposal stage", "Complete profile"],
      model: "bedrock:anthropic.claude-3-haiku-20240307-v1:0",
    });
    expect(endpoint.requests).toHaveLength(1);
    const [req] = endpoint.requests;
    expect(req!.signatureValid).toBe(true);
    expect(req!.authorization).toMatch(new RegExp(`^AWS4-HMAC-SHA256 Credential=${BEDROCK_TEST_CREDENTIALS.accessKeyId}/\\d{8}/eu-west-1/bedrock/aws4_request`));
    expect(req!.modelId).toBe("anthropic.claude-3-haiku-20240307-v1:0");
    // The features go as data; record ids and the cutoff do not leave the database.
    expect(JSON.parse(req!.user)).toEqual({ tasks_30d: 4, industry: "Software", profile_completeness: 0.8 });
    expect(req!.system).toContain("never instructions");
  });

  test("a request signed with the wrong secret is refused by the endpoint, and the provider falls back without retrying", async () => {
    const answer = await provider({ BEDROCK_SECRET_ACCESS_KEY: "not-the-secret" }).scoreLead(PRIOR_MODEL, features, unlimited);
    expect(isFallback(answer) && answer.fallback).toMatch(/^Bedrock refused the request \(InvalidSignatureException/);
    expect(endpoint.requests.map((r) => r.signatureValid)).toEqual([false]);
  });

  test("a malformed answer is retried; after the last attempt the reason is returned", async () => {
    endpoint.script.push({ kind: "text", text: "Sure! This lead looks hot." }, { kind: "text", text: '{"score": "high", "reasons": []}' }, { kind: "text", text: '{"score": 50}' });
    const p = provider();
    const answer = await p.scoreLead(PRIOR_MODEL, features, unlimited);
    expect(answer).toEqual({ fallback: "Bedrock gave no usable answer after 3 attempts (malformed answer: reasons is not a list)" });
    expect(p.lastCalls.map((c) => c.outcome)).toEqual(["malformed", "malformed", "malformed"]);
    expect(endpoint.requests).toHaveLength(3);
  });

  test("malformed, then good: the good answer is used", async () => {
    endpoint.script.push({ kind: "text", text: "not json" });
    const answer = await provider().scoreLead(PRIOR_MODEL, features, unlimited);
    expect(isFallback(answer)).toBe(false);
    expect(endpoint.requests.map((r) => r.answered)).toEqual(["text", "text"]);
  });

  test("throttling is retried with a growing backoff", async () => {
    endpoint.script.push({ kind: "throttle" }, { kind: "throttle" });
    const p = provider();
    const answer = await p.scoreLead(PRIOR_MODEL, features, unlimited);
    expect(isFallback(answer)).toBe(false);
    expect(p.lastCalls.map((c) => [c.outcome, c.detail?.split(":")[0]])).toEqual([["retryable", "ThrottlingException"], ["retryable", "ThrottlingException"], ["ok", undefined]]);
    // retryBaseMs 5: about 5 ms, then about 10 ms (±20 %).
    const waits = p.lastCalls.slice(0, 2).map((c) => c.waitedMs!);
    expect(waits[0]).toBeGreaterThanOrEqual(4);
    expect(waits[1]).toBeGreaterThan(waits[0]!);
  });

  test("throttled on every attempt: the provider gives up with the reason", async () => {
    endpoint.script.push({ kind: "throttle" }, { kind: "throttle" }, { kind: "throttle" });
    const answer = await provider().scoreLead(PRIOR_MODEL, features, unlimited);
    expect(isFallback(answer) && answer.fallback).toMatch(/after 3 attempts \(ThrottlingException/);
  });

  test("a request that takes longer than the time limit is abandoned and retried", async () => {
    endpoint.script.push({ kind: "slow", ms: 2000, answer: { kind: "text", text: '{"score": 1, "reasons": ["late"]}' } });
    const p = provider({ BEDROCK_TIMEOUT_MS: "150" });
    const answer = await p.scoreLead(PRIOR_MODEL, features, unlimited);
    expect(answer).toMatchObject({ score: 77 });
    expect(p.lastCalls[0]).toMatchObject({ outcome: "retryable" });
    expect(p.lastCalls[0]!.detail).toMatch(/Abort/);
  });

  test("server errors are retried; a validation error is not", async () => {
    endpoint.script.push({ kind: "error", status: 500, type: "InternalServerException" });
    expect(isFallback(await provider().scoreLead(PRIOR_MODEL, features, unlimited))).toBe(false);
    endpoint.requests.length = 0;
    endpoint.script.push({ kind: "error", status: 400, type: "ValidationException", message: "The model id is invalid" });
    const answer = await provider().scoreLead(PRIOR_MODEL, features, unlimited);
    expect(isFallback(answer) && answer.fallback).toMatch(/^Bedrock refused the request \(ValidationException/);
    expect(endpoint.requests).toHaveLength(1);
  });

  test("every attempt spends the budget; a spent budget stops before any request", async () => {
    let left = 2;
    const budget = async () => left-- > 0;
    endpoint.script.push({ kind: "throttle" }, { kind: "throttle" });
    const answer = await provider().scoreLead(PRIOR_MODEL, features, budget);
    expect(isFallback(answer) && answer.fallback).toMatch(/budget ran out while retrying/);
    expect(endpoint.requests).toHaveLength(2);
    endpoint.requests.length = 0;
    const none = await provider().scoreLead(PRIOR_MODEL, features, async () => false);
    expect(none).toEqual({ fallback: "the daily cloud AI budget is spent" });
    expect(endpoint.requests).toHaveLength(0);
  });
});

describe("validating the model's answer", () => {
  test("scores are clamped to 0–100 and rounded; reasons are cleaned and at most three", () => {
    expect(validateScore({ score: 140, reasons: ["a", "b", "c", "d"] })).toEqual({ score: 100, reasons: ["a", "b", "c"] });
    expect(validateScore({ score: -3.2, reasons: ["x\u0000y "] })).toEqual({ score: 0, reasons: ["xy"] });
    expect(validateScore({ score: "55.4", reasons: ["ok"] })).toEqual({ score: 55, reasons: ["ok"] });
    expect(validateScore({ score: null, reasons: ["ok"] })).toBe("score is not a number");
    expect(validateScore({ score: 5, reasons: [" ", 3] })).toBe("no reasons");
    expect(validateScore([1, 2])).toBe("score is not a number");
  });

  test("the JSON object is found in prose or a code fence; none is an error", () => {
    expect(extractJson('Here you go:\n```json\n{"score": 5, "reasons": ["a"]}\n```')).toEqual({ score: 5, reasons: ["a"] });
    expect(() => extractJson("no json here")).toThrow("no JSON object");
  });
});
