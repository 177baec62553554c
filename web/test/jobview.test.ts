import { create, fromJson, toJson } from "@bufbuild/protobuf";
import { timestampFromMs, ValueSchema, type Value } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import { AttemptOutcome, AttemptSchema, JobState } from "../src/gen/jobq/v1/job_pb";
import { withFullFields } from "../src/lib/jobview";
import { job } from "./helpers";

const json = (v: Value | undefined) => (v ? toJson(ValueSchema, v) : undefined);

describe("a job page updated from BASIC-view answers", () => {
  const full = job("j", {
    state: JobState.SUCCEEDED,
    payload: fromJson(ValueSchema, { url: "https://x.test" }),
    result: fromJson(ValueSchema, { files: 2 }),
    attempts: [create(AttemptSchema, { seq: 1, number: 1, outcome: AttemptOutcome.SUCCEEDED })],
  });

  it("keeps the payload, result and attempts an event leaves out", () => {
    const next = withFullFields(job("j", { state: JobState.SUCCEEDED, progressPercent: 100 }), full);
    expect(next.progressPercent).toBe(100);
    expect(json(next.payload)).toEqual({ url: "https://x.test" });
    expect(json(next.result)).toEqual({ files: 2 });
    expect(next.attempts.map((a) => a.seq)).toEqual([1]);
  });

  it("drops the result once the job is no longer succeeded (retried)", () => {
    const next = withFullFields(job("j", { state: JobState.QUEUED }), full);
    expect(next.result).toBeUndefined();
    expect(json(next.payload)).toEqual({ url: "https://x.test" });
  });

  it("takes what the newer answer does carry", () => {
    const next = withFullFields(job("j", { state: JobState.SUCCEEDED, result: fromJson(ValueSchema, "other") }), full);
    expect(json(next.result)).toBe("other");
  });

  it("ignores an event older than the job shown (it came in the same batch as newer ones)", () => {
    const read = job("j", { ...full, updatedAt: timestampFromMs(2000) });
    // The heartbeat's PROGRESS event, from before the job succeeded, then the SUCCEEDED one.
    const progress = job("j", { state: JobState.RUNNING, progressPercent: 100, updatedAt: timestampFromMs(1990) });
    const succeeded = job("j", { state: JobState.SUCCEEDED, progressPercent: 100, updatedAt: timestampFromMs(2000) });
    const shown = withFullFields(succeeded, withFullFields(progress, read));
    expect(shown.state).toBe(JobState.SUCCEEDED);
    expect(json(shown.result)).toEqual({ files: 2 });
    // Newer ones still apply.
    const retried = withFullFields(job("j", { state: JobState.QUEUED, updatedAt: timestampFromMs(2500) }), shown);
    expect(retried.state).toBe(JobState.QUEUED);
    expect(retried.result).toBeUndefined();
  });
});

describe("what the job page shows beside the summary", () => {
  it("shows progress only while an attempt runs", async () => {
    const { showsProgress } = await import("../src/lib/jobview");
    expect(showsProgress(job("j", { state: JobState.RUNNING, progressPercent: 40 }))).toBe(true);
    expect(showsProgress(job("j", { state: JobState.SUCCEEDED, progressPercent: 100, progressMessage: "done" }))).toBe(false);
    expect(showsProgress(job("j", { state: JobState.DEAD, progressPercent: 0, progressMessage: "sleeping" }))).toBe(false);
    expect(showsProgress(job("j", { state: JobState.QUEUED, progressPercent: 60 }))).toBe(false);
  });

  it("shows a cancel's reason as a pending cancel, not an error, while the job runs", async () => {
    const { errorNotice } = await import("../src/lib/jobview");
    expect(errorNotice(job("j", { state: JobState.RUNNING, cancelRequested: true, lastError: "wrong channel" }))).toEqual({
      title: "Cancel requested; waiting for the worker to stop",
      tone: "warn",
    });
    expect(errorNotice(job("j", { state: JobState.RUNNING, lastError: "HTTP 500" }))).toEqual({ title: "Last error", tone: "error" });
    expect(errorNotice(job("j", { state: JobState.CANCELLED, lastError: "wrong channel" }))?.tone).toBe("warn");
    expect(errorNotice(job("j", { state: JobState.DEAD, lastError: "HTTP 500" }))).toEqual({ title: "Last error", tone: "error" });
    expect(errorNotice(job("j", { state: JobState.RUNNING }))).toBeUndefined();
  });
});
