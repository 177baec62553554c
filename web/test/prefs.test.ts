import { afterEach, describe, expect, it } from "vitest";
import { formatClock, formatDateTime, formatDateTimeZone, setDisplayUtc, zoneName } from "../src/lib/format";
import { parsePrefs, prefs, setPrefs } from "../src/lib/prefs";

const ms = Date.UTC(2026, 10, 28, 7, 5, 9, 42);

describe("display preferences", () => {
  afterEach(() => setDisplayUtc(false));

  it("reads stored preferences, falling back on anything unknown", () => {
    expect(parsePrefs(null)).toEqual({ zone: "local", theme: "system" });
    expect(parsePrefs("not json")).toEqual({ zone: "local", theme: "system" });
    expect(parsePrefs('{"zone":"utc","theme":"dark"}')).toEqual({ zone: "utc", theme: "dark" });
    expect(parsePrefs('{"zone":"mars","theme":7}')).toEqual({ zone: "local", theme: "system" });
  });

  it("shows absolute times in UTC once the reader picks it, and names the zone", () => {
    setPrefs({ zone: "utc" });
    expect(prefs().zone).toBe("utc");
    expect(formatDateTime(ms)).toBe("2026-11-28 07:05:09");
    expect(formatClock(ms)).toBe("07:05:09.042");
    expect(formatDateTimeZone(ms)).toBe("2026-11-28 07:05:09 UTC");
    setPrefs({ zone: "local" });
    expect(formatDateTimeZone(ms)).toBe(`${formatDateTime(ms, false)} ${zoneName(false, ms)}`);
  });

  it("names the local zone by its offset", () => {
    expect(zoneName(true)).toBe("UTC");
    expect(zoneName(false, ms)).toMatch(/^UTC([+-]\d{1,2}(:\d{2})?)?$/);
  });
});
