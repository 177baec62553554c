import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type CallOptions } from "@connectrpc/connect";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { QueueStatsSchema } from "../src/gen/jobq/v1/queue_service_pb";
import {
  GetJobHistoryResponseSchema,
  GetQueueStatsResponseSchema,
  WatchDashboardResponseSchema,
  WatchWorkersResponseSchema,
  type WatchDashboardResponse,
} from "../src/gen/jobq/v1/queue_service_pb";
import { DashboardHub, type DashboardState } from "../src/lib/dashboard";
import { LiveHub, type LiveStatus } from "../src/lib/live";
import { agedStats } from "../src/lib/stats";

const statsMessage = (queue: string) =>
  create(WatchDashboardResponseSchema, {
    update: { case: "stats", value: create(GetQueueStatsResponseSchema, { queues: [create(QueueStatsSchema, { queue })] }) },
  });
const historyMessage = () => create(WatchDashboardResponseSchema, { update: { case: "history", value: create(GetJobHistoryResponseSchema, {}) } });
const workersMessage = () => create(WatchDashboardResponseSchema, { update: { case: "workers", value: create(WatchWorkersResponseSchema, {}) } });

/** The page's stream as the hub sees it, driven by the test. */
function fakeSource() {
  const parts = new Set<(m: WatchDashboardResponse) => void>();
  const statuses = new Set<(s: LiveStatus) => void>();
  const stale: boolean[] = [];
  let restarts = 0;
  const source = {
    onParts(l: (m: WatchDashboardResponse) => void) {
      parts.add(l);
      return () => parts.delete(l);
    },
    onStatus(l: (s: LiveStatus) => void) {
      statuses.add(l);
      return () => statuses.delete(l);
    },
    setStaleWorkers(s: boolean) {
      if (stale[stale.length - 1] !== s) stale.push(s);
    },
    restart() {
      restarts += 1;
    },
  };
  return {
    source,
    stale,
    restarts: () => restarts,
    send: (m: WatchDashboardResponse) => parts.forEach((l) => l(m)),
    status: (s: LiveStatus) => statuses.forEach((l) => l(s)),
  };
}

describe("DashboardHub", () => {
  it("keeps each part as it arrives, for listeners that come later too", () => {
    const f = fakeSource();
    const hub = new DashboardHub(f.source);
    const seen: DashboardState[] = [];
    const off = hub.subscribe((s) => seen.push(s));
    f.send(statsMessage("media"));
    f.send(workersMessage());
    expect(seen).toHaveLength(2);
    expect(hub.state.stats?.queues[0]?.queue).toBe("media");
    expect(hub.state.statsReceivedAt).toBeGreaterThan(0);
    off();
    // Nobody listens, the parts still land: a view mounted next shows them at once.
    f.send(statsMessage("thumbnails"));
    expect(hub.state.stats?.queues[0]?.queue).toBe("thumbnails");
  });

  it("says the connection is lost while the stream reconnects, keeping what it showed", () => {
    const f = fakeSource();
    const hub = new DashboardHub(f.source);
    hub.subscribe(() => undefined);
    f.send(statsMessage("a"));
    f.status("reconnecting");
    expect(hub.state.error).toContain("reconnecting");
    expect(hub.state.stats?.queues[0]?.queue).toBe("a");
    f.status("live");
    expect(hub.state.error).toBeUndefined();
    hub.reopen();
    expect(f.restarts()).toBe(1);
  });

  it("asks for long-lost workers while any listener wants them", () => {
    const f = fakeSource();
    const hub = new DashboardHub(f.source);
    hub.subscribe(() => undefined);
    const off = hub.subscribe(() => undefined, true);
    off();
    expect(f.stale).toEqual([false, true, false]);
  });
});

describe("LiveHub over WatchDashboard", () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it("sends parts to the dashboard, history to its watcher, and reopens the stream when the history asked changes", async () => {
    const requests: unknown[] = [];
    const script: WatchDashboardResponse[][] = [[], [statsMessage("media"), historyMessage()], []];
    const client = () => ({
      watchDashboard(req: unknown, opts?: CallOptions) {
        requests.push(req);
        const messages = script.shift() ?? [];
        return (async function* () {
          for (const m of messages) yield m;
          await new Promise<void>((resolve) => opts?.signal?.addEventListener("abort", () => resolve()));
          throw new ConnectError("aborted", Code.Canceled);
        })();
      },
    });
    const hub = new LiveHub(client);
    const parts: WatchDashboardResponse[] = [];
    hub.onParts((m) => parts.push(m));
    await vi.advanceTimersByTimeAsync(10);
    const firsts: boolean[] = [];
    const stop = hub.watchHistory(() => ({ step: { seconds: 60n, nanos: 0 } }), (_points, first) => firsts.push(first));
    await vi.advanceTimersByTimeAsync(10);
    expect(parts.map((m) => m.update.case)).toEqual(["stats"]);
    expect(firsts).toEqual([true]);
    stop();
    await vi.advanceTimersByTimeAsync(10);
    expect(requests).toHaveLength(3);
    expect((requests[1] as { history?: unknown }).history).toBeDefined();
    expect((requests[2] as { history?: unknown }).history).toBeUndefined();
    hub.stop();
  });
});

describe("agedStats", () => {
  it("grows a waiting queue's oldest ready age by the time since the stats arrived, and leaves idle queues alone", () => {
    const stats = create(GetQueueStatsResponseSchema, {
      queues: [
        create(QueueStatsSchema, { queue: "busy", oldestReadyAge: { seconds: 5n, nanos: 0 } }),
        create(QueueStatsSchema, { queue: "idle", oldestReadyAge: { seconds: 0n, nanos: 0 } }),
      ],
    });
    const aged = agedStats(stats, 2500);
    expect(aged.queues[0]?.oldestReadyAge?.seconds).toBe(7n);
    expect(aged.queues[0]?.oldestReadyAge?.nanos).toBe(500_000_000);
    expect(aged.queues[1]?.oldestReadyAge?.seconds).toBe(0n);
    expect(agedStats(stats, 0)).toBe(stats);
  });
});
