//! One WatchJobs stream for the whole page, shared by every view: views
//! subscribe to its events, and the overview charts are fed from it.
import { Code, ConnectError } from "@connectrpc/connect";
import type { JobEvent } from "../gen/jobq/v1/event_pb";
import { ActivityRecorder } from "./activity";
import { api, noteError } from "./api";
import { onLongHidden } from "./visibility";

export type LiveStatus = "connecting" | "live" | "reconnecting" | "unavailable" | "paused";

export interface LiveListener {
  /** Events, in arrival order, delivered in small batches. */
  events?(events: JobEvent[]): void;
  /**
   * The stream (re)connected or lagged: events may have been missed, so
   * what a view shows should be read again.
   */
  resync?(): void;
}

class LiveHub {
  status: LiveStatus = "connecting";
  readonly activity = new ActivityRecorder();
  private listeners = new Set<LiveListener>();
  private statusListeners = new Set<(s: LiveStatus) => void>();
  private abort?: AbortController;
  private started = false;
  private pending: JobEvent[] = [];
  private flushTimer?: ReturnType<typeof setTimeout>;
  private retryDelay = 1000;
  private paused = false;
  private retryTimer?: ReturnType<typeof setTimeout>;

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

  /** Drops the stream and opens it again at once (after a new token, say). */
  restart(): void {
    this.abort?.abort();
    this.retryDelay = 1000;
    if (this.started && !this.paused) this.connectSoon(0);
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
      const stream = api().watchJobs(
        {},
        { signal: abort.signal, timeoutMs: 0, onHeader: markConnected },
      );
      for await (const res of stream) {
        markConnected();
        if (res.lagged) {
          this.setStatus("reconnecting");
          break;
        }
        if (res.event) this.push(res.event);
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
    if (abort.signal.aborted) return;
    this.setStatus("reconnecting");
    this.connectSoon(this.retryDelay);
    this.retryDelay = Math.min(this.retryDelay * 2, 15_000);
  }

  private connectSoon(delay: number): void {
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => void this.run(), delay);
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
