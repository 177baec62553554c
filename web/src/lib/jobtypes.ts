//! The enqueue form's job types and how its fields map to a JobSpec and
//! its JSON payload. The payload field names are the ones the built-in
//! worker reads (clients/jobq-worker/src/jobs/*.rs, which refuses unknown
//! fields); adjust them here, and only here.
import { fromJson, type JsonObject, type MessageInitShape } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import type { JobSpecSchema } from "../gen/jobq/v1/job_pb";

export type JobSpecInit = MessageInitShape<typeof JobSpecSchema>;

export type BuiltinType = "channel_download" | "playlist_download" | "metadata_extraction" | "cleanup" | "noop";
export type FormType = BuiltinType | "custom";

export const JOB_TYPES: readonly { type: FormType; label: string; hint: string }[] = [
  { type: "channel_download", label: "Channel download", hint: "Download every video of a YouTube channel with yt-dlp." },
  { type: "playlist_download", label: "Playlist download", hint: "Download every entry of a playlist with yt-dlp." },
  { type: "metadata_extraction", label: "Metadata extraction", hint: "Read the metadata of a URL or a local media file." },
  { type: "cleanup", label: "Cleanup", hint: "Delete old files under a directory." },
  { type: "noop", label: "No-op", hint: "Does nothing, slowly if asked: for smoke tests and demos." },
  { type: "custom", label: "Custom", hint: "Any job type with a JSON payload, for your own workers." },
];

export const FORMATS: readonly { value: string; label: string }[] = [
  { value: "", label: "Worker default" },
  { value: "bestvideo*+bestaudio/best", label: "Best video + audio" },
  { value: "bestvideo[height<=1080]+bestaudio/best[height<=1080]", label: "Up to 1080p" },
  { value: "bestvideo[height<=720]+bestaudio/best[height<=720]", label: "Up to 720p" },
  { value: "bestaudio/best", label: "Audio only" },
];

/** Every field of the form, as the inputs hold them (text). */
export interface EnqueueForm {
  type: FormType;
  customType: string;
  customPayload: string;
  // downloads
  url: string;
  format: string;
  outputTemplate: string;
  /** One child job per entry (payload `fan_out`). */
  fanOut: boolean;
  maxEntries: string;
  // metadata_extraction
  source: "url" | "path";
  path: string;
  // cleanup
  cleanupPath: string;
  olderThanDays: string;
  maxTotalBytes: string;
  dryRun: boolean;
  // noop
  sleepSeconds: string;
  logLines: string;
  fail: "" | "retryable" | "fatal";
  // job options
  queue: string;
  priority: string;
  maxAttempts: string;
  uniqueKey: string;
  /** Jobs sharing it run at most `concurrencyLimit` at once. */
  concurrencyKey: string;
  concurrencyLimit: string;
  tags: string;
  delaySeconds: string;
  /** "2026-12-01T09:30" (an <input type="datetime-local">), in the display zone. */
  runAt: string;
  timeoutSeconds: string;
}

export const DEFAULT_FORM: EnqueueForm = {
  type: "channel_download",
  customType: "",
  customPayload: "{}",
  url: "",
  format: "",
  outputTemplate: "",
  fanOut: true,
  maxEntries: "",
  source: "url",
  path: "",
  cleanupPath: "",
  olderThanDays: "30",
  maxTotalBytes: "",
  dryRun: true,
  sleepSeconds: "5",
  logLines: "20",
  fail: "",
  queue: "",
  priority: "0",
  maxAttempts: "",
  uniqueKey: "",
  concurrencyKey: "",
  concurrencyLimit: "",
  tags: "",
  delaySeconds: "",
  runAt: "",
  timeoutSeconds: "",
};

export type FieldErrors = Partial<Record<keyof EnqueueForm, string>>;

export interface BuildResult {
  spec?: JobSpecInit;
  /** The payload as an object, for the preview (the spec carries it as a protobuf Value). */
  payload?: JsonObject;
  errors: FieldErrors;
}

function isHttpUrl(text: string): boolean {
  try {
    const u = new URL(text);
    return u.protocol === "http:" || u.protocol === "https:";
  } catch {
    return false;
  }
}

/** Parses "10G", "500 MiB", "1.5TB", "12345" into bytes; undefined if not a size. */
export function parseSize(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$/i.exec(text);
  if (!m) return undefined;
  const n = Number(m[1]);
  const unit = (m[2] ?? "").toLowerCase();
  const pow = { "": 0, k: 1, m: 2, g: 3, t: 4 }[unit] ?? 0;
  return Math.round(n * Math.pow(1024, pow));
}

function intField(
  text: string,
  name: keyof EnqueueForm,
  errors: FieldErrors,
  { min, max, label }: { min: number; max: number; label: string },
): number | undefined {
  const t = text.trim();
  if (t === "") return undefined;
  if (!/^-?\d+$/.test(t)) {
    errors[name] = `${label} must be a whole number`;
    return undefined;
  }
  const n = Number(t);
  if (n < min || n > max) {
    errors[name] = `${label} must be between ${min} and ${max}`;
    return undefined;
  }
  return n;
}

/** A non-negative decimal number, or undefined (error noted) when not one. */
function numberField(text: string, name: keyof EnqueueForm, errors: FieldErrors, max: number, label: string): number | undefined {
  const t = text.trim();
  if (t === "") return undefined;
  const n = Number(t);
  if (!/^\d+(\.\d+)?$/.test(t) || !Number.isFinite(n) || n > max) {
    errors[name] = `${label} must be a number from 0 to ${max}`;
    return undefined;
  }
  return n;
}

/** The JSON payload of the form's job type. */
export function buildPayload(f: EnqueueForm, errors: FieldErrors): JsonObject | undefined {
  switch (f.type) {
    case "channel_download":
    case "playlist_download": {
      const url = f.url.trim();
      if (!url) errors.url = `Paste the URL of a ${f.type === "channel_download" ? "channel" : "playlist"}`;
      else if (!isHttpUrl(url)) errors.url = "Must be an http(s) URL";
      const p: JsonObject = { url };
      if (f.format.trim()) p.format = f.format.trim();
      if (f.outputTemplate.trim()) p.output_template = f.outputTemplate.trim();
      const max = intField(f.maxEntries, "maxEntries", errors, { min: 1, max: 100_000, label: "Entries" });
      if (max !== undefined) p.max_entries = max;
      if (f.fanOut) p.fan_out = true;
      return p;
    }
    case "metadata_extraction": {
      if (f.source === "url") {
        const url = f.url.trim();
        if (!url) errors.url = "Paste a URL";
        else if (!isHttpUrl(url)) errors.url = "Must be an http(s) URL";
        return { url };
      }
      const path = f.path.trim();
      if (!path) errors.path = "Enter a file path";
      return { path };
    }
    case "cleanup": {
      const p: JsonObject = {};
      const path = f.cleanupPath.trim();
      if (path) p.path = path;
      const days = numberField(f.olderThanDays, "olderThanDays", errors, 36500, "Age");
      if (days !== undefined) p.older_than_days = days;
      if (f.maxTotalBytes.trim()) {
        const bytes = parseSize(f.maxTotalBytes);
        if (bytes === undefined) errors.maxTotalBytes = "A size such as 500M or 20G";
        else p.max_total_bytes = bytes;
      }
      if (!f.olderThanDays.trim() && !f.maxTotalBytes.trim()) {
        errors.olderThanDays = "Give an age, a size budget, or both";
      }
      p.dry_run = f.dryRun;
      return p;
    }
    case "noop": {
      const p: JsonObject = {};
      const secs = numberField(f.sleepSeconds, "sleepSeconds", errors, 86400, "Duration");
      if (secs) p.sleep_ms = Math.round(secs * 1000);
      const lines = intField(f.logLines, "logLines", errors, { min: 0, max: 10_000, label: "Log lines" });
      if (lines) p.log_lines = lines;
      if (f.fail) p.fail = f.fail;
      return p;
    }
    case "custom": {
      const text = f.customPayload.trim() || "{}";
      try {
        const v: unknown = JSON.parse(text);
        if (v === null || typeof v !== "object" || Array.isArray(v)) {
          errors.customPayload = "The payload must be a JSON object";
          return undefined;
        }
        return v as JsonObject;
      } catch (e) {
        errors.customPayload = `Not valid JSON: ${(e as Error).message}`;
        return undefined;
      }
    }
  }
}

/**
 * Milliseconds since the epoch of "YYYY-MM-DDTHH:MM[:SS]" read in UTC or in
 * the browser's zone; undefined when the text is not such a time.
 */
export function parseDateTimeInput(text: string, utc: boolean): number | undefined {
  const m = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2}))?$/.exec(text.trim());
  if (!m) return undefined;
  const [y, mo, d, h, mi, s] = m.slice(1).map((x) => Number(x ?? 0)) as [number, number, number, number, number, number];
  const ms = utc ? Date.UTC(y, mo - 1, d, h, mi, s) : new Date(y, mo - 1, d, h, mi, s).getTime();
  // Date rolls 2026-02-31 over into March: refuse it instead.
  const back = new Date(ms);
  const day = utc ? back.getUTCDate() : back.getDate();
  return Number.isFinite(ms) && day === d ? ms : undefined;
}

/**
 * The form as an EnqueueJob spec, or the errors to show next to the fields.
 * `utc` says which zone the run-at field is in (the reader's display zone).
 */
export function buildSpec(f: EnqueueForm, utc = false): BuildResult {
  const errors: FieldErrors = {};
  const type = f.type === "custom" ? f.customType.trim() : f.type;
  if (!type) errors.customType = "Enter a job type";
  else if (type.length > 128) errors.customType = "At most 128 characters";
  const payload = buildPayload(f, errors);
  const queue = f.queue.trim();
  if (queue && !/^[A-Za-z0-9_.:-]{1,128}$/.test(queue)) errors.queue = "Letters, digits and _ . : - only";
  const priority = intField(f.priority, "priority", errors, { min: -1000, max: 1000, label: "Priority" });
  const maxAttempts = intField(f.maxAttempts, "maxAttempts", errors, { min: 1, max: 1000, label: "Attempts" });
  const delay = intField(f.delaySeconds, "delaySeconds", errors, { min: 0, max: 365 * 86400, label: "Delay" });
  let runAt: number | undefined;
  if (f.runAt.trim()) {
    runAt = parseDateTimeInput(f.runAt, utc);
    if (runAt === undefined) errors.runAt = "Enter a date and time";
    // The server takes one of the two (JobSpec.run_at, JobSpec.delay).
    else if (delay) errors.runAt = "Give a run-at time or a delay, not both";
  }
  // JobSpec.timeout: > 0 and at most 365 days.
  const timeout = intField(f.timeoutSeconds, "timeoutSeconds", errors, { min: 1, max: 365 * 86400, label: "Timeout" });
  const concurrencyKey = f.concurrencyKey.trim();
  const concurrencyLimit = intField(f.concurrencyLimit, "concurrencyLimit", errors, { min: 1, max: 10000, label: "Limit" });
  if (concurrencyLimit && !concurrencyKey) errors.concurrencyLimit = "Give a concurrency key too";
  if (concurrencyKey.length > 128) errors.concurrencyKey = "At most 128 characters";
  const tags = f.tags
    .split(",")
    .map((t) => t.trim())
    .filter(Boolean);
  if (Object.keys(errors).length > 0) return { errors, payload };
  const spec: JobSpecInit = {
    type,
    queue,
    // A JSON value on the wire (google.protobuf.Value), not JSON text.
    payload: fromJson(ValueSchema, payload ?? {}),
    priority: priority ?? 0,
    maxAttempts: maxAttempts ?? 0,
    uniqueKey: f.uniqueKey.trim(),
    concurrencyKey,
    concurrencyLimit: concurrencyKey ? (concurrencyLimit ?? 1) : 0,
    tags,
  };
  if (delay) spec.delay = { seconds: BigInt(delay), nanos: 0 };
  if (runAt !== undefined) spec.runAt = { seconds: BigInt(Math.floor(runAt / 1000)), nanos: 0 };
  if (timeout) spec.timeout = { seconds: BigInt(timeout), nanos: 0 };
  return { spec, payload, errors };
}
