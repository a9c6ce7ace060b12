// A real graphql-ws client over a real websocket (the `ws` package), and a subscription recorder
// that tests can wait on.
import { createClient, type Client } from "graphql-ws";
import WebSocket from "ws";

export interface Received {
  data?: Record<string, any> | null;
  errors?: { message: string; extensions?: Record<string, unknown> }[];
}

export interface Recorder {
  events: Received[];
  ended: boolean;
  error: unknown;
  /** The next event not yet taken (fails after `ms`). */
  next: (ms?: number) => Promise<Received>;
  /** Resolves when the server ends the subscription (complete or error). */
  end: (ms?: number) => Promise<void>;
  /** Events arriving within `ms` (none expected, typically). */
  quiet: (ms: number) => Promise<Received[]>;
  drain: () => void;
  stop: () => void;
}

export function wsClient(httpUrl: string, token?: string): Client {
  return createClient({
    url: `${httpUrl.replace(/^http/, "ws")}/graphql`,
    webSocketImpl: WebSocket,
    connectionParams: token ? { authorization: `Bearer ${token}` } : {},
    retryAttempts: 0,
    lazy: false,
    onNonLazyError: () => undefined,
  });
}

export function record(client: Client, query: string, variables: Record<string, unknown> = {}): Recorder {
  let taken = 0;
  let wake: (() => void) | null = null;
  const signal = () => {
    const w = wake;
    wake = null;
    w?.();
  };
  const rec: Recorder = {
    events: [],
    ended: false,
    error: undefined,
    async next(ms = 15_000) {
      const deadline = Date.now() + ms;
      while (rec.events.length <= taken) {
        if (rec.ended) throw new Error(`subscription ended (${String(rec.error ?? "complete")}) while waiting for an event`);
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`no event within ${ms} ms`);
        await new Promise<void>((resolve) => {
          wake = resolve;
          setTimeout(resolve, Math.min(left, 250));
        });
      }
      return rec.events[taken++]!;
    },
    async end(ms = 15_000) {
      const deadline = Date.now() + ms;
      while (!rec.ended) {
        if (Date.now() > deadline) throw new Error(`subscription still open after ${ms} ms`);
        await new Promise<void>((resolve) => {
          wake = resolve;
          setTimeout(resolve, 100);
        });
      }
    },
    async quiet(ms) {
      const before = rec.events.length;
      await new Promise((r) => setTimeout(r, ms));
      return rec.events.slice(before);
    },
    drain() {
      taken = rec.events.length;
    },
    stop: () => unsubscribe(),
  };
  const unsubscribe = client.subscribe(
    { query, variables },
    {
      next: (value) => {
        rec.events.push(value as Received);
        signal();
      },
      error: (err) => {
        rec.error = err;
        rec.ended = true;
        signal();
      },
      complete: () => {
        rec.ended = true;
        signal();
      },
    },
  );
  return rec;
}

/**
 * LISTEN starts asynchronously after subscribing: poke (cause an event the subscriber will see)
 * until one arrives, then forget the warm-up events.
 */
export async function untilLive(rec: Recorder, poke: () => Promise<unknown>): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    await poke();
    try {
      await rec.next(500);
      await new Promise((r) => setTimeout(r, 200));
      rec.drain();
      return;
    } catch (e) {
      if (rec.ended) throw e;
    }
  }
  throw new Error("the subscription never became live");
}
