import { fromJson } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import {
  clampPercent,
  durationMillis,
  firstLine,
  formatClock,
  formatCompact,
  formatCount,
  formatDateTime,
  formatDuration,
  formatFields,
  formatLatency,
  formatRate,
  formatRelative,
  formatVersion,
  logEntryLabel,
  prettyValue,
  shortId,
  tsMillis,
  valueJson,
} from "../src/lib/format";

describe("format", () => {
  it("converts timestamps and durations to milliseconds", () => {
    expect(tsMillis({ seconds: 1_700_000_000n, nanos: 250_000_000 })).toBe(1_700_000_000_250);
    expect(tsMillis(undefined)).toBeUndefined();
    expect(durationMillis({ seconds: 3n, nanos: 500_000_000 })).toBe(3500);
  });

  it("formats durations at every scale", () => {
    expect(formatDuration(850)).toBe("850ms");
    expect(formatDuration(4200)).toBe("4.2s");
    expect(formatDuration(42_000)).toBe("42s");
    expect(formatDuration(185_000)).toBe("3m 05s");
    expect(formatDuration(2 * 3600_000 + 7 * 60_000)).toBe("2h 07m");
    expect(formatDuration(3 * 86400_000 + 4 * 3600_000)).toBe("3d 4h");
    expect(formatDuration(undefined)).toBe("—");
    expect(formatDuration(-1500)).toBe("1.5s");
  });

  it("formats relative times in the past and future", () => {
    const now = 1_000_000_000;
    expect(formatRelative(now - 500, now)).toBe("just now");
    expect(formatRelative(now - 12_000, now)).toBe("12s ago");
    expect(formatRelative(now - 5 * 60_000, now)).toBe("5m ago");
    expect(formatRelative(now + 3 * 3600_000, now)).toBe("in 3h");
    expect(formatRelative(now - 3 * 86400_000, now)).toBe("3d ago");
    expect(formatRelative(undefined, now)).toBe("—");
  });

  it("formats absolute times", () => {
    const ms = Date.UTC(2026, 10, 28, 7, 5, 9, 42);
    expect(formatDateTime(ms, true)).toBe("2026-11-28 07:05:09");
    expect(formatClock(ms, true)).toBe("07:05:09.042");
    expect(formatDateTime(undefined)).toBe("—");
  });

  it("groups counts and compacts big numbers", () => {
    expect(formatCount(0)).toBe("0");
    expect(formatCount(1_234_567)).toBe("1,234,567");
    expect(formatCount(1_000_000n)).toBe("1,000,000");
    expect(formatCount(-4321)).toBe("-4,321");
    expect(formatCompact(999)).toBe("999");
    expect(formatCompact(12_345)).toBe("12.3k");
    expect(formatCompact(1_234_567)).toBe("1.2M");
    expect(formatCompact(250_000_000)).toBe("250M");
  });

  it("formats rates", () => {
    expect(formatRate(0)).toBe("0");
    expect(formatRate(0.25)).toBe("0.25");
    expect(formatRate(3.44)).toBe("3.4");
    expect(formatRate(120)).toBe("120");
  });

  it("shortens ids to their distinguishing tail", () => {
    expect(shortId("0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")).toBe("…0c1d2e3f4a5b");
    expect(shortId("12345")).toBe("12345");
  });

  it("pretty-prints JSON values (payloads, results), and nothing for an unset one", () => {
    expect(prettyValue(fromJson(ValueSchema, { a: 1, b: [2] }))).toBe('{\n  "a": 1,\n  "b": [\n    2\n  ]\n}');
    expect(prettyValue(fromJson(ValueSchema, "done"))).toBe('"done"');
    expect(prettyValue(fromJson(ValueSchema, null))).toBe("null");
    expect(prettyValue(undefined)).toBe("");
    expect(valueJson(fromJson(ValueSchema, [1, { x: false }]))).toEqual([1, { x: false }]);
    expect(valueJson(undefined)).toBeUndefined();
  });

  it("shows a log line's structured fields compactly", () => {
    expect(formatFields({ file: "a.mp4", bytes: 1024, done: true, tags: ["x"] })).toBe('file="a.mp4" bytes=1024 done=true tags=["x"]');
    expect(formatFields({})).toBe("");
    expect(formatFields(undefined)).toBe("");
  });

  it("cuts errors to their first line", () => {
    expect(firstLine("boom\nstack")).toBe("boom");
    expect(firstLine("x".repeat(200), 10)).toBe(`${"x".repeat(9)}…`);
  });

  it("shows queue latency, with a dash when nothing waits", () => {
    expect(formatLatency(undefined)).toBe("—");
    expect(formatLatency({ seconds: 0n, nanos: 0 })).toBe("—");
    expect(formatLatency({ seconds: 75n, nanos: 0 })).toBe("1m 15s");
  });

  it("clamps progress", () => {
    expect(clampPercent(-3)).toBe(0);
    expect(clampPercent(42.6)).toBe(43);
    expect(clampPercent(180)).toBe(100);
    expect(clampPercent(Number.NaN)).toBe(0);
  });
});

describe("log entries and worker versions", () => {
  it("heads an attempt's lines with its number and history position", () => {
    const numbers = new Map([
      [1, 1],
      [3, 1],
    ]);
    expect(logEntryLabel(1, numbers)).toBe("Attempt 1 · #1");
    // Retried: the third entry of the history is attempt 1 again.
    expect(logEntryLabel(3, numbers)).toBe("Attempt 1 · #3");
    // Not (yet) in the job's attempts: the position alone.
    expect(logEntryLabel(4, numbers)).toBe("Attempt #4");
    expect(logEntryLabel(2)).toBe("Attempt #2");
    // A cancel or requeue is no attempt.
    expect(logEntryLabel(0, numbers)).toBe("");
  });

  it("prefixes v to bare version numbers only", () => {
    expect(formatVersion("0.1.0")).toBe("v0.1.0");
    expect(formatVersion("v2.3.4")).toBe("v2.3.4");
    expect(formatVersion("jobq-worker/0.1.0")).toBe("jobq-worker/0.1.0");
    expect(formatVersion(" python-worker 1.2 ")).toBe("python-worker 1.2");
  });
});
