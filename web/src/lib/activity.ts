//! Throughput and wait-time series computed in the browser from WatchJobs
//! events: per-second counters (bounded memory) folded into chart buckets.
import { JobEventType, type JobEvent } from "../gen/jobq/v1/event_pb";
import { JobState } from "../gen/jobq/v1/job_pb";
import { tsMillis } from "./format";

/** Counters of one second (or one bucket). */
export interface Counters {
  enqueued: number;
  started: number;
  succeeded: number;
  failed: number;
  /** Sum, max and count of the ready-wait of the jobs that started. */
  waitSumMs: number;
  waitMaxMs: number;
  waitCount: number;
}

export interface Bucket extends Counters {
  /** Start of the bucket, ms since the epoch. */
  start: number;
}

export function emptyCounters(): Counters {
  return { enqueued: 0, started: 0, succeeded: 0, failed: 0, waitSumMs: 0, waitMaxMs: 0, waitCount: 0 };
}

/** What one event adds to the counters; undefined when it adds nothing. */
export interface Classified {
  kind: "enqueued" | "started" | "succeeded" | "failed";
  /** For "started": how long the job was ready before it started. */
  waitMs?: number;
}

export function classifyEvent(ev: JobEvent): Classified | undefined {
  const job = ev.job;
  if (!job) return undefined;
  switch (ev.type) {
    case JobEventType.CREATED:
      return { kind: "enqueued" };
    case JobEventType.ATTEMPT_FAILED:
      // One event per attempt that ended without success, already in its
      // new state (no STATE_CHANGED follows). An attempt stopped for a
      // cancel is the client's doing, not a failure.
      return job.state === JobState.CANCELLED ? undefined : { kind: "failed" };
    case JobEventType.STATE_CHANGED:
      if (job.state === JobState.RUNNING) {
        const at = tsMillis(ev.time);
        const readySince = tsMillis(job.runAt) ?? tsMillis(job.createdAt);
        const waitMs = at !== undefined && readySince !== undefined ? Math.max(0, at - readySince) : undefined;
        return { kind: "started", waitMs };
      }
      if (job.state === JobState.SUCCEEDED) return { kind: "succeeded" };
      return undefined;
    default:
      return undefined;
  }
}

/**
 * Keeps per-second counters for the last `keepMs` and folds them into
 * buckets for the charts. Times are the browser's receipt times, so a
 * server clock that is off does not shift the charts.
 */
export class ActivityRecorder {
  private seconds = new Map<number, Counters>();

  constructor(private readonly keepMs = 60 * 60 * 1000) {}

  record(ev: JobEvent, now: number): void {
    const c = classifyEvent(ev);
    if (c) this.add(c, now);
  }

  add(c: Classified, now: number): void {
    const sec = Math.floor(now / 1000);
    let counters = this.seconds.get(sec);
    if (!counters) {
      counters = emptyCounters();
      this.seconds.set(sec, counters);
      this.prune(now);
    }
    counters[c.kind] += 1;
    if (c.kind === "started" && c.waitMs !== undefined) {
      counters.waitSumMs += c.waitMs;
      counters.waitCount += 1;
      counters.waitMaxMs = Math.max(counters.waitMaxMs, c.waitMs);
    }
  }

  private prune(now: number): void {
    const oldest = Math.floor((now - this.keepMs) / 1000);
    for (const sec of this.seconds.keys()) if (sec < oldest) this.seconds.delete(sec);
  }

  buckets(now: number, windowMs: number, bucketMs: number): Bucket[] {
    return bucketize(this.seconds, now, windowMs, bucketMs);
  }
}

/**
 * Folds per-second counters into `windowMs / bucketMs` buckets ending with
 * the one that holds `now`, oldest first. Bucket starts are aligned to
 * multiples of bucketMs so bars do not shift as time passes.
 */
export function bucketize(
  seconds: ReadonlyMap<number, Counters>,
  now: number,
  windowMs: number,
  bucketMs: number,
): Bucket[] {
  const n = Math.max(1, Math.round(windowMs / bucketMs));
  const lastStart = Math.floor(now / bucketMs) * bucketMs;
  const firstStart = lastStart - (n - 1) * bucketMs;
  const out: Bucket[] = [];
  for (let i = 0; i < n; i++) out.push({ start: firstStart + i * bucketMs, ...emptyCounters() });
  for (const [sec, c] of seconds) {
    const ms = sec * 1000;
    if (ms < firstStart || ms >= lastStart + bucketMs) continue;
    const b = out[Math.floor((ms - firstStart) / bucketMs)];
    if (!b) continue;
    b.enqueued += c.enqueued;
    b.started += c.started;
    b.succeeded += c.succeeded;
    b.failed += c.failed;
    b.waitSumMs += c.waitSumMs;
    b.waitCount += c.waitCount;
    b.waitMaxMs = Math.max(b.waitMaxMs, c.waitMaxMs);
  }
  return out;
}

/** Jobs per second of a count over one bucket. */
export function perSecond(count: number, bucketMs: number): number {
  return count / (bucketMs / 1000);
}

/** Average wait of a bucket, undefined when nothing started in it. */
export function averageWait(b: Counters): number | undefined {
  return b.waitCount > 0 ? b.waitSumMs / b.waitCount : undefined;
}

/** The chart windows offered, with their bucket widths (~60 bars each). */
export const WINDOWS = [
  { label: "5m", windowMs: 5 * 60_000, bucketMs: 5_000 },
  { label: "15m", windowMs: 15 * 60_000, bucketMs: 15_000 },
  { label: "60m", windowMs: 60 * 60_000, bucketMs: 60_000 },
] as const;

/** A "nice" upper bound for a chart's y axis: 1, 2, 5 × 10^k ≥ max. */
export function niceMax(max: number): number {
  if (!(max > 0)) return 1;
  const exp = Math.pow(10, Math.floor(Math.log10(max)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * exp >= max) return m * exp;
  return 10 * exp;
}
