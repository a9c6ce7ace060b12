// Prometheus metrics (GET /metrics).
import client from "prom-client";
import { roundTripCount, statementCount } from "../auth/request-settings.ts";
import type { Pool } from "pg";

export class Metrics {
  readonly registry = new client.Registry();
  readonly httpRequests = new client.Counter({
    name: "cairn_http_requests_total",
    help: "HTTP requests by route, method and status",
    labelNames: ["route", "method", "status"] as const,
    registers: [this.registry],
  });
  readonly httpDuration = new client.Histogram({
    name: "cairn_http_request_duration_seconds",
    help: "HTTP request latency by route, method and status",
    labelNames: ["route", "method", "status"] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5],
    registers: [this.registry],
  });
  readonly graphqlOperations = new client.Counter({
    name: "cairn_graphql_operations_total",
    help: "GraphQL operations by type (query, mutation, subscription)",
    labelNames: ["type"] as const,
    registers: [this.registry],
  });
  // Statements per request = this ÷ cairn_http_requests_total{route="/graphql"} (npm run bench uses it).
  readonly pgStatements = new client.Counter({
    name: "cairn_pg_statements_total",
    help: "SQL statements sent on the API's authenticator connections (begin, settings, queries, commit)",
    registers: [this.registry],
    collect() {
      this.reset();
      this.inc(statementCount());
    },
  });
  // Round trips per request: begin travels with the settings statement (src/auth/request-settings.ts).
  readonly pgRoundTrips = new client.Counter({
    name: "cairn_pg_round_trips_total",
    help: "Messages sent on the API's authenticator connections (begin and the settings statement share one)",
    registers: [this.registry],
    collect() {
      this.reset();
      this.inc(roundTripCount());
    },
  });
  readonly graphqlErrors = new client.Counter({
    name: "cairn_graphql_errors_total",
    help: "GraphQL errors by extensions.code",
    labelNames: ["code"] as const,
    registers: [this.registry],
  });
  readonly jobsFailed = new client.Counter({
    name: "cairn_jobs_failed_total",
    help: "Background job attempts that failed, by task",
    labelNames: ["task"] as const,
    registers: [this.registry],
  });
  readonly jobsCompleted = new client.Counter({
    name: "cairn_jobs_completed_total",
    help: "Background jobs completed, by task",
    labelNames: ["task"] as const,
    registers: [this.registry],
  });
  readonly jobsStarted = new client.Counter({
    name: "cairn_jobs_started_total",
    help: "Background job attempts started, by task",
    labelNames: ["task"] as const,
    registers: [this.registry],
  });
  readonly jobsPermanentlyFailed = new client.Counter({
    name: "cairn_jobs_permanently_failed_total",
    help: "Background jobs whose last attempt failed (they will not run again), by task",
    labelNames: ["task"] as const,
    registers: [this.registry],
  });
  readonly jobDuration = new client.Histogram({
    name: "cairn_job_duration_seconds",
    help: "Background job attempt duration by task and outcome (succeeded, failed)",
    labelNames: ["task", "outcome"] as const,
    buckets: [0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900],
    registers: [this.registry],
  });

  constructor(pools: Record<string, Pool | undefined>, queueDepth: () => Promise<number | null>) {
    client.collectDefaultMetrics({ register: this.registry, prefix: "cairn_process_" });
    const poolGauge = (name: string, help: string, read: (p: Pool) => number) =>
      new client.Gauge({
        name,
        help,
        labelNames: ["pool"] as const,
        registers: [this.registry],
        collect() {
          for (const [label, pool] of Object.entries(pools)) if (pool) this.set({ pool: label }, read(pool));
        },
      });
    poolGauge("cairn_pg_pool_connections", "Open connections in the pg pool", (p) => p.totalCount);
    poolGauge("cairn_pg_pool_idle", "Idle connections in the pg pool", (p) => p.idleCount);
    poolGauge("cairn_pg_pool_waiting", "Clients waiting for a pg connection", (p) => p.waitingCount);
    new client.Gauge({
      name: "cairn_job_queue_depth",
      help: "Jobs waiting to run (runnable now or scheduled)",
      registers: [this.registry],
      async collect() {
        const depth = await queueDepth().catch(() => null);
        if (depth !== null) this.set(depth);
      },
    });
  }

  countError(code: string): void {
    this.graphqlErrors.inc({ code });
  }
}
