//! Jobs list: filters, search, keyset paging, live updates.
import { useEffect, useRef, useState } from "preact/hooks";
import type { Job } from "../gen/jobq/v1/job_pb";
import { JobState } from "../gen/jobq/v1/job_pb";
import { api } from "../lib/api";
import { filtersFromParams, filtersToParams, hasFilters, listRequest, splitList, type JobFilters } from "../lib/filters";
import { firstLine, formatCount, formatDateTime, formatDuration, shortId, tsMillis } from "../lib/format";
import { useAsync, useLive, useNow } from "../lib/hooks";
import { useQueueStats } from "../lib/stats";
import { liveList } from "../lib/listupdate";
import { href, jobHref, pageFromParams, pageToParams, type PagePosition } from "../lib/router";
import { STATES } from "../lib/states";
import { JOB_TYPES } from "../lib/jobtypes";
import { Empty, ErrorBox, PageHeader, Pager, ProgressBar, Spinner, StateBadge, Time } from "../components/ui";

export const PAGE_SIZE = 50;

export function Jobs({ params }: { params: URLSearchParams }) {
  const filters = filtersFromParams(params);
  const key = JSON.stringify(filtersToParams(filters));
  return (
    <div>
      <PageHeader title="Jobs" sub="Newest first. The list updates live as jobs change." />
      <FilterBar filters={filters} />
      <JobTable key={key} filters={filters} position={pageFromParams(params)} />
    </div>
  );
}

/** Shows the list with other filters (a new history entry, so Back works). */
function go(filters: JobFilters): void {
  location.hash = href("/jobs", filtersToParams(filters));
}

function FilterBar({ filters }: { filters: JobFilters }) {
  const stats = useQueueStats();
  const [search, setSearch] = useState(filters.search);
  const [type, setType] = useState(filters.types.join(", "));
  useEffect(() => setSearch(filters.search), [filters.search]);
  useEffect(() => setType(filters.types.join(", ")), [filters.types.join(",")]);
  const totals = stats.data?.totals ?? [];
  const allCount = totals.reduce((a, c) => a + c.count, 0n);
  const toggleState = (s: JobState, multi: boolean) => {
    const has = filters.states.includes(s);
    const states = multi ? (has ? filters.states.filter((x) => x !== s) : [...filters.states, s]) : has && filters.states.length === 1 ? [] : [s];
    go({ ...filters, states });
  };
  const submit = (e: Event) => {
    e.preventDefault();
    go({ ...filters, search: search.trim(), types: splitList(type) });
  };
  const queues = stats.data?.queues.map((q) => q.queue) ?? [];
  return (
    <div class="filters card">
      <div class="chips" role="group" aria-label="State">
        <button class={`chip ${filters.states.length === 0 ? "active" : ""}`} onClick={() => go({ ...filters, states: [] })}>
          All {stats.data ? <span class="chip-count">{formatCount(allCount)}</span> : null}
        </button>
        {STATES.map((s) => {
          const n = totals.find((c) => c.state === s.state)?.count;
          return (
            <button
              key={s.slug}
              class={`chip chip-${s.tone} ${filters.states.includes(s.state) ? "active" : ""}`}
              title="Click to show only this state; Ctrl/⌘-click to add it"
              onClick={(e) => toggleState(s.state, e.ctrlKey || e.metaKey || e.shiftKey)}
              data-testid={`chip-${s.slug}`}
            >
              <span class={`dot dot-${s.tone}`} />
              {s.label}
              {stats.data ? <span class="chip-count">{formatCount(n ?? 0n)}</span> : null}
            </button>
          );
        })}
      </div>
      <form class="filter-row" onSubmit={submit}>
        <input
          class="input grow"
          type="search"
          placeholder="Search id, type or unique key — or channel = X, url contains Y, tag:z…"
          value={search}
          onInput={(e) => setSearch(e.currentTarget.value)}
          data-testid="search"
        />
        <input
          class="input"
          list="job-types"
          placeholder="Job type"
          aria-label="Job type"
          title="One or more job types, comma-separated"
          value={type}
          onInput={(e) => setType(e.currentTarget.value)}
          onChange={(e) => go({ ...filters, search: search.trim(), types: splitList(e.currentTarget.value) })}
        />
        <datalist id="job-types">
          {JOB_TYPES.filter((t) => t.type !== "custom").map((t) => (
            <option key={t.type} value={t.type} />
          ))}
        </datalist>
        <select
          class="input"
          value={filters.queues.length === 1 ? filters.queues[0] : filters.queues.length ? "*multi" : ""}
          onChange={(e) => {
            const v = e.currentTarget.value;
            if (v !== "*multi") go({ ...filters, queues: v ? [v] : [] });
          }}
          aria-label="Queue"
        >
          <option value="">All queues</option>
          {filters.queues.length > 1 ? <option value="*multi">{filters.queues.join(", ")}</option> : null}
          {[...new Set([...queues, ...filters.queues])].sort().map((q) => (
            <option key={q} value={q}>
              {q}
            </option>
          ))}
        </select>
        <button class="btn" type="submit">
          Search
        </button>
        {hasFilters(filters) ? (
          <a class="btn btn-ghost" href="#/jobs">
            Clear
          </a>
        ) : null}
      </form>
    </div>
  );
}

interface PageState {
  rows: Job[];
  nextToken: string;
  /** Live updates dropped rows off the bottom of the first page: nextToken no longer follows the last row. */
  trimmed: boolean;
  /** Matching jobs created since this (deeper) page was read; it does not show them. */
  arrived: number;
}

/** The page before each page token seen in this tab, for "Newer" (tokens only lead onward). */
const previousPage = new Map<string, PagePosition>();

/** Older jobs follow this page: the server said so, or live updates pushed rows off it. */
function hasOlder(page: PageState | undefined): boolean {
  return !!page && (page.nextToken !== "" || page.trimmed);
}

/** Shows another page of the list (a new history entry, so Back returns to this one). */
function goPage(filters: JobFilters, to: PagePosition): void {
  location.hash = href("/jobs", { ...filtersToParams(filters), ...pageToParams(to) });
}

/** Mounted once per filter (Jobs keys it): page tokens are bound to their filter. */
function JobTable({ filters, position }: { filters: JobFilters; position: PagePosition }) {
  const token = position.cursor;
  const first = position.page === 1;
  const [page, setPage] = useState<PageState | undefined>();
  const [paused, setPaused] = useState(false);
  const now = useNow(5000);
  const loaded = useAsync(
    async (signal) => {
      const res = await api().listJobs(listRequest(filters, token, PAGE_SIZE), { signal });
      return { rows: res.jobs, nextToken: res.nextPageToken, trimmed: false, arrived: 0 };
    },
    [token],
  );
  useEffect(() => {
    if (loaded.data) setPage(loaded.data);
  }, [loaded.data]);
  const pageRef = useRef(page);
  pageRef.current = page;
  // A new page starts at the top of the table.
  const mounted = useRef(false);
  useEffect(() => {
    if (mounted.current) window.scrollTo({ top: 0 });
    else mounted.current = true;
  }, [token]);
  const pausedRef = useRef(paused);
  pausedRef.current = paused;
  useLive(
    liveList(filters, {
      rows: () => (pausedRef.current ? undefined : pageRef.current?.rows),
      shape: () => ({ first, hasNext: hasOlder(pageRef.current), maxRows: PAGE_SIZE }),
      update: (r) => {
        const cur = pageRef.current;
        if (!cur) return;
        setPage({ ...cur, rows: r.rows, trimmed: cur.trimmed || r.dropped > 0, arrived: cur.arrived + r.arrived });
      },
      reload: loaded.reload,
    }),
  );

  const rows = page?.rows ?? [];
  return (
    <div class="card">
      <div class="table-toolbar">
        <div class="muted small grow">
          {page && page.arrived > 0 ? (
            <span data-testid="jobs-arrived">
              {formatCount(page.arrived)} newer job{page.arrived === 1 ? "" : "s"} arrived.{" "}
              <a href={href("/jobs", filtersToParams(filters))}>Show the newest</a>
            </span>
          ) : null}
        </div>
        <label class="toggle small">
          <input type="checkbox" checked={!paused} onChange={(e) => {
            setPaused(!e.currentTarget.checked);
            if (e.currentTarget.checked) loaded.reload();
          }} />
          Live updates
        </label>
      </div>
      {loaded.error ? <ErrorBox message={loaded.error} onRetry={loaded.reload} /> : null}
      {!page && loaded.loading ? <Spinner /> : null}
      {page && rows.length === 0 ? (
        <Empty title={hasFilters(filters) ? "No jobs match these filters" : "No jobs yet"}>
          {hasFilters(filters) ? <a href="#/jobs">Clear the filters</a> : <a href="#/enqueue">Enqueue a job</a>}
        </Empty>
      ) : null}
      {rows.length > 0 ? <JobRows rows={rows} now={now} /> : null}
      {page ? (
        <Pager
          page={position.page}
          shown={rows.length}
          hasPrev={!first}
          hasNext={hasOlder(page)}
          onFirst={() => goPage(filters, { page: 1, cursor: "" })}
          onPrev={() => goPage(filters, previousPage.get(token) ?? { page: 1, cursor: "" })}
          onNext={async () => {
            let next = page.nextToken;
            if (first && page.trimmed) {
              // The live first page dropped its oldest rows, so the token it
              // was read with would skip them: ask for the first page afresh.
              try {
                next = (await api().listJobs(listRequest(filters, "", PAGE_SIZE))).nextPageToken;
              } catch {
                // Keep the old token: some rows skipped beats a dead button.
              }
              if (!next) return;
            }
            previousPage.set(next, position);
            goPage(filters, { page: position.page + 1, cursor: next });
          }}
        />
      ) : null}
    </div>
  );
}

export function JobRows({
  rows,
  now,
  selected,
  onSelect,
  died,
}: {
  rows: Job[];
  now: number;
  selected?: Set<string>;
  onSelect?: (id: string, on: boolean) => void;
  /** The dead-letter list: when each job died instead of when it was created. */
  died?: boolean;
}) {
  return (
    <div class="table-wrap">
      <table class="table cards" data-testid="jobs-table">
        <thead>
          <tr>
            {selected ? (
              <th class="check">
                <input
                  type="checkbox"
                  aria-label="Select all on this page"
                  checked={rows.length > 0 && rows.every((r) => selected.has(r.id))}
                  onChange={(e) => {
                    const on = e.currentTarget.checked;
                    for (const r of rows) onSelect?.(r.id, on);
                  }}
                />
              </th>
            ) : null}
            <th>Job</th>
            <th>Type</th>
            <th>Queue</th>
            <th>State</th>
            <th class="num">Attempt</th>
            <th>Summary</th>
            <th>{died ? "Died" : "Created"}</th>
            <th>Detail</th>
          </tr>
        </thead>
        <tbody>
          {rows.map((j) => (
            <tr key={j.id} data-job-id={j.id}>
              {selected ? (
                <td class="check" data-label="Select">
                  <input
                    type="checkbox"
                    aria-label={`Select ${j.id}`}
                    checked={selected.has(j.id)}
                    onChange={(e) => onSelect?.(j.id, e.currentTarget.checked)}
                  />
                </td>
              ) : null}
              <td class="mono" data-label="Job">
                <a href={jobHref(j.id)} title={j.id}>
                  {shortId(j.id)}
                </a>
              </td>
              <td data-label="Type">
                <span class="type">{j.type}</span>
              </td>
              <td data-label="Queue">{j.queue || "default"}</td>
              <td data-label="State">
                <StateBadge state={j.state} cancelRequested={j.cancelRequested} />
              </td>
              <td class="num" data-label="Attempt">
                {j.attempt}
                <span class="muted">/{j.maxAttempts}</span>
              </td>
              <td class="ellipsis summary-cell" title={j.summary} data-testid="summary" data-label="Summary">
                {j.summary || <span class="muted">—</span>}
              </td>
              {died ? (
                <td data-testid="died" data-label="Died">
                  <Time ms={tsMillis(j.finishedAt)} now={now} />
                  <div class="muted small">{j.finishedAt ? formatDateTime(tsMillis(j.finishedAt)) : ""}</div>
                </td>
              ) : (
                <td data-label="Created">
                  <Time ms={tsMillis(j.createdAt)} now={now} />
                </td>
              )}
              <td class="detail-cell" data-label="Detail">
                <RowDetail job={j} now={now} />
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function RowDetail({ job, now }: { job: Job; now: number }) {
  switch (job.state) {
    case JobState.RUNNING:
      return (
        <div class="row-progress">
          <ProgressBar percent={job.progressPercent} />
          <span class="muted small ellipsis">
            {job.progressPercent}%{job.progressMessage ? ` · ${job.progressMessage}` : ""}
          </span>
        </div>
      );
    case JobState.SCHEDULED:
    case JobState.RETRYING:
      return (
        <span class="muted small">
          runs <Time ms={tsMillis(job.runAt)} now={now} />
          {job.lastError ? <span class="error-text"> · {firstLine(job.lastError, 80)}</span> : null}
        </span>
      );
    case JobState.DEAD:
    case JobState.CANCELLED:
      if (!job.lastError) return <span class="muted small">—</span>;
      return (
        <span class="error-text small ellipsis" title={job.lastError}>
          {firstLine(job.lastError, 100)}
        </span>
      );
    case JobState.SUCCEEDED:
      return (
        <span class="muted small">
          finished <Time ms={tsMillis(job.finishedAt)} now={now} />
        </span>
      );
    case JobState.QUEUED: {
      const waited = now - (tsMillis(job.runAt) ?? tsMillis(job.createdAt) ?? now);
      return <span class="muted small">waiting {waited < 1000 ? "<1s" : formatDuration(waited)}</span>;
    }
    case JobState.BLOCKED:
      return <span class="muted small">waits for {job.dependsOn.length} job{job.dependsOn.length === 1 ? "" : "s"}</span>;
    default:
      return <span class="muted small">{job.tags.join(", ")}</span>;
  }
}
