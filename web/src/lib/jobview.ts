//! A job as the dashboard holds it: the FULL view GetJob returned, updated
//! from BASIC-view answers (events, cancel, retry) that leave out the
//! payload, the result and the attempts.
import { JobState, type Job } from "../gen/jobq/v1/job_pb";
import { tsMillis } from "./format";

/**
 * Whether `a` is an older version of the job than `b` (by updated_at, which
 * the server moves on every change). Events reach the page in batches, so
 * some may be older than a GetJob answer already shown.
 */
export function isOlder(a: Job, b: Job): boolean {
  const am = tsMillis(a.updatedAt);
  const bm = tsMillis(b.updatedAt);
  return am !== undefined && bm !== undefined && am < bm;
}

/**
 * `basic` (newer) with the payload, result and attempts of `full` where
 * `basic` has none: a BASIC view leaves them unset, which does not mean
 * they are gone. A result only stays while the job is still succeeded (a
 * retried job has none). The page reads the job again (FULL) after a state
 * change. A `basic` older than `full` changes nothing: applied, an event
 * from before the job succeeded would drop the result just read.
 */
export function withFullFields(basic: Job, full: Job): Job {
  if (isOlder(basic, full)) return full;
  return {
    ...basic,
    payload: basic.payload ?? full.payload,
    result: basic.result ?? (basic.state === JobState.SUCCEEDED ? full.result : undefined),
    attempts: basic.attempts.length > 0 ? basic.attempts : full.attempts,
  };
}

/**
 * Whether the job page shows a progress card: only while an attempt runs.
 * Progress belongs to the current attempt, so once the job has finished
 * (or waits for its next attempt) the last report is history, not progress.
 */
export function showsProgress(job: Job): boolean {
  return job.state === JobState.RUNNING;
}

export interface ErrorNotice {
  title: string;
  /** "error" for a failure; "warn" for a cancel or an error the job got past. */
  tone: "error" | "warn";
}

/**
 * How the page shows the job's last_error, which is also where a cancel's
 * reason is kept: while a cancel waits for the worker to stop, that text is
 * the reason of the cancel, not an error.
 */
export function errorNotice(job: Job): ErrorNotice | undefined {
  if (!job.lastError) return undefined;
  switch (job.state) {
    case JobState.CANCELLED:
      return { title: "Cancelled", tone: "warn" };
    case JobState.SUCCEEDED:
      // The reason of a cancel the worker outran may be the last error.
      return {
        title: job.attempts[job.attempts.length - 1]?.cancelRequested ? "A cancel was requested, but the job finished first" : "An earlier attempt failed",
        tone: "warn",
      };
    case JobState.RUNNING:
      if (job.cancelRequested) return { title: "Cancel requested; waiting for the worker to stop", tone: "warn" };
      return { title: "Last error", tone: "error" };
    default:
      return { title: "Last error", tone: "error" };
  }
}
