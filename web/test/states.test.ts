import { describe, expect, it } from "vitest";
import { WorkerStatus } from "../src/gen/jobq/v1/admin_pb";
import { AttemptOutcome, JobState } from "../src/gen/jobq/v1/job_pb";
import { LogStream } from "../src/gen/jobq/v1/log_pb";
import {
  attemptCancelNote,
  canCancel,
  canDelete,
  canRetry,
  isTerminal,
  logStreamName,
  outcomeInfo,
  stateFromSlug,
  stateInfo,
  STATES,
  workerStatusInfo,
} from "../src/lib/states";

describe("state badges", () => {
  it("gives every state its own label, slug and tone", () => {
    expect(STATES.map((s) => [s.slug, s.tone])).toEqual([
      ["scheduled", "violet"],
      ["blocked", "slate"],
      ["queued", "sky"],
      ["running", "blue"],
      ["retrying", "amber"],
      ["succeeded", "green"],
      ["cancelled", "gray"],
      ["dead", "red"],
    ]);
    expect(new Set(STATES.map((s) => s.label)).size).toBe(8);
  });

  it("maps unknown states to a neutral badge", () => {
    expect(stateInfo(JobState.UNSPECIFIED).label).toBe("Unknown");
    expect(stateInfo(99 as JobState).tone).toBe("gray");
  });

  it("round-trips slugs", () => {
    for (const s of STATES) expect(stateFromSlug(s.slug)).toBe(s.state);
    expect(stateFromSlug("DEAD")).toBe(JobState.DEAD);
    expect(stateFromSlug("nope")).toBeUndefined();
  });

  it("knows which actions each state allows", () => {
    expect(STATES.filter((s) => isTerminal(s.state)).map((s) => s.slug)).toEqual(["succeeded", "cancelled", "dead"]);
    expect(canRetry(JobState.DEAD)).toBe(true);
    expect(canRetry(JobState.RUNNING)).toBe(false);
    expect(canCancel(JobState.RUNNING)).toBe(true);
    expect(canCancel(JobState.QUEUED)).toBe(true);
    expect(canCancel(JobState.SUCCEEDED)).toBe(false);
    expect(canDelete(JobState.RUNNING)).toBe(false);
    expect(canDelete(JobState.DEAD)).toBe(true);
  });

  it("labels attempt outcomes, worker statuses and log streams", () => {
    expect(outcomeInfo(AttemptOutcome.SUCCEEDED)).toEqual({ label: "Succeeded", tone: "green" });
    expect(outcomeInfo(AttemptOutcome.FAILED).tone).toBe("red");
    expect(outcomeInfo(AttemptOutcome.UNSPECIFIED).label).toBe("Running");
    expect(workerStatusInfo(WorkerStatus.ACTIVE).tone).toBe("green");
    expect(workerStatusInfo(WorkerStatus.LOST).tone).toBe("red");
    expect(logStreamName(LogStream.STDERR)).toBe("stderr");
    expect(logStreamName(LogStream.SYSTEM)).toBe("system");
    expect(logStreamName(LogStream.UNSPECIFIED)).toBe("other");
  });

  it("marks a success whose attempt had a cancel requested, and a running one being cancelled", () => {
    expect(attemptCancelNote(AttemptOutcome.SUCCEEDED, true)?.label).toBe("cancel requested");
    expect(attemptCancelNote(AttemptOutcome.SUCCEEDED, true)?.title).toMatch(/success stands/);
    expect(attemptCancelNote(AttemptOutcome.UNSPECIFIED, true)?.label).toBe("cancelling");
    expect(attemptCancelNote(AttemptOutcome.SUCCEEDED, false)).toBeUndefined();
    // The outcome says it already.
    expect(attemptCancelNote(AttemptOutcome.CANCELLED, true)).toBeUndefined();
  });
});
