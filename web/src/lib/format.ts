//! Formatting of times, durations, counts, ids and JSON for display.
import { toJson, type JsonObject, type JsonValue } from "@bufbuild/protobuf";
import { ValueSchema, type Value } from "@bufbuild/protobuf/wkt";

/** A protobuf Timestamp or Duration (or anything shaped like one). */
export interface SecondsNanos {
  seconds: bigint;
  nanos: number;
}

/** Milliseconds since the epoch, or undefined for an unset timestamp. */
export function tsMillis(ts: SecondsNanos | undefined): number | undefined {
  if (!ts) return undefined;
  return Number(ts.seconds) * 1000 + Math.floor(ts.nanos / 1e6);
}

/** Milliseconds of a protobuf duration, or undefined when unset. */
export function durationMillis(d: SecondsNanos | undefined): number | undefined {
  if (!d) return undefined;
  return Number(d.seconds) * 1000 + Math.floor(d.nanos / 1e6);
}

/**
 * A duration for people: "850ms", "4.2s", "3m 05s", "2h 07m", "3d 4h".
 * Negative values are shown as their absolute value.
 */
export function formatDuration(ms: number | undefined): string {
  if (ms === undefined || !Number.isFinite(ms)) return "—";
  ms = Math.abs(ms);
  if (ms < 1000) return `${Math.round(ms)}ms`;
  const s = ms / 1000;
  if (s < 10) return `${s.toFixed(1)}s`;
  if (s < 60) return `${Math.floor(s)}s`;
  const totalSeconds = Math.floor(s);
  const m = Math.floor(totalSeconds / 60);
  if (m < 60) return `${m}m ${pad2(totalSeconds % 60)}s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h}h ${pad2(m % 60)}m`;
  const d = Math.floor(h / 24);
  return `${d}d ${h % 24}h`;
}

/** How long a queue's oldest ready job has waited; "—" when none waits. */
export function formatLatency(age: SecondsNanos | undefined): string {
  const ms = durationMillis(age) ?? 0;
  return ms > 0 ? formatDuration(ms) : "—";
}

/** "just now", "12s ago", "5m ago", "in 3h" relative to now. */
export function formatRelative(ms: number | undefined, now: number): string {
  if (ms === undefined) return "—";
  const delta = now - ms;
  if (Math.abs(delta) < 2000) return "just now";
  const text = formatCoarse(Math.abs(delta));
  return delta > 0 ? `${text} ago` : `in ${text}`;
}

/** One unit, rounded down: "12s", "5m", "3h", "2d". */
function formatCoarse(ms: number): string {
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h`;
  return `${Math.floor(h / 24)}d`;
}

function pad2(n: number): string {
  return n < 10 ? `0${n}` : String(n);
}

/** Whether absolute times are shown in UTC (else in the browser's zone); see prefs.ts. */
let displayUtc = false;

export function setDisplayUtc(utc: boolean): void {
  displayUtc = utc;
}

/**
 * The name of the zone times are shown in: "UTC", or the browser's zone as
 * an offset ("GMT+1", "UTC+05:30" …) at the given instant (offsets move with
 * daylight saving).
 */
export function zoneName(utc = displayUtc, at: number = Date.now()): string {
  if (utc) return "UTC";
  try {
    const part = new Intl.DateTimeFormat(undefined, { timeZoneName: "shortOffset" })
      .formatToParts(new Date(at))
      .find((p) => p.type === "timeZoneName");
    if (part?.value) return part.value === "GMT" ? "UTC" : part.value.replace(/^GMT/, "UTC");
  } catch {
    // Older engines without shortOffset: fall through to the offset by hand.
  }
  const off = -new Date(at).getTimezoneOffset();
  const sign = off < 0 ? "-" : "+";
  const a = Math.abs(off);
  return off === 0 ? "UTC" : `UTC${sign}${pad2(Math.floor(a / 60))}:${pad2(a % 60)}`;
}

/** "2026-11-28 17:59:03 UTC+1": an absolute time with its zone named. */
export function formatDateTimeZone(ms: number | undefined, utc = displayUtc): string {
  if (ms === undefined) return "—";
  return `${formatDateTime(ms, utc)} ${zoneName(utc, ms)}`;
}

/**
 * "2026-11-28 17:59:03" in the display zone (local by default, UTC when the
 * reader chose it; tests pass utc = true so they do not depend on the
 * machine's zone).
 */
export function formatDateTime(ms: number | undefined, utc = displayUtc): string {
  if (ms === undefined) return "—";
  const d = new Date(ms);
  const [y, mo, da, h, mi, s] = utc
    ? [d.getUTCFullYear(), d.getUTCMonth() + 1, d.getUTCDate(), d.getUTCHours(), d.getUTCMinutes(), d.getUTCSeconds()]
    : [d.getFullYear(), d.getMonth() + 1, d.getDate(), d.getHours(), d.getMinutes(), d.getSeconds()];
  return `${y}-${pad2(mo)}-${pad2(da)} ${pad2(h)}:${pad2(mi)}:${pad2(s)}`;
}

/** "17:59:03.120" — for log lines. */
export function formatClock(ms: number | undefined, utc = displayUtc): string {
  if (ms === undefined) return "";
  const d = new Date(ms);
  const [h, mi, s, milli] = utc
    ? [d.getUTCHours(), d.getUTCMinutes(), d.getUTCSeconds(), d.getUTCMilliseconds()]
    : [d.getHours(), d.getMinutes(), d.getSeconds(), d.getMilliseconds()];
  return `${pad2(h)}:${pad2(mi)}:${pad2(s)}.${String(milli).padStart(3, "0")}`;
}

/** 1234567 → "1,234,567" (fixed separators, whatever the locale). */
export function formatCount(n: number | bigint): string {
  const neg = n < 0;
  const digits = (neg ? -BigInt(n) : BigInt(n)).toString();
  const grouped = digits.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return neg ? `-${grouped}` : grouped;
}

/** 1234567 → "1.2M", 12345 → "12.3k", 999 → "999". */
export function formatCompact(n: number): string {
  const a = Math.abs(n);
  if (a < 1000) return String(Math.round(n * 100) / 100);
  if (a < 1e6) return `${trim1(n / 1e3)}k`;
  if (a < 1e9) return `${trim1(n / 1e6)}M`;
  return `${trim1(n / 1e9)}B`;
}

function trim1(x: number): string {
  const r = Math.abs(x) >= 100 ? Math.round(x) : Math.round(x * 10) / 10;
  return String(r);
}

/** Jobs per second: "0", "0.25", "3.4", "120". */
export function formatRate(perSecond: number): string {
  if (perSecond === 0) return "0";
  if (perSecond < 1) return perSecond.toFixed(2);
  if (perSecond < 10) return perSecond.toFixed(1);
  return formatCompact(Math.round(perSecond));
}

/**
 * A short form of a job id for tables. UUIDv7 ids share their leading
 * (time) digits for jobs made close together, so the tail is what tells
 * them apart.
 */
export function shortId(id: string): string {
  if (id.length <= 13) return id;
  return `…${id.slice(-12)}`;
}

/**
 * The heading of one entry of a job's log. Log lines carry the entry's
 * history position (Attempt.seq), which is not the attempt number once a
 * job was released or retried (RetryJob starts the count again); `numbers`
 * maps seq → number from the job's attempts. Entries that are no attempt (a
 * cancel or a requeue, `seq` 0) have no heading.
 */
export function logEntryLabel(seq: number, numbers?: ReadonlyMap<number, number>): string {
  if (seq <= 0) return "";
  const n = numbers?.get(seq);
  return n === undefined ? `Attempt #${seq}` : `Attempt ${n} · #${seq}`;
}

/** A worker's reported version: "v1.2.3" for a bare number, else as sent ("jobq-worker/0.1.0"). */
export function formatVersion(version: string): string {
  const v = version.trim();
  return /^v?\d/.test(v) ? `v${v.replace(/^v/, "")}` : v;
}

/**
 * The JSON a protobuf Value holds (a payload or a result), or undefined when
 * the field is unset (not in the view that was read, or none).
 */
export function valueJson(value: Value | undefined): JsonValue | undefined {
  if (!value) return undefined;
  try {
    return toJson(ValueSchema, value);
  } catch {
    // A Value without a kind is not valid JSON; show it as absent.
    return undefined;
  }
}

/** A Value as JSON pretty-printed with two spaces; "" when unset. */
export function prettyValue(value: Value | undefined): string {
  const json = valueJson(value);
  return json === undefined ? "" : JSON.stringify(json, null, 2);
}

/** Structured fields of a log line, compact: `a=1 b="two" c={"d":true}`. */
export function formatFields(fields: JsonObject | undefined): string {
  if (!fields) return "";
  return Object.entries(fields)
    .map(([k, v]) => `${k}=${JSON.stringify(v)}`)
    .join(" ");
}

/** The first line of a (possibly long, multi-line) error, capped. */
export function firstLine(text: string, max = 160): string {
  const line = text.split("\n", 1)[0] ?? "";
  return line.length > max ? `${line.slice(0, max - 1)}…` : line;
}

/** Progress clamped to 0..100. */
export function clampPercent(p: number): number {
  if (!Number.isFinite(p)) return 0;
  return Math.max(0, Math.min(100, Math.round(p)));
}
