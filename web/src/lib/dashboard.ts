//! One WatchDashboard stream for the whole page: job counts, workers, queues
//! and schedules, pushed by the server when they change. Nothing here polls:
//! an idle page makes no request. Over HTTP/1.1 every open stream holds one
//! of the browser's six connections to the server, so the page keeps one
//! stream for all four rather than one each.
import { Code, ConnectError } from "@connectrpc/connect";
import { useEffect, useState } from "preact/hooks";
import type {
  GetQueueStatsResponse,
  WatchDashboardResponse,
  WatchQueuesResponse,
  WatchSchedulesResponse,
  WatchWorkersResponse,
} from "../gen/jobq/v1/queue_service_pb";
import { api, errorMessage, noteError, type JobQueueClient } from "./api";
import { live, type LiveStatus } from "./live";
import { onLongHidden } from "./visibility";

export interface DashboardState {
  stats?: GetQueueStatsResponse;
  /** When the stats arrived, by this page's clock (ms since the epoch). */
  statsReceivedAt?: number;
  workers?: WatchWorkersResponse;
  queues?: WatchQueuesResponse;
  schedules?: WatchSchedulesResponse;
  /** Why the stream is down, while it is. */
  error?: string;
  /** The server has no WatchDashboard (older than this page). */
  unsupported?: boolean;
}

export type DashboardPart = "stats" | "workers" | "queues" | "schedules";

const FIRST_RETRY_MS = 1000;
const MAX_RETRY_MS = 15_000;

/** What a message changes in the state. */
export function applyUpdate(state: DashboardState, message: WatchDashboardResponse, now = Date.now()): DashboardState {
  const u = message.update;
  switch (u.case) {
    case "stats":
      return { ...state, stats: u.value, statsReceivedAt: now, error: undefined };
    case "workers":
      return { ...state, workers: u.value, error: undefined };
    case "queues":
      return { ...state, queues: u.value, error: undefined };
    case "schedules":
      return { ...state, schedules: u.value, error: undefined };
    default:
      return state;
  }
}

export class DashboardHub {
  state: DashboardState = {};
  private listeners = new Set<(s: DashboardState) => void>();
  private includeStale = new Map<(s: DashboardState) => void, boolean>();
  private openWithStale = false;
  private abort?: AbortController;
  private retryTimer?: ReturnType<typeof setTimeout>;
  private retryMs = FIRST_RETRY_MS;
  private paused = false;
  private stopWatching?: () => void;

  /** `client` is the API client (tests pass a fake one). */
  constructor(
    private readonly client: () => Pick<JobQueueClient, "watchDashboard"> = api,
    private readonly liveStatus: (cb: (s: LiveStatus) => void) => () => void = (cb) => live.onStatus(cb),
  ) {}

  /** Keeps the stream open while anyone listens; `staleWorkers` asks for long-lost workers too. */
  subscribe(listener: (s: DashboardState) => void, staleWorkers = false): () => void {
    this.listeners.add(listener);
    this.includeStale.set(listener, staleWorkers);
    if (this.listeners.size === 1) this.start();
    else if (this.wantsStale() !== this.openWithStale) this.reopen();
    return () => {
      this.listeners.delete(listener);
      this.includeStale.delete(listener);
      if (this.listeners.size === 0) this.stop();
      else if (this.wantsStale() !== this.openWithStale) this.reopen();
    };
  }

  /** Opens the stream again at once (a retry button, a new token). */
  reopen(): void {
    if (this.listeners.size === 0 || this.paused) return;
    this.abort?.abort();
    this.retryMs = FIRST_RETRY_MS;
    this.connectSoon(0);
  }

  private wantsStale(): boolean {
    return [...this.includeStale.values()].some(Boolean);
  }

  private start(): void {
    const unhide = onLongHidden((hidden) => {
      this.paused = hidden;
      if (hidden) {
        clearTimeout(this.retryTimer);
        this.abort?.abort();
      } else {
        this.reopen();
      }
    });
    // The job event stream is back: the server is, so don't wait out a backoff.
    let lastLive: LiveStatus | undefined;
    const unlive = this.liveStatus((s) => {
      if (s === "live" && lastLive !== undefined && lastLive !== "live" && this.state.error !== undefined) this.reopen();
      lastLive = s;
    });
    this.stopWatching = () => {
      unhide();
      unlive();
    };
    this.connectSoon(0);
  }

  private stop(): void {
    this.stopWatching?.();
    this.stopWatching = undefined;
    clearTimeout(this.retryTimer);
    this.abort?.abort();
    this.abort = undefined;
  }

  private connectSoon(delay: number): void {
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => void this.run(), delay);
  }

  private async run(): Promise<void> {
    if (this.paused || this.listeners.size === 0) return;
    const abort = new AbortController();
    this.abort = abort;
    this.openWithStale = this.wantsStale();
    try {
      const stream = this.client().watchDashboard({ includeStaleWorkers: this.openWithStale }, { signal: abort.signal, timeoutMs: 0 });
      for await (const message of stream) {
        this.retryMs = FIRST_RETRY_MS;
        this.set(applyUpdate(this.state, message));
      }
      if (abort.signal.aborted) return;
      // The server ends these streams only when it shuts down (UNAVAILABLE);
      // an OK end is treated the same: connect again.
      this.set({ ...this.state, error: "The server closed the stream; reconnecting…" });
    } catch (err) {
      if (abort.signal.aborted) return;
      noteError(err);
      const e = ConnectError.from(err);
      if (e.code === Code.Unimplemented) {
        this.set({ ...this.state, unsupported: true, error: errorMessage(err) });
        return;
      }
      this.set({ ...this.state, error: errorMessage(err) });
    }
    this.connectSoon(this.retryMs);
    this.retryMs = Math.min(this.retryMs * 2, MAX_RETRY_MS);
  }

  private set(s: DashboardState): void {
    this.state = s;
    for (const l of this.listeners) l(s);
  }
}

export const dashboard = new DashboardHub();

/** The page's dashboard state while mounted. */
export function useDashboard(staleWorkers = false): DashboardState {
  const [state, setState] = useState<DashboardState>(dashboard.state);
  useEffect(() => {
    setState(dashboard.state);
    return dashboard.subscribe(setState, staleWorkers);
  }, [staleWorkers]);
  return state;
}

/** One part of the dashboard, shaped like useAsync's state for the views. */
export interface PartState<T> {
  data?: T;
  error?: string;
  loading: boolean;
  /** Opens the stream again (a retry button). */
  reload: () => void;
}

/** One part of the dashboard state, for a view. */
export function useDashboardPart<K extends DashboardPart>(part: K, staleWorkers = false): PartState<NonNullable<DashboardState[K]>> {
  const state = useDashboard(staleWorkers);
  const data = state[part] as NonNullable<DashboardState[K]> | undefined;
  // Once shown, a part stays on screen while the stream reconnects; the
  // page's connection banner says it is down.
  const error = data === undefined ? state.error : undefined;
  return { data, error, loading: data === undefined && error === undefined, reload: () => dashboard.reopen() };
}
