//! One stream for the whole page, shared by every view: WatchDashboard with
//! job events, counts, workers, queues, schedules and (on the overview) the
//! job history. Over HTTP/1.1 each open stream holds one of the browser's
//! six connections to the server, shared by all its tabs, so a page keeps
//! one (and a log tail where one is shown). Views subscribe to its events;
//! lib/dashboard keeps the other parts.
import { Code, ConnectError } from "@connectrpc/connect";
import type { JobEvent } from "../gen/jobq/v1/event_pb";
import { JobView } from "../gen/jobq/v1/job_pb";
import type { GetJobHistoryResponse, WatchDashboardResponse } from "../gen/jobq/v1/queue_service_pb";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { GetJobHistoryRequestSchema } from "../gen/jobq/v1/queue_service_pb";
import { ActivityRecorder } from "./activity";
import { api, noteError, type JobQueueClient } from "./api";
import { onLongHidden } from "./visibility";

export type LiveStatus = "connecting" | "live" | "reconnecting" | "unavailable" | "paused";

export interface LiveListener {
  /** Events, in arrival order, delivered in small batches. */
  events?(events: JobEvent[]): void;
  /**
   * The stream (re)connected, or the server dropped events because the
   * page read too slowly (the stream goes on): what a view shows should be
   * read again.
   */
  resync?(): void;
}

/** Events the server dropped for this page, in all (views were read again after each lag). */
export interface LagNote {
  droppedEvents: bigint;
  lags: number;
  /** When the last lag was noticed (ms since the epoch). */
  lastAt: number;
}

type HistoryRequest = MessageInitShape<typeof GetJobHistoryRequestSchema>;

export class LiveHub {
  status: LiveStatus = "connecting";
  lag?: LagNote;
  readonly activity = new ActivityRecorder();
  private listeners = new Set<LiveListener>();
  private statusListeners = new Set<(s: LiveStatus) => void>();
  private lagListeners = new Set<(note: LagNote) => void>();
  private abort?: AbortController;
  private started = false;
  private pending: JobEvent[] = [];
  private flushTimer?: ReturnType<typeof setTimeout>;
  private retryDelay = 1000;
  private paused = false;
  private retryTimer?: ReturnType<typeof setTimeout>;
  private partListeners = new Set<(message: WatchDashboardResponse) => void>();
  private staleWorkers = false;
  private history?: { request: () => HistoryRequest; onPoints: (response: GetJobHistoryResponse, first: boolean) => void };

  /** `client` is the API client (tests pass a fake one). */
  constructor(private readonly client: () => Pick<JobQueueClient, "watchDashboard"> = api) {}

  /** Counts, workers, queues and schedules as the stream brings them. */
  onParts(listener: (message: WatchDashboardResponse) => void): () => void {
    this.partListeners.add(listener);
    this.start();
    return () => this.partListeners.delete(listener);
  }

  /** Whether the workers part holds long-lost workers; a change reopens the stream. */
  setStaleWorkers(stale: boolean): void {
    if (stale === this.staleWorkers) return;
    this.staleWorkers = stale;
    if (this.started) this.restart();
  }

  /**
   * Job history over the page's stream until the returned function is
   * called: the window (`first` true, again after each reconnect), then each
   * minute the server closes. `request` is asked at each connect, so a
   * window that starts "an hour ago" means an hour before that connect.
   */
  watchHistory(request: () => HistoryRequest, onPoints: (response: GetJobHistoryResponse, first: boolean) => void): () => void {
    const watch = { request, onPoints };
    this.history = watch;
    if (this.started) this.restart();
    else this.start();
    return () => {
      if (this.history !== watch) return;
      this.history = undefined;
      this.restart();
    };
  }

  subscribe(listener: LiveListener): () => void {
    this.listeners.add(listener);
    this.start();
    return () => this.listeners.delete(listener);
  }

  onStatus(listener: (s: LiveStatus) => void): () => void {
    this.statusListeners.add(listener);
    this.start();
    return () => this.statusListeners.delete(listener);
  }

  /** Called each time the server reports dropped events. */
  onLag(listener: (note: LagNote) => void): () => void {
    this.lagListeners.add(listener);
    return () => this.lagListeners.delete(listener);
  }

  /** Drops the stream and opens it again at once (after a new token, say). */
  restart(): void {
    this.abort?.abort();
    this.retryDelay = 1000;
    if (this.started && !this.paused) this.connectSoon(0);
  }

  /** Closes the stream for good (tests; a page keeps its hub open). */
  stop(): void {
    this.paused = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    this.abort?.abort();
  }

  private start(): void {
    if (this.started) return;
    this.started = true;
    // A tab left in the background lets go of its stream; views resync on return.
    onLongHidden((hidden) => {
      this.paused = hidden;
      if (hidden) {
        clearTimeout(this.retryTimer);
        this.abort?.abort();
        this.setStatus("paused");
      } else {
        this.restart();
      }
    });
    void this.run();
  }

  private setStatus(s: LiveStatus): void {
    if (this.status === s) return;
    this.status = s;
    for (const l of this.statusListeners) l(s);
  }

  private async run(): Promise<void> {
    if (this.paused) return;
    const abort = new AbortController();
    this.abort = abort;
    let connected = false;
    const markConnected = () => {
      if (connected) return;
      connected = true;
      this.retryDelay = 1000;
      this.setStatus("live");
      for (const l of this.listeners) l.resync?.();
    };
    try {
      const history = this.history;
      let firstPoints = true;
      const stream = this.client().watchDashboard(
        { jobs: { view: JobView.BASIC }, includeStaleWorkers: this.staleWorkers, history: history?.request() },
        { signal: abort.signal, timeoutMs: 0, onHeader: markConnected },
      );
      for await (const message of stream) {
        markConnected();
        const u = message.update;
        if (u.case === "jobs") {
          const res = u.value;
          if (res.lagged) {
            this.noteLag(res.droppedEvents);
            continue;
          }
          if (res.event) this.push(res.event);
        } else if (u.case === "history") {
          if (history && this.history === history) history.onPoints(u.value, firstPoints);
          firstPoints = false;
        } else {
          for (const l of this.partListeners) l(message);
        }
      }
    } catch (err) {
      if (abort.signal.aborted) return;
      noteError(err);
      const code = ConnectError.from(err).code;
      if (code === Code.Unimplemented) {
        this.setStatus("unavailable");
        this.connectSoon(60_000);
        return;
      }
    }
    // Ended (UNAVAILABLE when the server shuts down, a network error, or
    // even OK): connect again, backing off.
    if (abort.signal.aborted) return;
    this.setStatus("reconnecting");
    this.connectSoon(this.retryDelay);
    this.retryDelay = Math.min(this.retryDelay * 2, 15_000);
  }

  private connectSoon(delay: number): void {
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => void this.run(), delay);
  }

  /**
   * The server dropped events and goes on with the next ones: deliver what
   * came before the gap, then have the views read their data again.
   */
  private noteLag(dropped: bigint): void {
    clearTimeout(this.flushTimer);
    this.flush();
    const prev = this.lag;
    this.lag = { droppedEvents: (prev?.droppedEvents ?? 0n) + dropped, lags: (prev?.lags ?? 0) + 1, lastAt: Date.now() };
    for (const l of this.lagListeners) l(this.lag);
    for (const l of this.listeners) l.resync?.();
  }

  private push(ev: JobEvent): void {
    this.activity.record(ev, Date.now());
    this.pending.push(ev);
    // Batches keep a burst of thousands of events from re-rendering per event.
    this.flushTimer ??= setTimeout(() => this.flush(), 150);
  }

  private flush(): void {
    this.flushTimer = undefined;
    const batch = this.pending;
    this.pending = [];
    if (batch.length === 0) return;
    for (const l of this.listeners) l.events?.(batch);
  }
}

export const live = new LiveHub();
