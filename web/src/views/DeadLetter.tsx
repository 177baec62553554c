//! Dead-letter queue: dead jobs, paged; select and requeue or delete in bulk.
import { create } from "@bufbuild/protobuf";
import { useEffect, useRef, useState } from "preact/hooks";
import { JobState, type Job } from "../gen/jobq/v1/job_pb";
import { JobSelectorSchema } from "../gen/jobq/v1/queue_service_pb";
import { api, errorMessage } from "../lib/api";
import { listRequest, type JobFilters } from "../lib/filters";
import { JobOrder } from "../gen/jobq/v1/queue_service_pb";
import { formatCount } from "../lib/format";
import { useAsync, useLive, useNow } from "../lib/hooks";
import { useQueueStats } from "../lib/stats";
import { liveList } from "../lib/listupdate";
import { confirmAction, toast } from "../components/overlay";
import { Empty, ErrorBox, PageHeader, Pager, Spinner } from "../components/ui";
import { JobRows } from "./Jobs";

const PAGE_SIZE = 50;
/** Largest selector limit the server takes in one bulk call. */
const BULK_LIMIT = 10_000;

/** Mounted once per queue filter (App keys it), so paging and selection start afresh. */
export function DeadLetter({ params }: { params: URLSearchParams }) {
  const queue = params.get("queue") ?? "";
  const filters: JobFilters = { states: [JobState.DEAD], types: [], queues: queue ? [queue] : [], search: "" };
  const [tokens, setTokens] = useState<string[]>([""]);
  const token = tokens[tokens.length - 1] ?? "";
  const [rows, setRows] = useState<Job[] | undefined>();
  const [selected, setSelected] = useState<Set<string>>(new Set());
  const [busy, setBusy] = useState(false);
  const now = useNow(5000);
  const stats = useQueueStats();
  const page = useAsync((signal) => api().listJobs(listRequest(filters, token, PAGE_SIZE, { order: JobOrder.FINISHED_DESC }), { signal }), [token, queue]);
  useEffect(() => {
    if (page.data) setRows(page.data.jobs);
  }, [page.data]);
  const rowsRef = useRef(rows);
  rowsRef.current = rows;
  // Live updates dropped rows off the bottom of the first page: the token it
  // was read with no longer follows its last row.
  const trimmed = useRef(false);
  useLive(
    liveList(filters, {
      rows: () => rowsRef.current,
      shape: () => ({ first: tokens.length === 1, hasNext: !!page.data?.nextPageToken, maxRows: PAGE_SIZE * 4, finishedFirst: true }),
      update: (r) => {
        if (r.changed) setRows(r.rows);
        if (r.dropped > 0) trimmed.current = true;
      },
      reload: page.reload,
    }),
  );

  const deadTotal = (queue ? stats.data?.queues.find((q) => q.queue === queue)?.counts : stats.data?.totals)?.find((c) => c.state === JobState.DEAD)?.count ?? 0n;
  const ids = [...selected];

  const bulk = async (what: "retry" | "delete", scope: "selected" | "all") => {
    const n = scope === "selected" ? formatCount(ids.length) : `all ${formatCount(deadTotal)}`;
    const ok = await confirmAction({
      title: what === "retry" ? `Requeue ${n} dead jobs?` : `Delete ${n} dead jobs?`,
      body:
        what === "retry"
          ? "They are queued again with their attempt counts reset."
          : "The jobs, their attempts and their logs are removed for good.",
      action: what === "retry" ? "Requeue" : "Delete",
      danger: what === "delete",
    });
    if (!ok) return;
    setBusy(true);
    try {
      let done = 0;
      if (scope === "selected") {
        const selector = create(JobSelectorSchema, { jobIds: ids });
        const res = what === "retry" ? await api().retryJobs({ selector }) : await api().deleteJobs({ selector });
        done = res.jobIds.length;
      } else {
        // Each call handles up to BULK_LIMIT jobs; repeat while full batches come back.
        for (let round = 0; round < 100; round++) {
          const selector = create(JobSelectorSchema, { states: [JobState.DEAD], queues: filters.queues, limit: BULK_LIMIT });
          const res = what === "retry" ? await api().retryJobs({ selector }) : await api().deleteJobs({ selector });
          done += res.jobIds.length;
          if (res.jobIds.length < BULK_LIMIT) break;
        }
      }
      toast(`${what === "retry" ? "Requeued" : "Deleted"} ${formatCount(done)} job${done === 1 ? "" : "s"}`);
      setSelected(new Set());
      setTokens([""]);
      page.reload();
      stats.reload();
    } catch (err) {
      toast(errorMessage(err), "error");
    } finally {
      setBusy(false);
    }
  };

  const queues = stats.data?.queues.map((q) => q.queue) ?? [];
  return (
    <div>
      <PageHeader
        title="Dead letter"
        sub={
          <>
            Jobs whose attempts ran out or whose failure was not retryable: <b data-testid="dead-total">{formatCount(deadTotal)}</b>
          </>
        }
      >
        <select
          class="input"
          aria-label="Queue"
          value={queue}
          onChange={(e) => {
            const v = e.currentTarget.value;
            location.hash = v ? `#/dead?queue=${encodeURIComponent(v)}` : "#/dead";
          }}
        >
          <option value="">All queues</option>
          {[...new Set([...queues, ...(queue ? [queue] : [])])].map((q) => (
            <option key={q} value={q}>
              {q}
            </option>
          ))}
        </select>
      </PageHeader>
      <div class="card">
        <div class="table-toolbar bulk-bar">
          <span class="small">
            {selected.size > 0 ? <b>{formatCount(selected.size)} selected</b> : <span class="muted">Select jobs to act on them</span>}
          </span>
          <span class="grow" />
          <button class="btn btn-primary btn-sm" disabled={busy || selected.size === 0} onClick={() => bulk("retry", "selected")} data-testid="requeue-selected">
            Requeue selected
          </button>
          <button class="btn btn-danger-outline btn-sm" disabled={busy || selected.size === 0} onClick={() => bulk("delete", "selected")} data-testid="delete-selected">
            Delete selected
          </button>
          <span class="sep" />
          <button class="btn btn-sm" disabled={busy || deadTotal === 0n} onClick={() => bulk("retry", "all")}>
            Requeue all
          </button>
          <button class="btn btn-danger-outline btn-sm" disabled={busy || deadTotal === 0n} onClick={() => bulk("delete", "all")}>
            Delete all
          </button>
        </div>
        {page.error ? <ErrorBox message={page.error} onRetry={page.reload} /> : null}
        {!rows && page.loading ? <Spinner /> : null}
        {rows && rows.length === 0 ? <Empty title="The dead-letter queue is empty">Nothing has failed for good.</Empty> : null}
        {rows && rows.length > 0 ? (
          <JobRows
            rows={rows}
            now={now}
            died
            selected={selected}
            onSelect={(id, on) =>
              setSelected((cur) => {
                const next = new Set(cur);
                if (on) next.add(id);
                else next.delete(id);
                return next;
              })
            }
          />
        ) : null}
        {page.data ? (
          <Pager
            page={tokens.length}
            shown={rows?.length ?? 0}
            hasPrev={tokens.length > 1}
            hasNext={page.data.nextPageToken !== ""}
            onFirst={() => setTokens([""])}
            onPrev={() => setTokens(tokens.slice(0, -1))}
            onNext={async () => {
              let next = page.data?.nextPageToken ?? "";
              const shown = rowsRef.current?.length ?? 0;
              if (tokens.length === 1 && trimmed.current && shown > 0) {
                // Read the first page again as shown, so "Older" goes on from its last row.
                try {
                  next = (await api().listJobs(listRequest(filters, "", shown, { order: JobOrder.FINISHED_DESC }))).nextPageToken;
                } catch {
                  // Keep the old token: some rows skipped beats a dead button.
                }
                if (!next) return;
              }
              trimmed.current = false;
              setTokens([...tokens, next]);
            }}
          />
        ) : null}
      </div>
    </div>
  );
}
