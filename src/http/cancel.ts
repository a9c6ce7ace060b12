// A request whose client goes away is cancelled: the SQL it is running is cancelled in PostgreSQL
// (its transaction rolls back), and it gets no database connection afterwards.
//
// Each request gets a random key, set as its transaction's `application_name` (a SET LOCAL, so a
// pooled connection loses it when the transaction ends). When the response closes before it was
// sent, one query on a dedicated authenticator connection cancels the backends carrying that key
// (pg_cancel_backend: allowed for sessions of the same role), and the pool refuses connections to the
// request from then on (planning may still be running in JavaScript when the client leaves).
import crypto from "node:crypto";
import { AsyncLocalStorage } from "node:async_hooks";
import pg from "pg";
import type { NextFunction, Request, Response } from "express";
import type { Logger } from "../logger.ts";

interface CancelState {
  key: string;
  cancelled: boolean;
}

const cancelScope = new AsyncLocalStorage<CancelState>();

export class ClientGoneError extends Error {
  override name = "ClientGoneError";
}

/** The application_name that marks the current request's transaction (undefined outside one). */
export function cancellationTag(): string | undefined {
  const state = cancelScope.getStore();
  return state ? `cairn-req:${state.key}` : undefined;
}

export function makeCancellation(pool: pg.Pool, logger: Logger) {
  let canceller: pg.Client | undefined;
  let connecting: Promise<pg.Client> | undefined;
  const cancellerClient = () =>
    (connecting ??= (async () => {
      const client = new pg.Client(pool.options as pg.ClientConfig);
      client.on("error", () => {
        canceller = undefined;
        connecting = undefined;
      });
      await client.connect();
      canceller = client;
      return client;
    })().catch((e) => {
      connecting = undefined;
      throw e;
    }));

  // Connections are refused to a request whose client has gone (both of pg's calling styles).
  const connect = pool.connect.bind(pool) as (cb?: (err: Error | undefined, client?: pg.PoolClient, done?: () => void) => void) => unknown;
  (pool as { connect: unknown }).connect = function (cb?: (err: Error | undefined, client?: pg.PoolClient, done?: () => void) => void) {
    if (cancelScope.getStore()?.cancelled) {
      const err = new ClientGoneError("The client went away; the request was cancelled.");
      if (cb) return void cb(err);
      return Promise.reject(err);
    }
    return connect(cb);
  };

  async function cancel(state: CancelState): Promise<number> {
    const client = await cancellerOrNull();
    if (!client) return 0;
    const { rows } = await client.query<{ n: number }>(
      "select count(*) filter (where pg_cancel_backend(pid))::int as n from pg_stat_activity where application_name = $1 and pid <> pg_backend_pid()",
      [`cairn-req:${state.key}`],
    );
    return rows[0]?.n ?? 0;
  }
  async function cancellerOrNull(): Promise<pg.Client | undefined> {
    try {
      return canceller ?? (await cancellerClient());
    } catch (err) {
      logger.warn({ err }, "could not open the connection that cancels abandoned requests");
      return undefined;
    }
  }

  return {
    middleware(req: Request, res: Response, next: NextFunction) {
      const state: CancelState = { key: crypto.randomBytes(12).toString("hex"), cancelled: false };
      res.on("close", () => {
        if (res.writableFinished) return;
        state.cancelled = true;
        void cancel(state).then(
          (n) => req.log.warn({ cancelledQueries: n }, "client went away; request cancelled"),
          (err) => req.log.warn({ err }, "client went away; cancelling its queries failed"),
        );
      });
      cancelScope.run(state, next);
    },
    async close() {
      await canceller?.end().catch(() => undefined);
    },
  };
}
