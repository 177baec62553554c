//! Job states and worker/attempt statuses: names, URL slugs and badge colours.
import { AttemptOutcome, JobState } from "../gen/jobq/v1/job_pb";
import { WorkerStatus } from "../gen/jobq/v1/admin_pb";
import { LogStream } from "../gen/jobq/v1/log_pb";

/** Badge tones; each maps to a CSS class `badge-<tone>`. */
export type Tone =
  | "gray"
  | "slate"
  | "violet"
  | "blue"
  | "sky"
  | "amber"
  | "green"
  | "red";

export interface StateInfo {
  state: JobState;
  /** Lower-case name as people say it and as the URL carries it. */
  slug: string;
  label: string;
  tone: Tone;
  terminal: boolean;
}

/** Every real state in lifecycle order (the order of filters and counters). */
export const STATES: readonly StateInfo[] = [
  { state: JobState.SCHEDULED, slug: "scheduled", label: "Scheduled", tone: "violet", terminal: false },
  { state: JobState.BLOCKED, slug: "blocked", label: "Blocked", tone: "slate", terminal: false },
  { state: JobState.QUEUED, slug: "queued", label: "Queued", tone: "sky", terminal: false },
  { state: JobState.RUNNING, slug: "running", label: "Running", tone: "blue", terminal: false },
  { state: JobState.RETRYING, slug: "retrying", label: "Retrying", tone: "amber", terminal: false },
  { state: JobState.SUCCEEDED, slug: "succeeded", label: "Succeeded", tone: "green", terminal: true },
  { state: JobState.CANCELLED, slug: "cancelled", label: "Cancelled", tone: "gray", terminal: true },
  { state: JobState.DEAD, slug: "dead", label: "Dead", tone: "red", terminal: true },
];

const UNKNOWN: StateInfo = {
  state: JobState.UNSPECIFIED,
  slug: "unknown",
  label: "Unknown",
  tone: "gray",
  terminal: false,
};

export function stateInfo(state: JobState): StateInfo {
  return STATES.find((s) => s.state === state) ?? UNKNOWN;
}

export function stateFromSlug(slug: string): JobState | undefined {
  return STATES.find((s) => s.slug === slug.toLowerCase())?.state;
}

export function isTerminal(state: JobState): boolean {
  return stateInfo(state).terminal;
}

/** RetryJob is accepted for terminal jobs only. */
export function canRetry(state: JobState): boolean {
  return isTerminal(state);
}

/** CancelJob is refused once a job is terminal. */
export function canCancel(state: JobState): boolean {
  return state !== JobState.UNSPECIFIED && !isTerminal(state);
}

/** DeleteJob is refused while the job runs. */
export function canDelete(state: JobState): boolean {
  return state !== JobState.RUNNING;
}

export function outcomeInfo(outcome: AttemptOutcome): { label: string; tone: Tone } {
  switch (outcome) {
    case AttemptOutcome.UNSPECIFIED:
      return { label: "Running", tone: "blue" };
    case AttemptOutcome.SUCCEEDED:
      return { label: "Succeeded", tone: "green" };
    case AttemptOutcome.FAILED:
      return { label: "Failed", tone: "red" };
    case AttemptOutcome.LEASE_EXPIRED:
      return { label: "Lease expired", tone: "amber" };
    case AttemptOutcome.TIMED_OUT:
      return { label: "Timed out", tone: "amber" };
    case AttemptOutcome.CANCELLED:
      return { label: "Cancelled", tone: "gray" };
    case AttemptOutcome.RELEASED:
      return { label: "Released", tone: "slate" };
    default:
      return { label: "Unknown", tone: "gray" };
  }
}

/**
 * What to say about a cancel requested while an attempt ran, if anything:
 * a success stands (the worker finished before it stopped), a running
 * attempt is being stopped; a cancelled outcome says it all already.
 */
export function attemptCancelNote(outcome: AttemptOutcome, cancelRequested: boolean): { label: string; title: string } | undefined {
  if (!cancelRequested) return undefined;
  switch (outcome) {
    case AttemptOutcome.SUCCEEDED:
      return { label: "cancel requested", title: "A cancel was requested while it ran, but the worker finished first: the success stands." };
    case AttemptOutcome.UNSPECIFIED:
      return { label: "cancelling", title: "A cancel was requested; the worker stops at its next heartbeat." };
    default:
      return undefined;
  }
}

export function workerStatusInfo(status: WorkerStatus): { label: string; tone: Tone } {
  switch (status) {
    case WorkerStatus.ACTIVE:
      return { label: "Active", tone: "green" };
    case WorkerStatus.LOST:
      return { label: "Lost", tone: "red" };
    default:
      return { label: "Unknown", tone: "gray" };
  }
}

/** Short lower-case stream tag shown in the log view; also its CSS class. */
export function logStreamName(stream: LogStream): string {
  switch (stream) {
    case LogStream.STDOUT:
      return "stdout";
    case LogStream.STDERR:
      return "stderr";
    case LogStream.PROGRESS:
      return "progress";
    case LogStream.SYSTEM:
      return "system";
    default:
      return "other";
  }
}
