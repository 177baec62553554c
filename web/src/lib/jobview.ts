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
