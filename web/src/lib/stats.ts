//! One GetQueueStats poller for the whole page. Counting a million jobs is
//! not free on the server, so every view shares one request at a time: the
//! next starts a few seconds after the last one finished, or sooner (but not
//! more than once per MIN_GAP_MS) when live events say counts moved.
import { useEffect, useState } from "preact/hooks";
import type { GetQueueStatsResponse } from "../gen/jobq/v1/queue_service_pb";
import { api, errorMessage, noteError } from "./api";
import { live } from "./live";

const REFRESH_MS = 5000;
const MIN_GAP_MS = 1000;

export interface StatsState {
  data?: GetQueueStatsResponse;
  error?: string;
}

class StatsHub {
  state: StatsState = {};
  private listeners = new Set<(s: StatsState) => void>();
  private inFlight = false;
  private timer?: ReturnType<typeof setTimeout>;
  private lastStart = 0;
  private unwatch?: () => void;

  subscribe(listener: (s: StatsState) => void): () => void {
    this.listeners.add(listener);
    if (this.listeners.size === 1) {
      this.unwatch = live.subscribe({ events: () => this.poke(), resync: () => this.poke() });
      this.poke();
    }
    return () => {
      this.listeners.delete(listener);
      if (this.listeners.size === 0) {
        this.unwatch?.();
        clearTimeout(this.timer);
        this.timer = undefined;
      }
    };
  }

  /** Counts may have changed: load soon, respecting the minimum gap. */
  poke(): void {
    if (this.inFlight || this.listeners.size === 0) return;
    const wait = Math.max(0, this.lastStart + MIN_GAP_MS - Date.now());
    this.schedule(wait);
  }

  private schedule(ms: number): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.load(), ms);
  }

  private async load(): Promise<void> {
    this.timer = undefined;
    if (this.inFlight || this.listeners.size === 0) return;
    this.inFlight = true;
    this.lastStart = Date.now();
    try {
      const data = await api().getQueueStats({});
      this.set({ data });
    } catch (err) {
      noteError(err);
      this.set({ data: this.state.data, error: errorMessage(err) });
    } finally {
      this.inFlight = false;
      if (this.listeners.size > 0) this.schedule(REFRESH_MS);
    }
  }

  private set(s: StatsState): void {
    this.state = s;
    for (const l of this.listeners) l(s);
  }
}

const hub = new StatsHub();

/** The shared queue stats, kept fresh while the component is mounted. */
export function useQueueStats(): StatsState & { reload: () => void } {
  const [state, setState] = useState<StatsState>(hub.state);
  useEffect(() => hub.subscribe(setState), []);
  return { ...state, reload: () => hub.poke() };
}
