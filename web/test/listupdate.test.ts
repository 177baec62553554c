import { describe, expect, it } from "vitest";
import { JobEventType } from "../src/gen/jobq/v1/event_pb";
import { JobState } from "../src/gen/jobq/v1/job_pb";
import { EMPTY_FILTERS } from "../src/lib/filters";
import { applyEvent, applyEvents, compareIds } from "../src/lib/listupdate";
import { event, job } from "./helpers";

const first = { first: true, hasNext: true, maxRows: 10 };
const ids = (rows: { id: string }[]) => rows.map((r) => r.id);

describe("live list updates", () => {
  it("orders ids like the server (numeric-safe)", () => {
    expect(compareIds("b", "a")).toBeGreaterThan(0);
    expect(compareIds("10", "9")).toBeGreaterThan(0);
    expect(compareIds("x", "x")).toBe(0);
  });

  it("puts a new job at the top of the first page", () => {
    const rows = [job("c"), job("b")];
    const r = applyEvent(rows, event(JobEventType.CREATED, job("d")), EMPTY_FILTERS, first);
    expect(ids(r.rows)).toEqual(["d", "c", "b"]);
    expect(r.changed).toBe(true);
  });

  it("does not put newer jobs on a later page", () => {
    const rows = [job("c"), job("b")];
    const r = applyEvent(rows, event(JobEventType.CREATED, job("d")), EMPTY_FILTERS, { ...first, first: false });
    expect(r.changed).toBe(false);
  });

  it("updates a shown job in place", () => {
    const rows = [job("c"), job("b")];
    const r = applyEvent(rows, event(JobEventType.PROGRESS, job("b", { state: JobState.RUNNING, progressPercent: 40 })), EMPTY_FILTERS, first);
    expect(r.rows[1]?.progressPercent).toBe(40);
    expect(ids(r.rows)).toEqual(["c", "b"]);
  });

  it("drops a job that leaves the filter, and one that is deleted", () => {
    const dead = { ...EMPTY_FILTERS, states: [JobState.DEAD] };
    const rows = [job("c", { state: JobState.DEAD }), job("b", { state: JobState.DEAD })];
    let r = applyEvent(rows, event(JobEventType.STATE_CHANGED, job("c", { state: JobState.QUEUED })), dead, first);
    expect(ids(r.rows)).toEqual(["b"]);
    r = applyEvent(r.rows, event(JobEventType.DELETED, job("b", { state: JobState.DEAD })), dead, first);
    expect(ids(r.rows)).toEqual([]);
  });

  it("brings in an older job that now matches, at its place in the page", () => {
    const dead = { ...EMPTY_FILTERS, states: [JobState.DEAD] };
    const rows = [job("e", { state: JobState.DEAD }), job("b", { state: JobState.DEAD })];
    const r = applyEvent(rows, event(JobEventType.STATE_CHANGED, job("c", { state: JobState.DEAD })), dead, first);
    expect(ids(r.rows)).toEqual(["e", "c", "b"]);
    // Older than the last row while a next page exists: it belongs there.
    const r2 = applyEvent(rows, event(JobEventType.STATE_CHANGED, job("a", { state: JobState.DEAD })), dead, first);
    expect(r2.changed).toBe(false);
    // On the last page it comes in at the end.
    const r3 = applyEvent(rows, event(JobEventType.STATE_CHANGED, job("a", { state: JobState.DEAD })), dead, { ...first, hasNext: false });
    expect(ids(r3.rows)).toEqual(["e", "b", "a"]);
  });

  it("ignores events of jobs that do not match", () => {
    const r = applyEvent([job("b")], event(JobEventType.CREATED, job("c", { type: "other" })), { ...EMPTY_FILTERS, types: ["noop"] }, first);
    expect(r.changed).toBe(false);
  });

  it("keeps the first page live for good: the newest rows stay, the oldest leave", () => {
    let rows = [job("0002"), job("0001")];
    const shape = { ...first, maxRows: 3 };
    // Far more arrivals than the page holds (the old cap stopped here).
    for (let i = 3; i <= 500; i++) {
      const r = applyEvent(rows, event(JobEventType.CREATED, job(String(i).padStart(4, "0"))), EMPTY_FILTERS, shape);
      expect(r.changed).toBe(true);
      expect(r.dropped).toBe(i > 3 ? 1 : 0);
      rows = r.rows;
    }
    expect(ids(rows)).toEqual(["0500", "0499", "0498"]);
    // A full page does not take a job older than its oldest row.
    const r = applyEvent(rows, event(JobEventType.STATE_CHANGED, job("0100")), EMPTY_FILTERS, { ...shape, hasNext: false });
    expect(r.changed).toBe(false);
  });

  it("keeps a deeper page put and counts the jobs that arrived", () => {
    const rows = [job("c"), job("b")];
    const deeper = { ...first, first: false };
    const r = applyEvents(
      rows,
      [event(JobEventType.CREATED, job("d")), event(JobEventType.CREATED, job("e")), event(JobEventType.STATE_CHANGED, job("e", { state: JobState.RUNNING }))],
      EMPTY_FILTERS,
      deeper,
    );
    expect(ids(r.rows)).toEqual(["c", "b"]);
    expect(r.changed).toBe(false);
    expect(r.arrived).toBe(2);
    // A job inside its range that comes to match joins it, even when full:
    // dropping a row would lose it from this page and the next.
    const full = applyEvent([job("e"), job("c")], event(JobEventType.STATE_CHANGED, job("d")), EMPTY_FILTERS, { ...deeper, maxRows: 2 });
    expect(ids(full.rows)).toEqual(["e", "d", "c"]);
    expect(full.dropped).toBe(0);
  });

  it("puts a job that just finished on top of a most-recently-finished-first list", () => {
    const rows = [job("c"), job("b")];
    const shape = { first: true, hasNext: true, maxRows: 10, finishedFirst: true };
    // An older id than every row: by id it would go last; it just died, so it goes first.
    const r = applyEvent(rows, event(JobEventType.STATE_CHANGED, job("a")), EMPTY_FILTERS, shape);
    expect(ids(r.rows)).toEqual(["a", "c", "b"]);
    expect(applyEvent(rows, event(JobEventType.STATE_CHANGED, job("a")), EMPTY_FILTERS, { ...shape, first: false }).changed).toBe(false);
  });
});
