//! Chart series. The overview's charts come from the server's job history
//! (WatchJobHistory: per-minute counts and percentiles, kept across reloads
//! and restarts), folded into aligned buckets here. The per-second recorder
//! of WatchJobs events below is what a page saw itself.
import { JobEventType, type JobEvent } from "../gen/jobq/v1/event_pb";
import { JobState } from "../gen/jobq/v1/job_pb";
import type { HistoryPoint } from "../gen/jobq/v1/queue_service_pb";
import { durationMillis, formatClock, formatDuration, tsMillis } from "./format";

/** Counters of one second (or one bucket). */
export interface Counters {
  enqueued: number;
  started: number;
  succeeded: number;
  /** Attempts that failed and will be retried. */
  failed: number;
  /** Jobs dead-lettered. */
  dead: number;
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
  return { enqueued: 0, started: 0, succeeded: 0, failed: 0, dead: 0, waitSumMs: 0, waitMaxMs: 0, waitCount: 0 };
}

/** What one event adds to the counters; undefined when it adds nothing. */
export interface Classified {
  kind: "enqueued" | "started" | "succeeded" | "failed" | "dead";
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
      // cancel is the client's doing, not a failure. As in the server's
      // history, "failed" is an attempt that will be retried; the last one
      // of a job is its death.
      if (job.state === JobState.CANCELLED) return undefined;
      return job.state === JobState.DEAD ? { kind: "dead" } : { kind: "failed" };
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

  /** The per-second counters kept, by second since the epoch. */
  perSecond(): ReadonlyMap<number, Counters> {
    return this.seconds;
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
    b.dead += c.dead;
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

/** One minute: the server's history closes and pushes minutes. */
export const MINUTE_MS = 60_000;

/** The history windows of the overview, each with its bucket step (60–96 bars). */
export const HISTORY_WINDOWS = [
  { key: "1h", label: "Last hour", windowMs: 3_600_000, stepMs: 60_000, stepLabel: "minute" },
  { key: "1d", label: "Last day", windowMs: 86_400_000, stepMs: 15 * 60_000, stepLabel: "15 minutes" },
  { key: "7d", label: "Last week", windowMs: 7 * 86_400_000, stepMs: 2 * 3_600_000, stepLabel: "2 hours" },
] as const;

export type HistoryWindow = (typeof HISTORY_WINDOWS)[number];

/** One chart bucket of the history: counts, and percentiles when anything started or ran. */
export interface HistoryBucket {
  start: number;
  enqueued: number;
  started: number;
  succeeded: number;
  failed: number;
  dead: number;
  cancelled: number;
  waitP50?: number;
  waitP99?: number;
  runP50?: number;
  runP99?: number;
}

function emptyHistoryBucket(start: number): HistoryBucket {
  return { start, enqueued: 0, started: 0, succeeded: 0, failed: 0, dead: 0, cancelled: 0 };
}

/**
 * The points of one WatchJobHistory stream. The first message holds the
 * window; each later one holds the buckets that changed, whole, so a point
 * replaces the one with the same start, queue and type.
 */
export class HistoryPoints {
  private points = new Map<string, HistoryPoint>();

  /** Takes a message's points; forgets those that started before `keepFrom`. */
  apply(points: readonly HistoryPoint[], keepFrom: number): void {
    for (const p of points) this.points.set(`${tsMillis(p.startTime) ?? 0}\u0000${p.queue}\u0000${p.type}`, p);
    for (const [key, p] of this.points) if ((tsMillis(p.startTime) ?? 0) < keepFrom) this.points.delete(key);
  }

  get size(): number {
    return this.points.size;
  }

  /** `windowMs / stepMs` buckets ending with the one holding `now`, oldest first. */
  buckets(now: number, windowMs: number, stepMs: number): HistoryBucket[] {
    return historyBuckets(this.points.values(), now, windowMs, stepMs);
  }
}

/**
 * Folds history points into aligned buckets. Counts add up; a bucket
 * with several points (series) shows the highest of their percentiles,
 * which never understates a slow queue.
 */
export function historyBuckets(points: Iterable<HistoryPoint>, now: number, windowMs: number, stepMs: number): HistoryBucket[] {
  const n = Math.max(1, Math.round(windowMs / stepMs));
  const lastStart = Math.floor(now / stepMs) * stepMs;
  const firstStart = lastStart - (n - 1) * stepMs;
  const out: HistoryBucket[] = [];
  for (let i = 0; i < n; i++) out.push(emptyHistoryBucket(firstStart + i * stepMs));
  const higher = (a: number | undefined, b: number | undefined) => (a === undefined ? b : b === undefined ? a : Math.max(a, b));
  for (const p of points) {
    const at = tsMillis(p.startTime);
    if (at === undefined || at < firstStart || at >= lastStart + stepMs) continue;
    const b = out[Math.floor((at - firstStart) / stepMs)];
    if (!b) continue;
    b.enqueued += Number(p.enqueued);
    b.started += Number(p.started);
    b.succeeded += Number(p.succeeded);
    b.failed += Number(p.failed);
    b.dead += Number(p.dead);
    b.cancelled += Number(p.cancelled);
    if (p.wait && p.wait.count > 0n) {
      b.waitP50 = higher(b.waitP50, durationMillis(p.wait.p50));
      b.waitP99 = higher(b.waitP99, durationMillis(p.wait.p99));
    }
    if (p.run && p.run.count > 0n) {
      b.runP50 = higher(b.runP50, durationMillis(p.run.p50));
      b.runP99 = higher(b.runP99, durationMillis(p.run.p99));
    }
  }
  return out;
}

/** What a throughput chart shows, in words (its text alternative). */
export function describeThroughput(buckets: readonly HistoryBucket[], w: HistoryWindow): string {
  const sum = (k: "succeeded" | "failed" | "dead" | "enqueued") => buckets.reduce((n, b) => n + b[k], 0);
  const finished = (b: HistoryBucket) => b.succeeded + b.failed + b.dead;
  const busiest = buckets.reduce<HistoryBucket | undefined>((best, b) => (finished(b) > (best ? finished(best) : 0) ? b : best), undefined);
  const head = `Throughput, ${w.label.toLowerCase()} by ${w.stepLabel}: ${sum("succeeded")} succeeded, ${sum("failed")} failed and retried, ${sum("dead")} dead, ${sum("enqueued")} enqueued.`;
  return busiest ? `${head} Busiest: ${finished(busiest)} at ${formatClock(busiest.start).slice(0, 5)}.` : `${head} Nothing finished.`;
}

/** What a latency chart shows, in words: the worst p50 and p99 of waits and runs. */
export function describeLatency(buckets: readonly HistoryBucket[], w: HistoryWindow): string {
  const worst = (k: "waitP50" | "waitP99" | "runP50" | "runP99") => {
    const values = buckets.map((b) => b[k]).filter((v): v is number => v !== undefined);
    return values.length ? formatDuration(Math.max(...values)) : "—";
  };
  if (buckets.every((b) => b.waitP50 === undefined && b.runP50 === undefined)) return `Wait and run times, ${w.label.toLowerCase()}: no job started or finished.`;
  return `Wait and run times, ${w.label.toLowerCase()} by ${w.stepLabel}: wait p50 up to ${worst("waitP50")}, p99 up to ${worst("waitP99")}; run p50 up to ${worst("runP50")}, p99 up to ${worst("runP99")}.`;
}

/**
 * Adds what this browser saw from `fromMs` on (the seconds the server's
 * history does not hold yet: its open minute is only pushed once closed)
 * to history buckets, so a job shows up at once. Counts only; the
 * percentiles wait for the server.
 */
export function addSeen(buckets: HistoryBucket[], seconds: ReadonlyMap<number, Counters>, fromMs: number, stepMs: number): HistoryBucket[] {
  const first = buckets[0]?.start;
  if (first === undefined) return buckets;
  for (const [sec, c] of seconds) {
    const ms = sec * 1000;
    if (ms < fromMs) continue;
    const b = buckets[Math.floor((ms - first) / stepMs)];
    if (!b) continue;
    b.enqueued += c.enqueued;
    b.started += c.started;
    b.succeeded += c.succeeded;
    b.failed += c.failed;
    b.dead += c.dead;
  }
  return buckets;
}
