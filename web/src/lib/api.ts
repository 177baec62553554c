//! The grpc-web client of JobQueueService: same origin as the page, with the
//! session's bearer token on every call.
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { JobQueueService } from "../gen/jobq/v1/queue_service_pb";

const TOKEN_KEY = "jobq.token";

export function getToken(): string {
  try {
    return sessionStorage.getItem(TOKEN_KEY) ?? "";
  } catch {
    return "";
  }
}

export function setToken(token: string): void {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage can be disabled; the token then lasts until the page closes.
  }
  memoryToken = token;
}

let memoryToken = "";

/** "authorization" header value for a token, or "" for none. */
export function bearer(token: string): string {
  const t = token.trim();
  if (!t) return "";
  return /^bearer\s/i.test(t) ? t : `Bearer ${t}`;
}

type AuthListener = (reason: "unauthenticated") => void;
const authListeners = new Set<AuthListener>();

/** Called when any call fails with UNAUTHENTICATED (the token prompt listens). */
export function onAuthRequired(listener: AuthListener): () => void {
  authListeners.add(listener);
  return () => authListeners.delete(listener);
}

/** Looks at a failed call's error and raises the token prompt when it is UNAUTHENTICATED. */
export function noteError(err: unknown): void {
  if (ConnectError.from(err).code === Code.Unauthenticated) {
    for (const l of authListeners) l("unauthenticated");
  }
}

const authInterceptor: Interceptor = (next) => async (req) => {
  const value = bearer(getToken() || memoryToken);
  if (value) req.header.set("authorization", value);
  try {
    return await next(req);
  } catch (err) {
    noteError(err);
    throw err;
  }
};

export type JobQueueClient = Client<typeof JobQueueService>;

function makeClient(): JobQueueClient {
  const transport = createGrpcWebTransport({
    baseUrl: typeof window !== "undefined" ? window.location.origin : "http://127.0.0.1:50051",
    interceptors: [authInterceptor],
  });
  return createClient(JobQueueService, transport);
}

let client: JobQueueClient | undefined;

/** The shared client (created on first use). */
export function api(): JobQueueClient {
  client ??= makeClient();
  return client;
}

/** A message for people from any error a call may throw. */
export function errorMessage(err: unknown): string {
  const e = ConnectError.from(err);
  switch (e.code) {
    case Code.Unauthenticated:
      return "The server needs a valid token.";
    case Code.PermissionDenied:
      return `Your token is not allowed to do this: ${e.rawMessage}`;
    case Code.Unimplemented:
      return `The server does not support this yet (${e.rawMessage || "unimplemented"}).`;
    case Code.Unavailable:
      return `The server is unavailable: ${e.rawMessage}`;
    default:
      return e.rawMessage || String(err);
  }
}

export function errorCode(err: unknown): Code {
  return ConnectError.from(err).code;
}

export function isAbort(err: unknown): boolean {
  return ConnectError.from(err).code === Code.Canceled;
}
