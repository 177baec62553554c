//! Job counts, workers, queues and schedules as the page's one stream
//! (lib/live: WatchDashboard) brings them: the server pushes each when it
//! changes. Nothing here polls: an idle page makes no request.
import { useEffect, useState } from "preact/hooks";
import type {
  GetQueueStatsResponse,
  WatchDashboardResponse,
  WatchQueuesResponse,
  WatchSchedulesResponse,
  WatchWorkersResponse,
} from "../gen/jobq/v1/queue_service_pb";
import { live, type LiveHub, type LiveStatus } from "./live";

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

/** What the hub needs of the page's stream (lib/live). */
export type DashboardSource = Pick<LiveHub, "onParts" | "onStatus" | "setStaleWorkers" | "restart">;

export class DashboardHub {
  state: DashboardState = {};
  private listeners = new Set<(s: DashboardState) => void>();
  private includeStale = new Map<(s: DashboardState) => void, boolean>();
  private fed = false;

  /** `source` is the page's stream (tests pass a fake one). */
  constructor(private readonly source: DashboardSource = live) {}

  /** Calls `listener` on every change while subscribed; `staleWorkers` asks for long-lost workers too. */
  subscribe(listener: (s: DashboardState) => void, staleWorkers = false): () => void {
    this.feed();
    this.listeners.add(listener);
    this.includeStale.set(listener, staleWorkers);
    this.source.setStaleWorkers(this.wantsStale());
    return () => {
      this.listeners.delete(listener);
      this.includeStale.delete(listener);
      this.source.setStaleWorkers(this.wantsStale());
    };
  }

  /** Opens the stream again at once (a retry button). */
  reopen(): void {
    this.source.restart();
  }

  private wantsStale(): boolean {
    return [...this.includeStale.values()].some(Boolean);
  }

  // Kept fed for the page's life: the server sends a part only when it
  // changes, so a view mounted later needs what came before it.
  private feed(): void {
    if (this.fed) return;
    this.fed = true;
    this.source.onParts((message) => this.set(applyUpdate(this.state, message)));
    this.source.onStatus((status: LiveStatus) => {
      if (status === "live") {
        if (this.state.error !== undefined) this.set({ ...this.state, error: undefined });
      } else if (status === "reconnecting") {
        this.set({ ...this.state, error: "Lost the connection to the server; reconnecting…" });
      } else if (status === "unavailable") {
        this.set({ ...this.state, unsupported: true, error: "This server does not stream live updates." });
      }
    });
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
