import { describe, expect, it } from "vitest";
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { HistoryPointSchema } from "../src/gen/jobq/v1/queue_service_pb";
import { JobEventType } from "../src/gen/jobq/v1/event_pb";
import { JobState } from "../src/gen/jobq/v1/job_pb";
import {
  ActivityRecorder,
  addSeen,
  averageWait,
  bucketize,
  classifyEvent,
  describeLatency,
  describeThroughput,
  emptyCounters,
  HISTORY_WINDOWS,
  historyBuckets,
  HistoryPoints,
  niceMax,
  perSecond,
} from "../src/lib/activity";
import { event, job } from "./helpers";

const T0 = 1_700_000_000_000; // a multiple of 5s and of 60s

describe("event classification", () => {
  it("counts creations, starts, successes and failures", () => {
    expect(classifyEvent(event(JobEventType.CREATED, job("a")))?.kind).toBe("enqueued");
    expect(classifyEvent(event(JobEventType.STATE_CHANGED, job("a", { state: JobState.SUCCEEDED })))?.kind).toBe("succeeded");
    expect(classifyEvent(event(JobEventType.ATTEMPT_FAILED, job("a", { state: JobState.RETRYING, attempt: 2 })))).toEqual({ kind: "failed" });
    expect(classifyEvent(event(JobEventType.PROGRESS, job("a", { state: JobState.RUNNING })))).toBeUndefined();
    expect(classifyEvent(event(JobEventType.STATE_CHANGED, job("a", { state: JobState.CANCELLED })))).toBeUndefined();
  });

  it("measures the wait from run_at to the start", () => {
    const j = job("a", { state: JobState.RUNNING, runAt: timestampFromMs(T0), createdAt: timestampFromMs(T0 - 60_000) });
    const c = classifyEvent(event(JobEventType.STATE_CHANGED, j, { timeMs: T0 + 1500 }));
    expect(c).toEqual({ kind: "started", waitMs: 1500 });
  });

  it("falls back to created_at and never reports a negative wait", () => {
    const j = job("a", { state: JobState.RUNNING, createdAt: timestampFromMs(T0) });
    expect(classifyEvent(event(JobEventType.STATE_CHANGED, j, { timeMs: T0 + 200 }))?.waitMs).toBe(200);
    expect(classifyEvent(event(JobEventType.STATE_CHANGED, j, { timeMs: T0 - 200 }))?.waitMs).toBe(0);
  });

  it("counts an attempt that ended without success as a failure, or as a death when it was the last", () => {
    // ATTEMPT_FAILED carries the new state itself: no STATE_CHANGED follows.
    for (const state of [JobState.RETRYING, JobState.QUEUED]) {
      const ev = event(JobEventType.ATTEMPT_FAILED, job("a", { state, attempt: 3 }), { previousState: JobState.RUNNING });
      expect(classifyEvent(ev), JobState[state]).toEqual({ kind: "failed" });
    }
    // The last attempt of a job dead-letters it: counted as dead, as the server's history does.
    const last = event(JobEventType.ATTEMPT_FAILED, job("a", { state: JobState.DEAD, attempt: 3 }), { previousState: JobState.RUNNING });
    expect(classifyEvent(last)).toEqual({ kind: "dead" });
  });

  it("does not count an attempt stopped for a cancel as a failure", () => {
    const ev = event(JobEventType.ATTEMPT_FAILED, job("a", { state: JobState.CANCELLED, attempt: 1 }), { previousState: JobState.RUNNING });
    expect(classifyEvent(ev)).toBeUndefined();
  });
});

describe("ActivityRecorder", () => {
  it("counts each last failed attempt once, also when a retried job fails again with the same attempt number", () => {
    const r = new ActivityRecorder();
    // Attempt numbers start again after RetryJob: two failures of attempt 1.
    r.record(event(JobEventType.ATTEMPT_FAILED, job("a", { state: JobState.DEAD, attempt: 1 }), { previousState: JobState.RUNNING }), T0);
    r.record(event(JobEventType.ATTEMPT_FAILED, job("a", { state: JobState.DEAD, attempt: 1 }), { previousState: JobState.RUNNING }), T0 + 10);
    // A state change is not a second report of the same failure.
    r.record(event(JobEventType.STATE_CHANGED, job("a", { state: JobState.DEAD, attempt: 1 }), { previousState: JobState.RUNNING }), T0 + 20);
    const buckets = r.buckets(T0, 5000, 5000);
    expect(buckets).toHaveLength(1);
    expect(buckets[0]?.dead).toBe(2);
    expect(buckets[0]?.failed).toBe(0);
  });

  it("forgets seconds older than what it keeps", () => {
    const r = new ActivityRecorder(60_000);
    r.record(event(JobEventType.CREATED, job("a")), T0);
    r.record(event(JobEventType.CREATED, job("b")), T0 + 120_000);
    const all = r.buckets(T0 + 120_000, 300_000, 60_000);
    expect(all.reduce((a, b) => a + b.enqueued, 0)).toBe(1);
  });
});

describe("bucketize", () => {
  it("folds seconds into aligned buckets, oldest first, ending with now", () => {
    const seconds = new Map<number, ReturnType<typeof emptyCounters>>();
    const put = (ms: number, f: Partial<ReturnType<typeof emptyCounters>>) =>
      seconds.set(Math.floor(ms / 1000), { ...emptyCounters(), ...f });
    put(T0 - 12_000, { succeeded: 4 }); // bucket [T0-15s, T0-10s)
    put(T0 - 1_000, { succeeded: 1, waitSumMs: 300, waitCount: 3, waitMaxMs: 200 }); // [T0-5s, T0)
    put(T0 - 2_000, { failed: 2, waitSumMs: 100, waitCount: 1, waitMaxMs: 100 }); // same bucket
    put(T0 + 2_000, { enqueued: 7 }); // the current bucket [T0, T0+5s)
    put(T0 - 60_000, { succeeded: 99 }); // outside the window
    const b = bucketize(seconds, T0 + 2_500, 20_000, 5_000);
    expect(b.map((x) => x.start)).toEqual([T0 - 15_000, T0 - 10_000, T0 - 5_000, T0]);
    expect(b.map((x) => x.succeeded)).toEqual([4, 0, 1, 0]);
    expect(b.map((x) => x.failed)).toEqual([0, 0, 2, 0]);
    expect(b.map((x) => x.enqueued)).toEqual([0, 0, 0, 7]);
    expect(b[2]?.waitMaxMs).toBe(200);
    expect(averageWait(b[2]!)).toBe(100);
    expect(averageWait(b[0]!)).toBeUndefined();
  });

  it("turns counts into rates", () => {
    expect(perSecond(10, 5000)).toBe(2);
    expect(perSecond(3, 60_000)).toBeCloseTo(0.05);
  });

  it("rounds axis maxima up to 1-2-2.5-5 steps", () => {
    expect(niceMax(0)).toBe(1);
    expect(niceMax(0.3)).toBeCloseTo(0.5);
    expect(niceMax(7)).toBe(10);
    expect(niceMax(12)).toBe(20);
    expect(niceMax(230)).toBe(250);
    expect(niceMax(1000)).toBe(1000);
  });
});

describe("server history", () => {
  // Midnight UTC: a bucket boundary of every window.
  const M0 = Math.floor(T0 / 86_400_000) * 86_400_000;
  const point = (startMs: number, fields: Partial<{ succeeded: bigint; failed: bigint; dead: bigint; enqueued: bigint; queue: string; waitP50: number; waitP99: number; runP99: number }> = {}) =>
    create(HistoryPointSchema, {
      startTime: timestampFromMs(startMs),
      step: { seconds: 60n, nanos: 0 },
      queue: fields.queue ?? "",
      succeeded: fields.succeeded ?? 0n,
      failed: fields.failed ?? 0n,
      dead: fields.dead ?? 0n,
      enqueued: fields.enqueued ?? 0n,
      wait:
        fields.waitP50 !== undefined
          ? { count: 1n, p50: durationFromMs(fields.waitP50), p90: durationFromMs(fields.waitP99 ?? 0), p99: durationFromMs(fields.waitP99 ?? 0), max: durationFromMs(fields.waitP99 ?? 0) }
          : { count: 0n },
      run: fields.runP99 !== undefined ? { count: 1n, p50: durationFromMs(fields.runP99), p99: durationFromMs(fields.runP99), max: durationFromMs(fields.runP99) } : { count: 0n },
    });
  const hour = HISTORY_WINDOWS[0];

  it("puts points in aligned buckets ending with the current one", () => {
    const now = M0 + 30_000;
    const buckets = historyBuckets([point(M0, { succeeded: 3n }), point(M0 - 59 * 60_000, { dead: 1n }), point(M0 - 60 * 60_000, { dead: 5n })], now, hour.windowMs, hour.stepMs);
    expect(buckets).toHaveLength(60);
    expect(buckets[59]?.start).toBe(M0);
    expect(buckets[59]?.succeeded).toBe(3);
    expect(buckets[0]?.dead).toBe(1);
    // The point before the window is left out.
    expect(buckets.reduce((n, b) => n + b.dead, 0)).toBe(1);
  });

  it("replaces a pushed bucket instead of adding it again, and forgets what slid out", () => {
    const points = new HistoryPoints();
    points.apply([point(M0 - 60_000, { succeeded: 1n }), point(M0, { succeeded: 2n })], M0 - 3_600_000);
    points.apply([point(M0, { succeeded: 5n })], M0 - 3_600_000);
    let buckets = points.buckets(M0 + 1, hour.windowMs, hour.stepMs);
    expect(buckets[59]?.succeeded).toBe(5);
    expect(buckets[58]?.succeeded).toBe(1);
    points.apply([], M0);
    expect(points.size).toBe(1);
    buckets = points.buckets(M0 + 1, hour.windowMs, hour.stepMs);
    expect(buckets[58]?.succeeded).toBe(0);
  });

  it("keeps one series per queue apart and shows the higher percentile of a bucket", () => {
    const points = new HistoryPoints();
    points.apply([point(M0, { queue: "a", succeeded: 1n, waitP50: 100, waitP99: 200 }), point(M0, { queue: "b", succeeded: 2n, waitP50: 50, waitP99: 900 })], 0);
    const b = points.buckets(M0, hour.windowMs, hour.stepMs)[59];
    expect(b?.succeeded).toBe(3);
    expect(b?.waitP50).toBe(100);
    expect(b?.waitP99).toBe(900);
    expect(b?.runP50).toBeUndefined();
  });

  it("describes the charts in words", () => {
    const buckets = historyBuckets([point(M0, { succeeded: 4n, failed: 1n, dead: 2n, enqueued: 7n, waitP50: 1500, waitP99: 3000, runP99: 65_000 })], M0, hour.windowMs, hour.stepMs);
    const throughput = describeThroughput(buckets, hour);
    expect(throughput).toContain("last hour by minute");
    expect(throughput).toContain("4 succeeded, 1 failed and retried, 2 dead, 7 enqueued");
    expect(throughput).toContain("Busiest: 7 at");
    expect(describeLatency(buckets, hour)).toContain("wait p50 up to 1.5s, p99 up to 3.0s");
    expect(describeLatency(buckets, hour)).toContain("run p50 up to 1m 05s");
    expect(describeLatency(historyBuckets([], M0, hour.windowMs, hour.stepMs), hour)).toContain("no job started or finished");
  });
});

describe("what the browser saw, on top of the server's history", () => {
  const M0 = Math.floor(T0 / 86_400_000) * 86_400_000;
  it("adds only the seconds the server's history does not cover yet", () => {
    const hour = HISTORY_WINDOWS[0];
    const seen = new ActivityRecorder();
    seen.add({ kind: "succeeded" }, M0 + 10_000); // before the cover: the server has it
    seen.add({ kind: "succeeded" }, M0 + 30_000);
    seen.add({ kind: "dead" }, M0 + 31_000);
    const buckets = addSeen(historyBuckets([], M0 + 40_000, hour.windowMs, hour.stepMs), seen.perSecond(), M0 + 20_000, hour.stepMs);
    expect(buckets[59]?.succeeded).toBe(1);
    expect(buckets[59]?.dead).toBe(1);
    expect(buckets[59]?.failed).toBe(0);
  });
});
