//! Job list filters: URL parameters ⇄ filters → ListJobsRequest, and the
//! client-side check used to apply live events to a filtered list.
import { create } from "@bufbuild/protobuf";
import { ListJobsRequestSchema, type ListJobsRequest } from "../gen/jobq/v1/queue_service_pb";
import { JobView, type Job, type JobState } from "../gen/jobq/v1/job_pb";
import { stateFromSlug, stateInfo } from "./states";

export interface JobFilters {
  states: JobState[];
  types: string[];
  queues: string[];
  /** Substring of id, type or unique key (the server's ListJobsRequest.search). */
  search: string;
}

export const EMPTY_FILTERS: JobFilters = { states: [], types: [], queues: [], search: "" };

/** Splits "a, b,,c" into ["a","b","c"], dropping duplicates. */
export function splitList(text: string | null | undefined): string[] {
  if (!text) return [];
  const out: string[] = [];
  for (const part of text.split(",")) {
    const v = part.trim();
    if (v && !out.includes(v)) out.push(v);
  }
  return out;
}

/** Reads filters from URL parameters: state=dead,queued&type=x&queue=y&q=text. */
export function filtersFromParams(params: URLSearchParams): JobFilters {
  const states: JobState[] = [];
  for (const slug of splitList(params.get("state"))) {
    const s = stateFromSlug(slug);
    if (s !== undefined && !states.includes(s)) states.push(s);
  }
  return {
    states,
    types: splitList(params.get("type")),
    queues: splitList(params.get("queue")),
    search: (params.get("q") ?? "").trim(),
  };
}

/** The URL parameters for filters (empty ones left out). */
export function filtersToParams(f: JobFilters): Record<string, string | undefined> {
  return {
    state: f.states.map((s) => stateInfo(s).slug).join(",") || undefined,
    type: f.types.join(",") || undefined,
    queue: f.queues.join(",") || undefined,
    q: f.search || undefined,
  };
}

export function hasFilters(f: JobFilters): boolean {
  return f.states.length > 0 || f.types.length > 0 || f.queues.length > 0 || f.search !== "";
}

/**
 * One page of ListJobs for these filters, in the BASIC view (lists show no
 * payloads or results). A page token is bound to the filters it came with:
 * when they change, start again from the first page ("").
 */
export function listRequest(
  f: JobFilters,
  pageToken = "",
  pageSize = 50,
  extra: Partial<Pick<ListJobsRequest, "parentId">> = {},
): ListJobsRequest {
  return create(ListJobsRequestSchema, {
    states: [...f.states],
    types: [...f.types],
    queues: [...f.queues],
    search: f.search,
    pageSize,
    pageToken,
    view: JobView.BASIC,
    ...extra,
  });
}

/** Whether a job (as a live event shows it) belongs in a list with these filters. */
export function jobMatches(job: Job, f: JobFilters): boolean {
  if (f.states.length > 0 && !f.states.includes(job.state)) return false;
  if (f.types.length > 0 && !f.types.includes(job.type)) return false;
  if (f.queues.length > 0 && !f.queues.includes(job.queue || "default")) return false;
  if (f.search) {
    const s = f.search;
    if (!job.id.includes(s) && !job.type.includes(s) && !job.uniqueKey.includes(s)) return false;
  }
  return true;
}
