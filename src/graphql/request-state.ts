// What the GraphQL layers learn about a request while serving it (the HTTP status it must get), kept
// beside the request so the response can be corrected without parsing its body again.
import { AsyncLocalStorage } from "node:async_hooks";

export interface GraphqlRequestState {
  /** The HTTP status the response must have (a refused or invalid document is 400). */
  status?: number;
}

export const graphqlRequestState = new AsyncLocalStorage<GraphqlRequestState>();

/** Record that the current request must answer with `status` (the highest recorded wins). */
export function answerWith(status: number): void {
  const state = graphqlRequestState.getStore();
  if (state && (state.status === undefined || status > state.status)) state.status = status;
}
