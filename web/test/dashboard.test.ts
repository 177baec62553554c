import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type CallOptions } from "@connectrpc/connect";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { QueueStatsSchema } from "../src/gen/jobq/v1/queue_service_pb";
import {
  GetQueueStatsResponseSchema,
  WatchDashboardResponseSchema,
  WatchWorkersResponseSchema,
  type WatchDashboardResponse,
} from "../src/gen/jobq/v1/queue_service_pb";
import { DashboardHub, type DashboardState } from "../src/lib/dashboard";
import type { LiveStatus } from "../src/lib/live";
import { agedStats } from "../src/lib/stats";

const statsMessage = (queue: string) =>
  create(WatchDashboardResponseSchema, {
    update: { case: "stats", value: create(GetQueueStatsResponseSchema, { queues: [create(QueueStatsSchema, { queue })] }) },
  });
const workersMessage = () => create(WatchDashboardResponseSchema, { update: { case: "workers", value: create(WatchWorkersResponseSchema, {}) } });

/** A client whose calls each send `messages` and then end as `end` says (or stay open). */
function scripted(calls: { messages: WatchDashboardResponse[]; end: "open" | "unavailable" }[]) {
  const requests: { includeStaleWorkers?: boolean }[] = [];
  const aborted: boolean[] = [];
  const client = () => ({
    watchDashboard(req: { includeStaleWorkers?: boolean }, opts?: CallOptions) {
      requests.push(req);
      const call = calls.shift() ?? { messages: [], end: "open" as const };
      const index = aborted.push(false) - 1;
      return (async function* () {
        for (const m of call.messages) yield m;
        if (call.end === "unavailable") throw new ConnectError("shutting down", Code.Unavailable);
        await new Promise<void>((resolve) => opts?.signal?.addEventListener("abort", () => resolve()));
        aborted[index] = true;
        throw new ConnectError("aborted", Code.Canceled);
      })();
    },
  });
  return { client, requests, aborted };
}

describe("DashboardHub", () => {
  let statusListener: ((s: LiveStatus) => void) | undefined;
  const liveStatus = (cb: (s: LiveStatus) => void) => {
    statusListener = cb;
    return () => (statusListener = undefined);
  };
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it("opens one stream for all listeners, applies each part, and closes it with the last listener", async () => {
    const { client, requests, aborted } = scripted([{ messages: [statsMessage("media"), workersMessage()], end: "open" }]);
    const hub = new DashboardHub(client, liveStatus);
    const seen: DashboardState[] = [];
    const off1 = hub.subscribe((s) => seen.push(s));
    const off2 = hub.subscribe(() => undefined);
    await vi.advanceTimersByTimeAsync(10);
    expect(requests).toHaveLength(1);
    expect(hub.state.stats?.queues[0]?.queue).toBe("media");
    expect(hub.state.workers).toBeDefined();
    expect(seen.length).toBeGreaterThanOrEqual(2);
    off1();
    off2();
    await vi.advanceTimersByTimeAsync(10);
    expect(aborted[0]).toBe(true);
  });

  it("reconnects after the server went away, backing off, and at once when the live stream is back", async () => {
    const { client, requests } = scripted([
      { messages: [statsMessage("a")], end: "unavailable" },
      { messages: [], end: "unavailable" },
      { messages: [statsMessage("b")], end: "open" },
    ]);
    const hub = new DashboardHub(client, liveStatus);
    hub.subscribe(() => undefined);
    await vi.advanceTimersByTimeAsync(10);
    expect(requests).toHaveLength(1);
    expect(hub.state.error).toContain("shutting down");
    // What was shown stays while reconnecting.
    expect(hub.state.stats?.queues[0]?.queue).toBe("a");
    await vi.advanceTimersByTimeAsync(1000);
    expect(requests).toHaveLength(2);
    // Next backoff is 2 s; the live stream coming back skips it.
    statusListener?.("reconnecting");
    statusListener?.("live");
    await vi.advanceTimersByTimeAsync(10);
    expect(requests).toHaveLength(3);
    expect(hub.state.stats?.queues[0]?.queue).toBe("b");
    expect(hub.state.error).toBeUndefined();
  });

  it("asks for long-lost workers while any listener wants them", async () => {
    const { client, requests } = scripted([]);
    const hub = new DashboardHub(client, liveStatus);
    hub.subscribe(() => undefined);
    await vi.advanceTimersByTimeAsync(10);
    const off = hub.subscribe(() => undefined, true);
    await vi.advanceTimersByTimeAsync(10);
    off();
    await vi.advanceTimersByTimeAsync(10);
    expect(requests.map((r) => r.includeStaleWorkers)).toEqual([false, true, false]);
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
