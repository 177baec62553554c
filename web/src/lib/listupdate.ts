//! Applies live WatchJobs events to a page of jobs so the list changes in
//! place without a reload, keeping keyset paging intact.
import { JobEventType, type JobEvent } from "../gen/jobq/v1/event_pb";
import type { Job } from "../gen/jobq/v1/job_pb";
import { jobMatches, type JobFilters } from "./filters";
import type { LiveListener } from "./live";

/** Orders ids the way the server does (newest first = greatest first). */
export function compareIds(a: string, b: string): number {
  // Numeric ids of different lengths compare by length first; UUIDv7 ids
  // all have the same length, so this is plain string order for them.
  if (a.length !== b.length) return a.length - b.length;
  return a < b ? -1 : a > b ? 1 : 0;
}

export interface PageShape {
  /** This is the first page (nothing newer comes before it). */
  first: boolean;
  /** There is a next page (older jobs after the last row). */
  hasNext: boolean;
  /**
   * The most rows the first page shows. It stays live for good: it keeps
   * the newest maxRows rows and drops the oldest as new ones arrive. A
   * deeper page takes no new jobs (those newer than its top are only
   * counted), only older ones that come to match inside its id range, so it
   * has no cap: dropping a row there would lose it from both pages.
   */
  maxRows: number;
  /**
   * The list is most recently finished first (JOB_ORDER_FINISHED_DESC, the
   * dead letter): a job that comes in has just finished, so it goes on top
   * of the first page and on no other.
   */
  finishedFirst?: boolean;
}

export interface ApplyResult {
  rows: Job[];
  changed: boolean;
  /** Matching jobs that arrived but are not shown (newer than a deeper page's top). */
  arrived: number;
  /** Rows that left the bottom of a full first page to make room at the top. */
  dropped: number;
}

/**
 * A new page after one event. A row whose job no longer matches the
 * filters leaves; a matching job not shown yet comes in at its place when
 * its id falls inside the range this page covers; a deleted job leaves.
 */
export function applyEvent(rows: Job[], ev: JobEvent, filters: JobFilters, shape: PageShape): ApplyResult {
  const job = ev.job;
  const unchanged = { rows, changed: false, arrived: 0, dropped: 0 };
  if (!job) return unchanged;
  const idx = rows.findIndex((r) => r.id === job.id);
  if (ev.type === JobEventType.DELETED || !jobMatches(job, filters, idx >= 0)) {
    if (idx < 0) return unchanged;
    return { rows: rows.filter((_, i) => i !== idx), changed: true, arrived: 0, dropped: 0 };
  }
  if (idx >= 0) {
    const next = rows.slice();
    // Lists and events are both in the BASIC view: the event has it all.
    next[idx] = job;
    return { rows: next, changed: true, arrived: 0, dropped: 0 };
  }
  if (shape.finishedFirst) {
    // A deeper page stays put and only counts what arrived on top.
    if (!shape.first) return { ...unchanged, arrived: 1 };
    const next = [job, ...rows];
    const dropped = Math.max(0, next.length - shape.maxRows);
    if (dropped > 0) next.length = shape.maxRows;
    return { rows: next, changed: true, arrived: 0, dropped };
  }
  const firstRow = rows[0];
  const lastRow = rows[rows.length - 1];
  const belowTop = shape.first || (firstRow !== undefined && compareIds(job.id, firstRow.id) < 0);
  // A deeper page stays put; a new job newer than its top is only counted.
  if (!belowTop) return ev.type === JobEventType.CREATED ? { ...unchanged, arrived: 1 } : unchanged;
  const aboveBottom = !shape.hasNext || (lastRow !== undefined && compareIds(job.id, lastRow.id) > 0);
  if (!aboveBottom) return unchanged;
  let at = rows.findIndex((r) => compareIds(job.id, r.id) > 0);
  if (at < 0) at = rows.length;
  // A full first page takes only jobs newer than its oldest row, which then leaves.
  if (shape.first && rows.length >= shape.maxRows && at >= rows.length) return unchanged;
  const next = rows.slice();
  next.splice(at, 0, job);
  const dropped = shape.first ? Math.max(0, next.length - shape.maxRows) : 0;
  if (dropped > 0) next.length = shape.maxRows;
  return { rows: next, changed: true, arrived: 0, dropped };
}

/** Applies a batch of events in order. */
export function applyEvents(rows: Job[], events: JobEvent[], filters: JobFilters, shape: PageShape): ApplyResult {
  let changed = false;
  let arrived = 0;
  let dropped = 0;
  for (const ev of events) {
    const r = applyEvent(rows, ev, filters, shape);
    rows = r.rows;
    changed ||= r.changed;
    arrived += r.arrived;
    dropped += r.dropped;
  }
  return { rows, changed, arrived, dropped };
}

/** What a list page offers the live stream. */
export interface LivePage {
  /** The rows shown, or undefined while nothing is loaded or live updates are off. */
  rows(): Job[] | undefined;
  /** Where the page stands in the list, for placing new jobs. */
  shape(): PageShape;
  /** Shows the rows after a batch of events. */
  update(result: ApplyResult): void;
  /** Reads the page again (same filters, same page token). */
  reload(): void;
}

/**
 * The live listener of a filtered list page: events change its rows in
 * place; after a (re)connect or a lag (events were dropped) the page is
 * read again instead, as it may have missed changes.
 */
export function liveList(filters: JobFilters, page: LivePage): LiveListener {
  return {
    events(evs) {
      const rows = page.rows();
      if (!rows) return;
      const r = applyEvents(rows, evs, filters, page.shape());
      if (r.changed || r.arrived > 0) page.update(r);
    },
    resync() {
      if (page.rows()) page.reload();
    },
  };
}
