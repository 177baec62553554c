//! Job list filters: URL parameters ⇄ filters → ListJobsRequest, and the
//! client-side check used to apply live events to a filtered list.
import { create } from "@bufbuild/protobuf";
import {
  ListJobsRequestSchema,
  PayloadFilterSchema,
  PayloadMatch,
  type ListJobsRequest,
  type PayloadFilter,
} from "../gen/jobq/v1/queue_service_pb";
import { JobView, type Job, type JobState } from "../gen/jobq/v1/job_pb";
import { stateFromSlug, stateInfo } from "./states";

export interface JobFilters {
  states: JobState[];
  types: string[];
  queues: string[];
  /**
   * The search box as typed: `field = value`, `field contains value` and
   * `tag:x` terms (see parseSearch), the rest a substring of id, type or
   * unique key (the server's ListJobsRequest.search).
   */
  search: string;
}

/** The search box, split into what ListJobs filters by. */
export interface ParsedSearch {
  /** Free text: a substring of id, type or unique key. */
  text: string;
  /** The job has every one of these tags. */
  tags: string[];
  /** The payload matches every one of these. */
  payload: { field: string; match: PayloadMatch; value: string }[];
}

// `field = value` / `field contains value` (value a word or "quoted"), or
// `tag:x`; the optional AND between terms is dropped.
const TERM =
  /(?:^|\s)(?:tag:(\S+)|([A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)\s*(=|\bcontains\b)\s*(?:"([^"]*)"|(\S+)))(?=\s|$)/gi;

/**
 * Splits the search box into terms, combined with AND: `channel = Kurzgesagt`
 * (the field's whole value), `url contains LongLong4K` (a substring, any
 * case), `tag:music`; a value with spaces goes in double quotes. Whatever is
 * not a term stays free text, as before.
 */
export function parseSearch(input: string): ParsedSearch {
  const tags: string[] = [];
  const payload: ParsedSearch["payload"] = [];
  const rest = input.replace(TERM, (_m, tag?: string, field?: string, op?: string, quoted?: string, word?: string) => {
    if (tag !== undefined) {
      if (!tags.includes(tag)) tags.push(tag);
    } else if (field !== undefined && op !== undefined) {
      payload.push({
        field,
        match: op === "=" ? PayloadMatch.EQUALS : PayloadMatch.CONTAINS,
        value: quoted ?? word ?? "",
      });
    }
    return " ";
  });
  const text = rest
    .split(/\s+/)
    .filter((word) => word && word.toUpperCase() !== "AND")
    .join(" ");
  return { text, tags, payload };
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
  extra: Partial<Pick<ListJobsRequest, "parentId" | "order">> = {},
): ListJobsRequest {
  const parsed = parseSearch(f.search);
  return create(ListJobsRequestSchema, {
    states: [...f.states],
    types: [...f.types],
    queues: [...f.queues],
    search: parsed.text,
    tags: parsed.tags,
    payloadFilters: parsed.payload.map((p): PayloadFilter => create(PayloadFilterSchema, p)),
    pageSize,
    pageToken,
    view: JobView.BASIC,
    ...extra,
  });
}

/**
 * Whether a job (as a live event shows it) belongs in a list with these
 * filters. Events carry no payload: a job already `listed` matched the
 * payload terms (payloads never change); another one is left out until the
 * list is read again.
 */
export function jobMatches(job: Job, f: JobFilters, listed = false): boolean {
  if (f.states.length > 0 && !f.states.includes(job.state)) return false;
  if (f.types.length > 0 && !f.types.includes(job.type)) return false;
  if (f.queues.length > 0 && !f.queues.includes(job.queue || "default")) return false;
  const parsed = parseSearch(f.search);
  if (parsed.text) {
    const s = parsed.text;
    if (!job.id.includes(s) && !job.type.includes(s) && !job.uniqueKey.includes(s)) return false;
  }
  if (!parsed.tags.every((tag) => job.tags.includes(tag))) return false;
  if (parsed.payload.length > 0 && !listed) return false;
  return true;
}
