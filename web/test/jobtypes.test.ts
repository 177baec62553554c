import { create, fromBinary, toBinary, toJson, type JsonValue } from "@bufbuild/protobuf";
import { ValueSchema, type Value } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import { JobSpecSchema } from "../src/gen/jobq/v1/job_pb";
import { EnqueueJobRequestSchema } from "../src/gen/jobq/v1/queue_service_pb";
import { buildSpec, DEFAULT_FORM, parseSize, type EnqueueForm, type JobSpecInit } from "../src/lib/jobtypes";
import { MissedTicks } from "../src/gen/jobq/v1/admin_pb";
import { effectiveBurst, parseLimit } from "../src/views/Queues";
import { scheduleFromForm } from "../src/views/Schedules";

const form = (f: Partial<EnqueueForm>): EnqueueForm => ({ ...DEFAULT_FORM, ...f });

/** The JSON a spec's payload carries (a google.protobuf.Value, not JSON text). */
const payloadJson = (spec: JobSpecInit | undefined): JsonValue | undefined =>
  spec?.payload === undefined ? undefined : toJson(ValueSchema, spec.payload as Value);

/** The payload as the server reads it: the EnqueueJob request through the protobuf binary encoding. */
function payloadOnTheWire(spec: JobSpecInit): JsonValue | undefined {
  const req = create(EnqueueJobRequestSchema, { job: create(JobSpecSchema, spec) });
  const decoded = fromBinary(EnqueueJobRequestSchema, toBinary(EnqueueJobRequestSchema, req));
  return decoded.job?.payload ? toJson(ValueSchema, decoded.job.payload) : undefined;
}

describe("enqueue form → JobSpec", () => {
  it("maps a channel download to the worker's payload fields", () => {
    const r = buildSpec(form({ type: "channel_download", url: " https://www.youtube.com/@chan ", format: "bestaudio/best", fanOut: true, maxEntries: "10" }));
    expect(r.errors).toEqual({});
    expect(r.spec?.type).toBe("channel_download");
    expect(payloadJson(r.spec)).toEqual({ url: "https://www.youtube.com/@chan", format: "bestaudio/best", max_entries: 10, fan_out: true });
  });

  it("maps a playlist download, leaving unset options out", () => {
    const r = buildSpec(form({ type: "playlist_download", url: "https://youtube.com/playlist?list=PL1", outputTemplate: "%(title)s.%(ext)s", fanOut: false }));
    expect(r.payload).toEqual({ url: "https://youtube.com/playlist?list=PL1", output_template: "%(title)s.%(ext)s" });
  });

  it("requires a http(s) URL for downloads", () => {
    expect(buildSpec(form({ type: "channel_download", url: "" })).errors.url).toMatch(/Paste/);
    expect(buildSpec(form({ type: "channel_download", url: "ftp://x" })).errors.url).toMatch(/http/);
    expect(buildSpec(form({ type: "channel_download", url: "" })).spec).toBeUndefined();
    expect(buildSpec(form({ type: "channel_download", url: "https://x.test", maxEntries: "0" })).errors.maxEntries).toBeDefined();
  });

  it("maps metadata extraction by URL or by path", () => {
    expect(buildSpec(form({ type: "metadata_extraction", source: "url", url: "https://x.test/v" })).payload).toEqual({ url: "https://x.test/v" });
    expect(buildSpec(form({ type: "metadata_extraction", source: "path", path: "/m/a.mp4" })).payload).toEqual({ path: "/m/a.mp4" });
    expect(buildSpec(form({ type: "metadata_extraction", source: "path", path: "" })).errors.path).toBeDefined();
  });

  it("maps cleanup with its numbers and the dry-run flag", () => {
    const r = buildSpec(form({ type: "cleanup", cleanupPath: "old", olderThanDays: "14", maxTotalBytes: "2G", dryRun: false }));
    expect(r.payload).toEqual({ path: "old", older_than_days: 14, max_total_bytes: 2 * 1024 ** 3, dry_run: false });
    expect(buildSpec(form({ type: "cleanup", olderThanDays: "0.5" })).payload).toEqual({ older_than_days: 0.5, dry_run: true });
    expect(buildSpec(form({ type: "cleanup", olderThanDays: "x" })).errors.olderThanDays).toMatch(/number/);
    expect(buildSpec(form({ type: "cleanup", maxTotalBytes: "lots" })).errors.maxTotalBytes).toBeDefined();
    expect(buildSpec(form({ type: "cleanup", olderThanDays: "", maxTotalBytes: "" })).errors.olderThanDays).toMatch(/age, a size/);
  });

  it("maps a noop job", () => {
    expect(buildSpec(form({ type: "noop", sleepSeconds: "2.5", logLines: "20", fail: "fatal" })).payload).toEqual({ sleep_ms: 2500, log_lines: 20, fail: "fatal" });
    expect(buildSpec(form({ type: "noop", sleepSeconds: "", logLines: "0" })).payload).toEqual({});
    expect(buildSpec(form({ type: "noop", logLines: "20000" })).errors.logLines).toBeDefined();
  });

  it("maps a custom job type and checks its JSON", () => {
    const r = buildSpec(form({ type: "custom", customType: "send_email", customPayload: '{"to":"a@b"}' }));
    expect(r.spec?.type).toBe("send_email");
    expect(payloadJson(r.spec)).toEqual({ to: "a@b" });
    expect(buildSpec(form({ type: "custom", customType: "x", customPayload: "[1]" })).errors.customPayload).toMatch(/object/);
    expect(buildSpec(form({ type: "custom", customType: "x", customPayload: "{" })).errors.customPayload).toMatch(/JSON/);
    expect(buildSpec(form({ type: "custom", customType: "" })).errors.customType).toBeDefined();
  });

  it("sends the payload as a JSON value that survives the trip to the server unchanged", () => {
    const custom = {
      to: ["a@b.test", "c@d.test"],
      subject: "Hi \u00e9 ✓",
      retries: 3,
      ratio: 0.25,
      negative: -7,
      urgent: false,
      reply_to: null,
      meta: { nested: { deep: [1, "two", { three: true }] }, empty: {}, none: [] },
    };
    const r = buildSpec(form({ type: "custom", customType: "send_email", customPayload: JSON.stringify(custom, null, 2) }));
    expect(r.errors).toEqual({});
    // A Value message, not JSON text.
    expect(typeof r.spec?.payload).toBe("object");
    expect((r.spec?.payload as Value).kind.case).toBe("structValue");
    expect(payloadJson(r.spec)).toEqual(custom);
    expect(payloadOnTheWire(r.spec!)).toEqual(custom);
    // What the preview shows is what is sent.
    expect(payloadOnTheWire(r.spec!)).toEqual(r.payload);
  });

  it("sends the built-in types' numbers and flags as JSON numbers and booleans, not strings", () => {
    const noop = buildSpec(form({ type: "noop", sleepSeconds: "1.5", logLines: "3", fail: "retryable" }));
    expect(payloadOnTheWire(noop.spec!)).toEqual({ sleep_ms: 1500, log_lines: 3, fail: "retryable" });
    const cleanup = buildSpec(form({ type: "cleanup", olderThanDays: "7", maxTotalBytes: "1K", dryRun: true }));
    expect(payloadOnTheWire(cleanup.spec!)).toEqual({ older_than_days: 7, max_total_bytes: 1024, dry_run: true });
    // An empty payload is still sent as {} (not left unset).
    expect(payloadOnTheWire(buildSpec(form({ type: "noop", sleepSeconds: "", logLines: "0" })).spec!)).toEqual({});
  });

  it("maps the job options", () => {
    const r = buildSpec(
      form({ type: "cleanup", queue: "media", priority: "10", maxAttempts: "3", delaySeconds: "60", uniqueKey: " k ", tags: "a, b," }),
    );
    expect(r.spec).toMatchObject({ queue: "media", priority: 10, maxAttempts: 3, uniqueKey: "k", tags: ["a", "b"] });
    expect(r.spec?.delay).toEqual({ seconds: 60n, nanos: 0 });
    expect(buildSpec(form({ type: "cleanup", queue: "bad queue" })).errors.queue).toBeDefined();
    expect(buildSpec(form({ type: "cleanup", priority: "5000" })).errors.priority).toMatch(/between/);
    expect(buildSpec(form({ type: "cleanup" })).spec).toMatchObject({ queue: "", priority: 0, maxAttempts: 0 });
  });

  it("sends a concurrency key with its limit, 1 unless given", () => {
    expect(buildSpec(form({ type: "cleanup", concurrencyKey: " channel:UCxyz " })).spec).toMatchObject({ concurrencyKey: "channel:UCxyz", concurrencyLimit: 1 });
    expect(buildSpec(form({ type: "cleanup", concurrencyKey: "host:a", concurrencyLimit: "3" })).spec).toMatchObject({ concurrencyLimit: 3 });
    expect(buildSpec(form({ type: "cleanup", concurrencyLimit: "3" })).errors.concurrencyLimit).toBeDefined();
    expect(buildSpec(form({ type: "cleanup", concurrencyKey: "k", concurrencyLimit: "0" })).errors.concurrencyLimit).toBeDefined();
  });

  it("parses sizes", () => {
    expect(parseSize("12345")).toBe(12345);
    expect(parseSize("500M")).toBe(500 * 1024 ** 2);
    expect(parseSize("1.5 GiB")).toBe(Math.round(1.5 * 1024 ** 3));
    expect(parseSize("2tb")).toBe(2 * 1024 ** 4);
    expect(parseSize("two")).toBeUndefined();
  });
});

describe("queue limits and schedule form", () => {
  it("shows the burst the server applies", () => {
    expect(effectiveBurst({ rateLimitPerSecond: 2.5, rateBurst: 0 })).toBe(3);
    expect(effectiveBurst({ rateLimitPerSecond: 0.2, rateBurst: 0 })).toBe(1);
    expect(effectiveBurst({ rateLimitPerSecond: 5, rateBurst: 20 })).toBe(20);
  });

  it("parses limits", () => {
    expect(parseLimit("", true)).toEqual({ value: 0 });
    expect(parseLimit("5", true)).toEqual({ value: 5 });
    expect(parseLimit("2.5", true).error).toBeDefined();
    expect(parseLimit("2.5", false)).toEqual({ value: 2.5 });
    expect(parseLimit("-1", false).error).toBeDefined();
  });

  it("maps the schedule form to a PutSchedule body", () => {
    const r = scheduleFromForm({
      name: "nightly",
      cron: " 0  0 3 * * * ",
      timeZone: "Europe/Berlin",
      type: "cleanup",
      queue: "",
      payload: '{ "root": "/d" }',
      missedTicks: "skip",
    });
    expect(r.errors).toEqual({});
    const { job: spec, ...schedule } = r.schedule ?? {};
    expect(schedule).toEqual({ name: "nightly", cron: "0 0 3 * * *", timeZone: "Europe/Berlin", missedTicks: MissedTicks.SKIP });
    // The template's payload is a JSON value too.
    expect({ ...spec, payload: toJson(ValueSchema, spec?.payload as Value) }).toEqual({ type: "cleanup", queue: "", payload: { root: "/d" } });
    const bad = scheduleFromForm({ name: "a b", cron: "* *", timeZone: "", type: "", queue: "", payload: "[]", missedTicks: "run_once" });
    expect(Object.keys(bad.errors).sort()).toEqual(["cron", "name", "payload", "type"]);
  });
});

describe("enqueue form: run-at and timeout", () => {
  const base = { type: "custom" as const, customType: "e2e.demo", customPayload: "{}" };

  it("sends run_at read in the chosen zone, and a timeout", () => {
    const r = buildSpec(form({ ...base, runAt: "2026-12-01T09:30", timeoutSeconds: "90" }), true);
    expect(r.errors).toEqual({});
    expect(r.spec?.runAt).toEqual({ seconds: BigInt(Date.UTC(2026, 11, 1, 9, 30) / 1000), nanos: 0 });
    expect(r.spec?.timeout).toEqual({ seconds: 90n, nanos: 0 });
    expect(r.spec?.delay).toBeUndefined();
    const local = buildSpec(form({ ...base, runAt: "2026-12-01T09:30:15" }), false);
    expect(local.spec?.runAt?.seconds).toBe(BigInt(new Date(2026, 11, 1, 9, 30, 15).getTime() / 1000));
  });

  it("leaves both unset when empty", () => {
    const r = buildSpec(form(base));
    expect(r.spec?.runAt).toBeUndefined();
    expect(r.spec?.timeout).toBeUndefined();
  });

  it("refuses a run-at with a delay, a bad date, and a timeout out of range", () => {
    expect(buildSpec(form({ ...base, runAt: "2026-12-01T09:30", delaySeconds: "60" })).errors.runAt).toMatch(/not both/);
    expect(buildSpec(form({ ...base, runAt: "2026-02-31T09:30" })).errors.runAt).toBeDefined();
    expect(buildSpec(form({ ...base, runAt: "tomorrow" })).spec).toBeUndefined();
    expect(buildSpec(form({ ...base, timeoutSeconds: "0" })).errors.timeoutSeconds).toMatch(/between 1/);
    expect(buildSpec(form({ ...base, timeoutSeconds: "1.5" })).errors.timeoutSeconds).toMatch(/whole/);
  });
});
