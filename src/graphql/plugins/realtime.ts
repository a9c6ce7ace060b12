// GraphQL subscriptions over PostgreSQL LISTEN/NOTIFY: notificationAdded, dealChanged(pipelineId),
// taskChanged, customerChanged.
//
// - Topics come from the subscriber's verified claims (organization, user), never from arguments.
// - Every event is re-read under the subscriber's row-level security BEFORE it is sent: an event for a
//   row the subscriber may not read is dropped, so they learn nothing about it, not even that it
//   changed. (Notify payloads carry ids and owner ids only: migrations/current/410-*.sql.)
// - The guard (RealtimeGuardPlugin) ends a subscription when its token expires or its session ends
//   (logout, revocation, deactivation), and limits connections per member and subscriptions per
//   connection.
import jwt from "jsonwebtoken";
import { GraphQLError, type ExecutionResult } from "postgraphile/graphql";
import { constant, context, get, lambda, listen, SafeError, type GrafastSubscriber } from "postgraphile/grafast";
import { jsonParse } from "postgraphile/@dataplan/json";
import type { WithPgClient } from "postgraphile/@dataplan/pg";
import { extendSchema, gql } from "postgraphile/utils";

export interface RealtimePluginOptions {
  maxConnectionsPerMember: number;
  maxSubscriptionsPerConnection: number;
  /** Passed to SQL as cairn.webhooks.* so endpoint checks follow the server's configuration. */
  webhooksAllowHttp: boolean;
  webhooksAllowPrivateNetworks: boolean;
  onError?: (err: unknown, message: string) => void;
}

export const DEFAULT_REALTIME_OPTIONS: RealtimePluginOptions = {
  maxConnectionsPerMember: 5,
  maxSubscriptionsPerConnection: 20,
  webhooksAllowHttp: false,
  webhooksAllowPrivateNetworks: false,
};

type Settings = Record<string, string | undefined>;
type Resource = "customers" | "deals" | "tasks";

interface ChangeEvent {
  op: "CREATED" | "UPDATED" | "DELETED" | "BULK";
  id?: string;
  owner?: string;
  was?: string;
  creator?: string;
  pipeline?: string;
  owners?: string[];
  pipelines?: string[] | null;
  unowned?: boolean;
}

function claim(settings: Settings | null | undefined, name: "sub" | "org" | "sid"): string | undefined {
  const v = settings?.[`jwt.claims.${name}`];
  return v ? v : undefined;
}

function requireClaims(settings: Settings | null | undefined): { user: string; org: string } {
  const user = claim(settings, "sub");
  const org = claim(settings, "org");
  if (!user || !org) throw new SafeError("Sign in to an organization to subscribe.", { code: "UNAUTHENTICATED" });
  return { user, org };
}

/**
 * Wraps an event stream: each raw NOTIFY payload goes through `transform` (which reads under the
 * subscriber's RLS) and is passed on only when it returns a value. return() ends the source at once,
 * even while it waits for the next event.
 */
function filteredStream(source: AsyncIterator<string>, transform: (raw: string) => Promise<string | null>): AsyncIterableIterator<string> {
  let done = false;
  const finish = async () => {
    done = true;
    await source.return?.().catch(() => undefined);
  };
  const it: AsyncIterableIterator<string> = {
    [Symbol.asyncIterator]: () => it,
    async next() {
      while (!done) {
        const r = await source.next();
        if (r.done) break;
        const out = await transform(r.value);
        if (done) break;
        if (out !== null) return { done: false, value: out };
      }
      done = true;
      return { done: true, value: undefined };
    },
    async return() {
      await finish();
      return { done: true, value: undefined };
    },
    async throw(e) {
      await finish();
      throw e;
    },
  };
  return it;
}

interface VisibilityRow {
  visible: boolean;
  owners_visible: boolean;
}

/** What may the subscriber see? The row now (RLS), and the owners it had (the policies' scope rule). */
const VISIBILITY_SQL: Record<Resource, string> = {
  customers: `select exists (select 1 from crm.customers where id = $1::uuid) as visible,
                     (crm.has_permission('customers:read_all') or $2::uuid[] && crm.visible_owner_ids('customers')) as owners_visible`,
  deals: `select exists (select 1 from crm.deals where id = $1::uuid) as visible,
                 (crm.has_permission('deals:read_all') or $2::uuid[] && crm.visible_owner_ids('deals')) as owners_visible`,
  tasks: `select exists (select 1 from crm.tasks where id = $1::uuid) as visible,
                 (crm.has_permission('tasks:read_all') or $2::uuid[] && crm.visible_owner_ids('tasks')
                  or crm.current_user_id() = any ($3::uuid[])) as owners_visible`,
};

/** The event as this subscriber may see it, or null. */
async function visibleChange(
  resource: Resource,
  withPgClient: WithPgClient,
  settings: Settings,
  e: ChangeEvent,
  pipelineId: string | null,
): Promise<ChangeEvent | null> {
  if (pipelineId) {
    if (e.op === "BULK" ? e.pipelines && !e.pipelines.includes(pipelineId) : e.pipeline !== pipelineId) return null;
  }
  const owners = e.op === "BULK" ? (e.owners ?? []) : [e.was ?? e.owner].filter((x): x is string => !!x);
  const creators = e.op === "BULK" ? (e.owners ?? []) : [e.creator].filter((x): x is string => !!x);
  const { rows } = await withPgClient(settings, (client) =>
    client.query<VisibilityRow>({
      text: VISIBILITY_SQL[resource],
      values: [e.op === "BULK" ? null : (e.id ?? null), owners, ...(resource === "tasks" ? [creators] : [])],
    }),
  );
  const v = rows[0];
  if (!v) return null;
  switch (e.op) {
    case "CREATED":
      return v.visible ? { op: "CREATED", id: e.id } : null;
    case "UPDATED":
      // A row that left the subscriber's view (reassigned, say) is gone for them.
      if (v.visible) return { op: "UPDATED", id: e.id };
      return e.was && v.owners_visible ? { op: "DELETED", id: e.id } : null;
    case "DELETED":
      return v.owners_visible ? { op: "DELETED", id: e.id } : null;
    case "BULK":
      if (e.unowned) {
        const { rows: all } = await withPgClient(settings, (client) =>
          client.query<{ ok: boolean }>({ text: "select crm.has_permission($1) as ok", values: [`${resource}:read_all`] }),
        );
        return all[0]?.ok ? { op: "BULK" } : null;
      }
      return v.owners_visible ? { op: "BULK" } : null;
    default:
      return null;
  }
}

interface SubscriberDeps {
  pgSubscriber: GrafastSubscriber;
  withPgClient: WithPgClient;
  pgSettings: Settings;
}

function changeSubscriber(resource: Resource, deps: SubscriberDeps, pipelineId: string | null, onError?: RealtimePluginOptions["onError"]) {
  return {
    subscribe(topic: string) {
      const source = deps.pgSubscriber.subscribe(topic) as AsyncIterator<string>;
      return filteredStream(source, async (raw) => {
        try {
          const e = JSON.parse(raw) as ChangeEvent;
          const out = await visibleChange(resource, deps.withPgClient, deps.pgSettings, e, pipelineId);
          return out ? JSON.stringify(out) : null;
        } catch (err) {
          onError?.(err, `could not check a ${resource} change for a subscriber`);
          return null;
        }
      });
    },
  } as unknown as GrafastSubscriber;
}

function notificationSubscriber(deps: SubscriberDeps, onError?: RealtimePluginOptions["onError"]) {
  return {
    subscribe(topic: string) {
      const source = deps.pgSubscriber.subscribe(topic) as AsyncIterator<string>;
      return filteredStream(source, async (raw) => {
        try {
          const { id } = JSON.parse(raw) as { id: string };
          const { rows } = await deps.withPgClient(deps.pgSettings, (client) =>
            client.query<{ visible: boolean; unread: number }>({
              // Only the recipient, and only in the organization of the subscriber's token (RLS).
              text: "select exists (select 1 from crm.notifications where id = $1::uuid) as visible, crm.unread_notification_count() as unread",
              values: [id],
            }),
          );
          return rows[0]?.visible ? JSON.stringify({ id, unread: rows[0].unread }) : null;
        } catch (err) {
          onError?.(err, "could not check a notification for a subscriber");
          return null;
        }
      });
    },
  } as unknown as GrafastSubscriber;
}

export function makeRealtimeSubscriptionsPlugin(opts: RealtimePluginOptions): GraphileConfig.Plugin {
  return extendSchema((build) => {
    const res = build.input.pgRegistry.pgResources;
    const { customers, deals, tasks, notifications } = res as Record<string, any>;
    if (!customers || !deals || !tasks || !notifications) throw new Error("RealtimePlugin: missing resources");
    const $deps = () =>
      lambda(
        [context().get("pgSubscriber"), context().get("withPgClient"), context().get("pgSettings")],
        ([pgSubscriber, withPgClient, pgSettings]) => ({ pgSubscriber, withPgClient, pgSettings }) as SubscriberDeps,
        true,
      );
    const changes = (resource: Resource, $pipelineId?: any) =>
      listen(
        lambda([$deps(), $pipelineId ?? constant(null)], ([deps, pipelineId]) => {
          requireClaims(deps.pgSettings);
          return changeSubscriber(resource, deps, (pipelineId as string | null) ?? null, opts.onError);
        }),
        lambda(context().get("pgSettings"), (s) => `cairn:${resource}:${requireClaims(s as Settings).org}`),
        jsonParse,
      );
    const change = (resource: any, idField: string) => ({
      event: ($e: any) => get($e, "op"),
      [idField]: ($e: any) => get($e, "id"),
    });
    return {
      typeDefs: gql`
        """
        What happened to a record: created, updated, deleted (or moved out of your view), or BULK —
        many rows changed in one statement (an import, say): refetch what you show.
        """
        enum RecordEvent {
          CREATED
          UPDATED
          DELETED
          BULK
        }

        extend type Subscription {
          """
          Your new notifications in this organization (with your unread count).
          """
          notificationAdded: NotificationAddedPayload
          """
          Deals you can see that change (optionally only in one pipeline). Each event is read under
          your access rules before it is sent: changes to deals you cannot see are never announced.
          """
          dealChanged(pipelineId: UUID): DealChangedPayload
          """
          Tasks you can see that change (assigned to you or your teams, created by you, or all with tasks:read_all).
          """
          taskChanged: TaskChangedPayload
          """
          Customers you can see that change.
          """
          customerChanged: CustomerChangedPayload
        }

        type NotificationAddedPayload {
          notification: Notification
          unreadCount: Int!
        }
        type DealChangedPayload {
          event: RecordEvent!
          dealId: UUID
          """
          The deal as you see it now (null when deleted or out of your view).
          """
          deal: Deal
        }
        type TaskChangedPayload {
          event: RecordEvent!
          taskId: UUID
          task: Task
        }
        type CustomerChangedPayload {
          event: RecordEvent!
          customerId: UUID
          customer: Customer
        }
      `,
      objects: {
        Subscription: {
          plans: {
            notificationAdded: {
              subscribePlan() {
                return listen(
                  lambda($deps(), (deps) => {
                    requireClaims(deps.pgSettings);
                    return notificationSubscriber(deps, opts.onError);
                  }),
                  lambda(context().get("pgSettings"), (s) => `cairn:notifications:${requireClaims(s as Settings).user}`),
                  jsonParse,
                );
              },
              plan: ($e: any) => $e,
            },
            dealChanged: { subscribePlan: (_$root: any, args: any) => changes("deals", args.$pipelineId), plan: ($e: any) => $e },
            taskChanged: { subscribePlan: () => changes("tasks"), plan: ($e: any) => $e },
            customerChanged: { subscribePlan: () => changes("customers"), plan: ($e: any) => $e },
          },
        },
        NotificationAddedPayload: {
          plans: {
            notification: ($e: any) => notifications.get({ id: get($e, "id") }),
            unreadCount: ($e: any) => get($e, "unread"),
          },
        },
        DealChangedPayload: { plans: { ...change(deals, "dealId"), deal: ($e: any) => deals.get({ id: get($e, "id") }) } },
        TaskChangedPayload: { plans: { ...change(tasks, "taskId"), task: ($e: any) => tasks.get({ id: get($e, "id") }) } },
        CustomerChangedPayload: {
          plans: { ...change(customers, "customerId"), customer: ($e: any) => customers.get({ id: get($e, "id") }) },
        },
      },
    };
  }, "CairnRealtimeSubscriptionsPlugin");
}

// ---------------------------------------------------------------------------------------------------
// The guard: token expiry, session end, connection and subscription limits.

function failure(message: string, code: string): ExecutionResult {
  return { errors: [new GraphQLError(message, { extensions: { code } })] };
}

/** Ends `source` when `stop` resolves (after sending its result, an error), or when the client leaves. */
function guardedStream(
  source: AsyncGenerator<ExecutionResult> | AsyncIterator<ExecutionResult>,
  stop: Promise<ExecutionResult>,
  cleanup: () => void,
): AsyncGenerator<ExecutionResult> {
  let done = false;
  let final: ExecutionResult | null = null;
  const finish = async () => {
    if (done) return;
    done = true;
    cleanup();
    await source.return?.(undefined as never)?.catch?.(() => undefined);
  };
  const stopped = stop.then((result) => ({ stopped: result }));
  const it: AsyncGenerator<ExecutionResult> = {
    [Symbol.asyncIterator]: () => it,
    async next() {
      if (final) {
        final = null;
        return { done: true, value: undefined };
      }
      if (done) return { done: true, value: undefined };
      const r = await Promise.race([source.next().then((item) => ({ item })), stopped]);
      if ("stopped" in r) {
        final = r.stopped;
        await finish();
        return { done: false, value: r.stopped };
      }
      if (r.item.done) await finish();
      return r.item as IteratorResult<ExecutionResult>;
    },
    async return() {
      await finish();
      return { done: true, value: undefined };
    },
    async throw(e) {
      await finish();
      throw e;
    },
    [Symbol.asyncDispose]: async () => {
      await finish();
    },
  } as AsyncGenerator<ExecutionResult>;
  return it;
}

function isAsyncIterable(x: unknown): x is AsyncGenerator<ExecutionResult> {
  return !!x && typeof (x as AsyncIterable<unknown>)[Symbol.asyncIterator] === "function";
}

export function makeRealtimeGuardPlugin(opts: RealtimePluginOptions): GraphileConfig.Plugin {
  // Live subscriptions per websocket, and websockets (with live subscriptions) per member.
  const perSocket = new Map<object, number>();
  const socketsByMember = new Map<string, Set<object>>();
  return {
    name: "CairnRealtimeGuardPlugin",
    version: "1.0.0",
    grafast: {
      middleware: {
        async prepareArgs(next) {
          const args = await next();
          const settings = (args.contextValue as { pgSettings?: Settings }).pgSettings;
          if (settings) {
            (args.contextValue as { pgSettings?: Settings }).pgSettings = {
              ...settings,
              "cairn.webhooks.allow_http": String(opts.webhooksAllowHttp),
              "cairn.webhooks.allow_private_networks": String(opts.webhooksAllowPrivateNetworks),
            };
          }
          return args;
        },
        async subscribe(next, event) {
          const ctx = event.args.contextValue as { pgSettings?: Settings; pgSubscriber?: GrafastSubscriber };
          const user = claim(ctx.pgSettings, "sub");
          if (!user || !claim(ctx.pgSettings, "org")) return failure("Sign in to an organization to subscribe.", "UNAUTHENTICATED");
          const ws = (event.args.requestContext as { ws?: { socket?: object; normalizedConnectionParams?: Record<string, unknown> } } | undefined)?.ws;
          const socket = ws?.socket ?? {};
          const members = socketsByMember.get(user) ?? new Set<object>();
          if (!members.has(socket) && members.size >= opts.maxConnectionsPerMember) {
            return failure(`At most ${opts.maxConnectionsPerMember} realtime connections per member.`, "RATE_LIMITED");
          }
          if ((perSocket.get(socket) ?? 0) >= opts.maxSubscriptionsPerConnection) {
            return failure(`At most ${opts.maxSubscriptionsPerConnection} subscriptions per connection.`, "RATE_LIMITED");
          }
          const result = await next();
          if (!isAsyncIterable(result)) return result;

          members.add(socket);
          socketsByMember.set(user, members);
          perSocket.set(socket, (perSocket.get(socket) ?? 0) + 1);
          const timers: NodeJS.Timeout[] = [];
          let sessionEvents: AsyncIterator<unknown> | undefined;
          let resolveStop!: (r: ExecutionResult) => void;
          const stop = new Promise<ExecutionResult>((resolve) => (resolveStop = resolve));

          // The token's expiry ends the subscription (connection parameters carry the token).
          const auth = ws?.normalizedConnectionParams?.authorization;
          const token = typeof auth === "string" ? auth.replace(/^Bearer\s+/i, "") : undefined;
          const exp = token ? (jwt.decode(token) as { exp?: number } | null)?.exp : undefined;
          if (typeof exp === "number") {
            const ms = exp * 1000 - Date.now();
            // setTimeout holds 32-bit delays; longer tokens are checked again when that fires.
            const arm = (delay: number) =>
              timers.push(
                setTimeout(() => {
                  const left = exp * 1000 - Date.now();
                  if (left > 1000) arm(Math.min(left, 2 ** 31 - 1));
                  else resolveStop(failure("The access token expired; subscribe again with a fresh one.", "UNAUTHENTICATED"));
                }, Math.max(0, delay)),
              );
            arm(Math.min(ms, 2 ** 31 - 1));
          }
          // The session's end (logout, revocation, deactivation) ends it at once.
          const sid = claim(ctx.pgSettings, "sid");
          if (sid && ctx.pgSubscriber) {
            try {
              sessionEvents = (await ctx.pgSubscriber.subscribe(`cairn:session:${sid}`)) as AsyncIterator<unknown>;
              void sessionEvents.next().then(
                (r) => {
                  if (!r.done) resolveStop(failure("The session has ended; sign in again.", "UNAUTHENTICATED"));
                },
                () => undefined,
              );
            } catch (err) {
              opts.onError?.(err, "could not watch a session for a subscription");
            }
          }
          return guardedStream(result, stop, () => {
            for (const t of timers) clearTimeout(t);
            void sessionEvents?.return?.();
            const n = (perSocket.get(socket) ?? 1) - 1;
            if (n > 0) perSocket.set(socket, n);
            else {
              perSocket.delete(socket);
              members.delete(socket);
              if (members.size === 0) socketsByMember.delete(user);
            }
          });
        },
      },
    },
  };
}

export function makeRealtimePlugins(opts: RealtimePluginOptions = DEFAULT_REALTIME_OPTIONS): GraphileConfig.Plugin[] {
  return [makeRealtimeSubscriptionsPlugin(opts), makeRealtimeGuardPlugin(opts)];
}
