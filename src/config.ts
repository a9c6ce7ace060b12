// Configuration: every environment variable the service reads is parsed here, and only here.
// docs/configuration.md lists them; test/foundation/docs.test.ts keeps the two in step.
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { GraphqlLimits } from "./graphql/gate.ts";

export const ROOT_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

export type WorkerMode = "inline" | "off";

export interface Config {
  nodeEnv: string;
  isProduction: boolean;
  host: string;
  port: number;
  /** Owner connection (migrations, worker). Unset → embedded PostgreSQL. */
  databaseUrl: string | undefined;
  /** Authenticator connection used by the API for every request. */
  authDatabaseUrl: string | undefined;
  /** Superuser connection, only for `npm run db:init`. */
  rootDatabaseUrl: string | undefined;
  embedded: {
    dataDir: string;
    port: number;
    databaseName: string;
  };
  graphiql: boolean;
  /** Query plans in responses (extensions.explain); development only — they echo arguments. */
  graphqlExplain: boolean;
  corsAllowedOrigins: string[];
  bodyLimit: string;
  maxRequestBytes: number;
  worker: WorkerMode;
  workerConcurrency: number;
  migrateOnStart: boolean;
  logLevel: string;
  shutdownTimeoutMs: number;
  pgPoolMax: number;
  pageSizeMax: number;
  jwt: {
    secret: string | undefined;
    issuer: string;
    audience: string;
    accessTokenTtlSeconds: number;
    refreshTokenTtlSeconds: number;
  };
  externalJwt: {
    secret: string | undefined;
    issuer: string | undefined;
    audience: string | undefined;
    defaultOrganization: string | undefined;
    roleMap: Record<string, string>;
  };
  auth: {
    requireEmailConfirmation: boolean;
    bcryptCost: number;
    passwordMinLength: number;
    loginMaxFailures: number;
    loginLockSeconds: number;
    ipMaxFailures: number;
    trustProxy: boolean;
  };
  demo: boolean;
  /** Front-end base URL used in email links. */
  publicAppUrl: string;
  jobs: {
    /** crm.job_runs older than this are removed by maintenance:prune. */
    runsRetentionDays: number;
  };
  // Processes and developer conveniences (platform).
  /** HTTP processes behind one port (node:cluster); 1 = this process serves HTTP itself. */
  apiProcesses: number;
  /** GraphiQL opens signed in as demo-admin (development with the demo organization only). */
  graphiqlDemoSignIn: boolean;
  /** PostGraphile's named prepared statements; off behind PgBouncer < 1.21 in transaction mode. */
  pgPreparedStatements: boolean;
  realtime: RealtimeConfig;
  /** Abuse limits: cost budget, caches, trusted documents, rate and time limits (docs/security.md). */
  hardening: HardeningConfig;
  /** Lead scoring, drafts and insights: the local model or Amazon Bedrock (docs/ai.md). */
  ai: AiConfig;
  /** RFM settings a new organization starts with (docs/rfm.md); written to the database at start-up. */
  rfmDefaults: RfmDefaults;
  /** E-mail and SMS providers, the message queue and its links (docs/campaigns.md). */
  messaging: MessagingConfig;
}

/** The crm.rfm_settings of a new organization (snake_case: stored as given in crm_private.rfm_defaults). */
export interface RfmDefaults {
  mode: "thresholds" | "quintiles";
  recency_breaks: number[];
  frequency_breaks: number[];
  monetary_breaks: number[];
  recency_weight: number;
  frequency_weight: number;
  monetary_weight: number;
  lookback_days: number;
  counted_statuses: string[];
  scores_retention_days: number;
}

/** Messaging (docs/campaigns.md). */
export interface MessagingConfig {
  /** Base URL of this API as recipients reach it: unsubscribe, open and click links. */
  publicApiUrl: string;
  /** Sender address of every e-mail (account e-mails too). */
  emailFrom: string;
  emailProvider: "local" | "ses";
  ses: {
    region: string;
    endpoint: string | undefined;
    accessKeyId: string | undefined;
    secretAccessKey: string | undefined;
    sessionToken: string | undefined;
    configurationSet: string | undefined;
    timeoutMs: number;
  };
  smsProvider: "local" | "twilio";
  twilio: { accountSid: string | undefined; authToken: string | undefined; from: string | undefined; baseUrl: string; timeoutMs: number };
  /** Shared secret of the SES notification endpoint (SNS subscription URL ?secret=…); unset: the endpoint is off. */
  sesNotificationSecret: string | undefined;
  batchSize: number;
  concurrency: number;
  maxAttempts: number;
  retryBaseMs: number;
  leaseSeconds: number;
}

/** AI provider (docs/ai.md). */
export interface AiConfig {
  /** local: no network (the default); bedrock: Amazon Bedrock for organizations that did not opt out. */
  provider: "local" | "bedrock";
  bedrock: {
    modelId: string;
    region: string;
    /** Another endpoint than the region's (a VPC endpoint, a test server). */
    endpoint: string | undefined;
    /** Static credentials; unset → the AWS SDK's default chain (AWS_* variables, profile, instance role). */
    accessKeyId: string | undefined;
    secretAccessKey: string | undefined;
    sessionToken: string | undefined;
    /** Attempts per answer (throttling, timeouts, server errors and malformed answers are retried). */
    maxAttempts: number;
    timeoutMs: number;
    /** First backoff; doubled each retry (±20 %). */
    retryBaseMs: number;
    /** Requests in flight per job. */
    concurrency: number;
  };
}

/** Subscriptions, webhooks, CSV import/export (docs/realtime.md, docs/integrations.md). */
export interface RealtimeConfig {
  /** Websocket connections with live subscriptions per member (per server process). */
  maxConnectionsPerMember: number;
  /** Live subscriptions per websocket connection. */
  maxSubscriptionsPerConnection: number;
  /** Allow http:// webhook URLs (development only; https otherwise). */
  webhooksAllowHttp: boolean;
  /** Allow webhooks to private, loopback and link-local addresses (development and tests only). */
  webhooksAllowPrivateNetworks: boolean;
  /** Whole-request time limit of one webhook delivery. */
  webhookTimeoutMs: number;
  /** Failed attempts in a row after which an endpoint is disabled (and its admins are told). */
  webhookDisableAfterFailures: number;
  /** Largest CSV file accepted by POST /import/:entity. */
  importMaxBytes: number;
  /** Imports with more rows than this run as a background job (202); smaller ones answer when done. */
  importSyncMaxRows: number;
}

export interface HardeningConfig {
  graphqlLimits: GraphqlLimits;
  /** Schema introspection (GraphiQL needs it); off by default in production. */
  introspection: boolean;
  /** "Did you mean …" suggestions in validation errors; off by default in production. */
  fieldSuggestions: boolean;
  /** Documents whose parse and validation result is cached (LRU). */
  documentCacheSize: number;
  /** Operations whose plans Grafast caches (LRU), and plans kept per operation. */
  planCacheOperations: number;
  planCachePlansPerOperation: number;
  /** Planning is synchronous (it blocks the event loop): longer than this, and it is aborted. */
  planningTimeoutMs: number;
  /** Trusted documents: only operations registered in `directory` (by hash) are accepted. */
  trustedDocuments: { enabled: boolean; directory: string | undefined };
  rateLimit: { enabled: boolean; windowSeconds: number; perAddress: number; perPrincipal: number };
  /** statement_timeout of every API request's transaction (crm_user / crm_anonymous). */
  statementTimeoutMs: number;
  /** statement_timeout of the worker's connections (jobs). */
  jobStatementTimeoutMs: number;
}

function int(env: NodeJS.ProcessEnv, name: string, fallback: number, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(`${name} must be an integer between ${min} and ${max} (got "${raw}")`);
  }
  return value;
}

function bool(env: NodeJS.ProcessEnv, name: string, fallback: boolean): boolean {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  if (/^(1|true|yes|on)$/i.test(raw)) return true;
  if (/^(0|false|no|off)$/i.test(raw)) return false;
  throw new ConfigError(`${name} must be true or false (got "${raw}")`);
}

function list(raw: string | undefined): string[] {
  return (raw ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
}

export class ConfigError extends Error {
  override name = "ConfigError";
}

/** A start-up failure the operator fixes with a setting: `npm start` prints the message alone. */
export class StartupError extends Error {
  override name = "StartupError";
}

const DEFAULT_ROLE_MAP: Record<string, string> = {
  admin: "Administrator",
  administrator: "Administrator",
  manager: "Sales Manager",
  agent: "Sales Representative",
  sales: "Sales Representative",
  finance: "Finance",
  viewer: "Viewer",
};

function roleMap(raw: string | undefined): Record<string, string> {
  if (!raw) return DEFAULT_ROLE_MAP;
  const map: Record<string, string> = {};
  for (const pair of list(raw)) {
    const [claim, role] = pair.split("=").map((s) => s?.trim());
    if (!claim || !role) throw new ConfigError(`EXTERNAL_JWT_ROLE_MAP entries look like claim=Role Name (got "${pair}")`);
    map[claim.toLowerCase()] = role;
  }
  return map;
}

/** loadConfig for the command-line entry points: a configuration error is one line and exit code 2. */
export function loadConfigOrExit(env: NodeJS.ProcessEnv = process.env): Config {
  try {
    return loadConfig(env);
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`Configuration error: ${e.message}\n`);
      process.exit(2);
    }
    throw e;
  }
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const nodeEnv = env.NODE_ENV || "development";
  const isProduction = nodeEnv === "production";
  const worker = (env.WORKER || "inline").toLowerCase();
  if (worker !== "inline" && worker !== "off") throw new ConfigError(`WORKER must be inline or off (got "${worker}")`);
  const databaseUrl = env.DATABASE_URL || undefined;
  const authDatabaseUrl = env.AUTH_DATABASE_URL || undefined;
  if (databaseUrl && !authDatabaseUrl) {
    throw new ConfigError("AUTH_DATABASE_URL (the crm_authenticator connection) is required when DATABASE_URL is set");
  }
  if (isProduction && !databaseUrl) {
    throw new ConfigError("NODE_ENV=production needs DATABASE_URL and AUTH_DATABASE_URL; the embedded database is for development");
  }
  if (isProduction && !env.JWT_SECRET) {
    throw new ConfigError("NODE_ENV=production needs JWT_SECRET (at least 32 characters)");
  }
  if (env.JWT_SECRET && env.JWT_SECRET.length < 32) {
    throw new ConfigError("JWT_SECRET must be at least 32 characters");
  }
  const maxRequestBytes = int(env, "MAX_REQUEST_BYTES", 1_000_000, 1_000, 50_000_000);
  return {
    nodeEnv,
    isProduction,
    host: env.HOST || "127.0.0.1",
    port: int(env, "PORT", 4000, 0, 65535),
    databaseUrl,
    authDatabaseUrl,
    rootDatabaseUrl: env.ROOT_DATABASE_URL || undefined,
    embedded: {
      dataDir: path.resolve(ROOT_DIR, env.EMBEDDED_PG_DIR || ".data"),
      port: int(env, "EMBEDDED_PG_PORT", 54329, 1024, 65535),
      databaseName: env.EMBEDDED_PG_DATABASE || "cairn",
    },
    graphiql: bool(env, "GRAPHIQL", nodeEnv === "development"),
    graphqlExplain: bool(env, "GRAPHQL_EXPLAIN", false) && !isProduction,
    corsAllowedOrigins: list(env.CORS_ALLOWED_ORIGINS),
    bodyLimit: `${maxRequestBytes}b`,
    maxRequestBytes,
    worker,
    workerConcurrency: int(env, "WORKER_CONCURRENCY", 4, 1, 100),
    migrateOnStart: bool(env, "MIGRATE_ON_START", true),
    logLevel: env.LOG_LEVEL || (nodeEnv === "test" ? "warn" : "info"),
    shutdownTimeoutMs: int(env, "SHUTDOWN_TIMEOUT_MS", 10_000, 100, 600_000),
    pgPoolMax: int(env, "PG_POOL_MAX", 10, 1, 1000),
    pageSizeMax: int(env, "PAGE_SIZE_MAX", 100, 1, 10_000),
    jwt: {
      secret: env.JWT_SECRET || undefined,
      issuer: env.JWT_ISSUER || "cairn",
      audience: env.JWT_AUDIENCE || "cairn-api",
      accessTokenTtlSeconds: int(env, "ACCESS_TOKEN_TTL_SECONDS", 15 * 60, 10, 24 * 3600),
      refreshTokenTtlSeconds: int(env, "REFRESH_TOKEN_TTL_SECONDS", 7 * 24 * 3600, 60, 365 * 24 * 3600),
    },
    externalJwt: {
      secret: env.EXTERNAL_JWT_SECRET || undefined,
      issuer: env.EXTERNAL_JWT_ISSUER || undefined,
      audience: env.EXTERNAL_JWT_AUDIENCE || undefined,
      defaultOrganization: env.EXTERNAL_JWT_ORGANIZATION || undefined,
      roleMap: roleMap(env.EXTERNAL_JWT_ROLE_MAP),
    },
    auth: {
      requireEmailConfirmation: bool(env, "REQUIRE_EMAIL_CONFIRMATION", false),
      bcryptCost: int(env, "BCRYPT_COST", 10, 4, 16),
      passwordMinLength: int(env, "PASSWORD_MIN_LENGTH", 10, 8, 200),
      loginMaxFailures: int(env, "LOGIN_MAX_FAILURES", 5, 1, 1000),
      loginLockSeconds: int(env, "LOGIN_LOCK_SECONDS", 15 * 60, 1, 24 * 3600),
      ipMaxFailures: int(env, "LOGIN_IP_MAX_FAILURES", 20, 1, 100_000),
      trustProxy: bool(env, "TRUST_PROXY", false),
    },
    demo: bool(env, "DEMO_DATA", !isProduction && !databaseUrl),
    publicAppUrl: (env.PUBLIC_APP_URL || "http://localhost:3000").replace(/\/+$/, ""),
    jobs: {
      runsRetentionDays: int(env, "JOB_RUNS_RETENTION_DAYS", 90, 1, 3650),
    },
    apiProcesses: int(env, "API_PROCESSES", 1, 1, 64),
    graphiqlDemoSignIn: bool(env, "GRAPHIQL_DEMO_SIGN_IN", true),
    pgPreparedStatements: bool(env, "PG_PREPARED_STATEMENTS", true),
    realtime: realtimeConfig(env, isProduction),
    hardening: hardeningConfig(env, nodeEnv),
    ai: aiConfig(env),
    rfmDefaults: rfmDefaults(env),
    messaging: messagingConfig(env),
  };
}

/** Four strictly increasing numbers ≥ min, e.g. "30,90,180,365". */
function breaks(name: string, raw: string | undefined, fallback: number[], integer: boolean, min: number): number[] {
  if (raw === undefined || raw === "") return fallback;
  const values = list(raw).map(Number);
  const ok =
    values.length === 4 &&
    values.every((v) => Number.isFinite(v) && v >= min && (!integer || Number.isInteger(v))) &&
    values.every((v, i) => i === 0 || v > values[i - 1]!);
  if (!ok) throw new ConfigError(`${name} must be four strictly increasing ${integer ? "whole numbers" : "numbers"} of at least ${min}, comma-separated (got "${raw}")`);
  return values;
}

function rfmDefaults(env: NodeJS.ProcessEnv): RfmDefaults {
  const mode = (env.RFM_DEFAULT_MODE || "thresholds").toLowerCase();
  if (mode !== "thresholds" && mode !== "quintiles") throw new ConfigError(`RFM_DEFAULT_MODE must be thresholds or quintiles (got "${mode}")`);
  const rawWeights = env.RFM_DEFAULT_WEIGHTS;
  const weights = rawWeights ? list(rawWeights).map(Number) : [1, 1, 1];
  if (weights.length !== 3 || weights.some((w) => !Number.isFinite(w) || w < 0 || w > 100) || weights.every((w) => w === 0)) {
    throw new ConfigError(`RFM_DEFAULT_WEIGHTS must be three weights for R,F,M between 0 and 100, not all 0 (got "${rawWeights}")`);
  }
  const statuses = env.RFM_DEFAULT_COUNTED_STATUSES ? list(env.RFM_DEFAULT_COUNTED_STATUSES) : ["paid", "partially_paid"];
  if (!statuses.length || statuses.some((x) => !["pending", "partially_paid", "paid"].includes(x))) {
    throw new ConfigError(`RFM_DEFAULT_COUNTED_STATUSES must list pending, partially_paid and/or paid (got "${env.RFM_DEFAULT_COUNTED_STATUSES}")`);
  }
  return {
    mode,
    recency_breaks: breaks("RFM_DEFAULT_RECENCY_DAYS", env.RFM_DEFAULT_RECENCY_DAYS, [30, 90, 180, 365], true, 0),
    frequency_breaks: breaks("RFM_DEFAULT_FREQUENCY_ORDERS", env.RFM_DEFAULT_FREQUENCY_ORDERS, [2, 3, 5, 10], true, 1),
    monetary_breaks: breaks("RFM_DEFAULT_MONETARY", env.RFM_DEFAULT_MONETARY, [100, 250, 500, 1000], false, 0),
    recency_weight: weights[0]!,
    frequency_weight: weights[1]!,
    monetary_weight: weights[2]!,
    lookback_days: int(env, "RFM_DEFAULT_LOOKBACK_DAYS", 730, 1, 3650),
    counted_statuses: statuses,
    scores_retention_days: int(env, "RFM_SCORES_RETENTION_DAYS", 180, 1, 3650),
  };
}

function messagingConfig(env: NodeJS.ProcessEnv): MessagingConfig {
  const emailProvider = (env.EMAIL_PROVIDER || "local").toLowerCase();
  if (emailProvider !== "local" && emailProvider !== "ses") throw new ConfigError(`EMAIL_PROVIDER must be local or ses (got "${emailProvider}")`);
  const smsProvider = (env.SMS_PROVIDER || "local").toLowerCase();
  if (smsProvider !== "local" && smsProvider !== "twilio") throw new ConfigError(`SMS_PROVIDER must be local or twilio (got "${smsProvider}")`);
  const accessKeyId = env.SES_ACCESS_KEY_ID || undefined;
  const secretAccessKey = env.SES_SECRET_ACCESS_KEY || undefined;
  if (!!accessKeyId !== !!secretAccessKey) throw new ConfigError("SES_ACCESS_KEY_ID and SES_SECRET_ACCESS_KEY go together");
  const endpoint = env.SES_ENDPOINT || undefined;
  if (endpoint && !/^https?:\/\//.test(endpoint)) throw new ConfigError(`SES_ENDPOINT must be an http(s) URL (got "${endpoint}")`);
  const twilio = {
    accountSid: env.TWILIO_ACCOUNT_SID || undefined,
    authToken: env.TWILIO_AUTH_TOKEN || undefined,
    from: env.TWILIO_FROM || undefined,
    baseUrl: (env.TWILIO_BASE_URL || "https://api.twilio.com").replace(/\/+$/, ""),
    timeoutMs: int(env, "TWILIO_TIMEOUT_MS", 10_000, 100, 120_000),
  };
  if (smsProvider === "twilio" && (!twilio.accountSid || !twilio.authToken || !twilio.from)) {
    throw new ConfigError("SMS_PROVIDER=twilio needs TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_FROM");
  }
  return {
    publicApiUrl: (env.PUBLIC_API_URL || `http://localhost:${env.PORT || 3000}`).replace(/\/+$/, ""),
    emailFrom: env.EMAIL_FROM || "Cairn <no-reply@cairn.local>",
    emailProvider,
    ses: {
      region: env.SES_REGION || "us-east-1",
      endpoint,
      accessKeyId,
      secretAccessKey,
      sessionToken: env.SES_SESSION_TOKEN || undefined,
      configurationSet: env.SES_CONFIGURATION_SET || undefined,
      timeoutMs: int(env, "SES_TIMEOUT_MS", 10_000, 100, 120_000),
    },
    smsProvider,
    twilio,
    sesNotificationSecret: env.SES_NOTIFICATION_SECRET || undefined,
    batchSize: int(env, "MESSAGES_BATCH_SIZE", 500, 1, 10_000),
    concurrency: int(env, "MESSAGES_CONCURRENCY", 16, 1, 256),
    maxAttempts: int(env, "MESSAGES_MAX_ATTEMPTS", 5, 1, 50),
    retryBaseMs: int(env, "MESSAGES_RETRY_BASE_MS", 30_000, 0, 3_600_000),
    leaseSeconds: int(env, "MESSAGES_LEASE_SECONDS", 300, 1, 86_400),
  };
}

function aiConfig(env: NodeJS.ProcessEnv): AiConfig {
  const provider = (env.AI_PROVIDER || "local").toLowerCase();
  if (provider !== "local" && provider !== "bedrock") throw new ConfigError(`AI_PROVIDER must be local or bedrock (got "${provider}")`);
  const accessKeyId = env.BEDROCK_ACCESS_KEY_ID || undefined;
  const secretAccessKey = env.BEDROCK_SECRET_ACCESS_KEY || undefined;
  if (!!accessKeyId !== !!secretAccessKey) throw new ConfigError("BEDROCK_ACCESS_KEY_ID and BEDROCK_SECRET_ACCESS_KEY go together");
  const endpoint = env.BEDROCK_ENDPOINT || undefined;
  if (endpoint && !/^https?:\/\//.test(endpoint)) throw new ConfigError(`BEDROCK_ENDPOINT must be an http(s) URL (got "${endpoint}")`);
  return {
    provider,
    bedrock: {
      modelId: env.BEDROCK_MODEL_ID || "anthropic.claude-3-haiku-20240307-v1:0",
      region: env.BEDROCK_REGION || "us-east-1",
      endpoint,
      accessKeyId,
      secretAccessKey,
      sessionToken: env.BEDROCK_SESSION_TOKEN || undefined,
      maxAttempts: int(env, "BEDROCK_MAX_ATTEMPTS", 3, 1, 10),
      timeoutMs: int(env, "BEDROCK_TIMEOUT_MS", 20_000, 100, 300_000),
      retryBaseMs: int(env, "BEDROCK_RETRY_BASE_MS", 500, 0, 60_000),
      concurrency: int(env, "BEDROCK_CONCURRENCY", 4, 1, 64),
    },
  };
}

function realtimeConfig(env: NodeJS.ProcessEnv, isProduction: boolean): RealtimeConfig {
  const webhooksAllowHttp = bool(env, "WEBHOOKS_ALLOW_HTTP", false);
  const webhooksAllowPrivateNetworks = bool(env, "WEBHOOKS_ALLOW_PRIVATE_NETWORKS", false);
  if (isProduction && (webhooksAllowHttp || webhooksAllowPrivateNetworks)) {
    throw new ConfigError("WEBHOOKS_ALLOW_HTTP and WEBHOOKS_ALLOW_PRIVATE_NETWORKS are for development; NODE_ENV=production refuses them");
  }
  return {
    maxConnectionsPerMember: int(env, "SUBSCRIPTIONS_MAX_CONNECTIONS_PER_MEMBER", 5, 1, 1000),
    maxSubscriptionsPerConnection: int(env, "SUBSCRIPTIONS_MAX_PER_CONNECTION", 20, 1, 1000),
    webhooksAllowHttp,
    webhooksAllowPrivateNetworks,
    webhookTimeoutMs: int(env, "WEBHOOK_TIMEOUT_MS", 10_000, 100, 30_000),
    webhookDisableAfterFailures: int(env, "WEBHOOK_DISABLE_AFTER_FAILURES", 15, 1, 1000),
    importMaxBytes: int(env, "IMPORT_MAX_BYTES", 512 * 1024 * 1024, 1024, 4 * 1024 * 1024 * 1024),
    importSyncMaxRows: int(env, "IMPORT_SYNC_MAX_ROWS", 20_000, 0, 10_000_000),
  };
}

/** Defaults are sized so every query in the docs, the tests and GraphiQL's introspection pass. */
function hardeningConfig(env: NodeJS.ProcessEnv, nodeEnv: string): HardeningConfig {
  const production = nodeEnv === "production";
  const trustedDocuments = bool(env, "TRUSTED_DOCUMENTS", false);
  const trustedDir = env.TRUSTED_DOCUMENTS_DIR ? path.resolve(ROOT_DIR, env.TRUSTED_DOCUMENTS_DIR) : undefined;
  if (trustedDocuments && !trustedDir) throw new ConfigError("TRUSTED_DOCUMENTS=true needs TRUSTED_DOCUMENTS_DIR (a folder of <hash>.graphql files)");
  return {
    graphqlLimits: {
      maxDocumentBytes: int(env, "GRAPHQL_MAX_DOCUMENT_BYTES", 50_000, 100, 10_000_000),
      maxTokens: int(env, "GRAPHQL_MAX_TOKENS", 5_000, 10, 1_000_000),
      maxDepth: int(env, "GRAPHQL_MAX_DEPTH", 15, 1, 1_000),
      maxAliases: int(env, "GRAPHQL_MAX_ALIASES", 30, 0, 100_000),
      maxDirectives: int(env, "GRAPHQL_MAX_DIRECTIVES", 20, 0, 100_000),
      maxRootFields: int(env, "GRAPHQL_MAX_ROOT_FIELDS", 20, 1, 100_000),
      maxFields: int(env, "GRAPHQL_MAX_FIELDS", 1_000, 1, 10_000_000),
      maxListItems: int(env, "GRAPHQL_MAX_LIST_ITEMS", 20_000, 1, 1_000_000_000),
    },
    introspection: bool(env, "GRAPHQL_INTROSPECTION", !production),
    fieldSuggestions: bool(env, "GRAPHQL_FIELD_SUGGESTIONS", !production),
    documentCacheSize: int(env, "GRAPHQL_DOCUMENT_CACHE_SIZE", 200, 2, 100_000),
    planCacheOperations: int(env, "GRAPHQL_PLAN_CACHE_SIZE", 100, 2, 100_000),
    planCachePlansPerOperation: int(env, "GRAPHQL_PLANS_PER_OPERATION", 10, 1, 1_000),
    planningTimeoutMs: int(env, "GRAPHQL_PLANNING_TIMEOUT_MS", 2_000, 10, 600_000),
    trustedDocuments: { enabled: trustedDocuments, directory: trustedDir },
    rateLimit: {
      // Off under NODE_ENV=test so the suites are never throttled; the limiter's own tests turn it on.
      enabled: bool(env, "RATE_LIMIT", nodeEnv !== "test"),
      windowSeconds: int(env, "RATE_LIMIT_WINDOW_SECONDS", 60, 1, 86_400),
      perAddress: int(env, "RATE_LIMIT_PER_ADDRESS", 1_200, 1, 10_000_000),
      perPrincipal: int(env, "RATE_LIMIT_PER_PRINCIPAL", 600, 1, 10_000_000),
    },
    statementTimeoutMs: int(env, "STATEMENT_TIMEOUT_MS", 15_000, 0, 3_600_000),
    jobStatementTimeoutMs: int(env, "JOB_STATEMENT_TIMEOUT_MS", 600_000, 0, 86_400_000),
  };
}
