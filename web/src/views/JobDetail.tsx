//! One job: summary, live progress, payload and result, attempts,
//! dependencies and children, live log tail, retry/cancel/delete.
import { useEffect, useRef, useState } from "preact/hooks";
import { JobEventType } from "../gen/jobq/v1/event_pb";
import { JobState, type Job } from "../gen/jobq/v1/job_pb";
import { api, errorMessage } from "../lib/api";
import { EMPTY_FILTERS, listRequest } from "../lib/filters";
import { type SecondsNanos, durationMillis, formatDateTime, formatDuration, shortId, tsMillis } from "../lib/format";
import { useAsync, useLive, useNow } from "../lib/hooks";
import { errorNotice, showsProgress, withFullFields } from "../lib/jobview";
import { jobHref } from "../lib/router";
import { attemptCancelNote, canCancel, canDelete, canRetry, isTerminal, outcomeInfo } from "../lib/states";
import { LogTail } from "../components/LogTail";
import { confirmAction, toast } from "../components/overlay";
import { Badge, Card, Empty, ErrorBox, JsonBlock, PageHeader, ProgressBar, Spinner, StateBadge, Time } from "../components/ui";
import { JobRows } from "./Jobs";

export function JobDetail({ id }: { id: string }) {
  // GetJob answers in the FULL view: payload, result and attempts.
  const loaded = useAsync((signal) => api().getJob({ jobId: id }, { signal }), [id]);
  const [job, setJob] = useState<Job | undefined>();
  const [deleted, setDeleted] = useState(false);
  const [busy, setBusy] = useState(false);
  const now = useNow(1000);
  const refetch = useRef<ReturnType<typeof setTimeout>>();

  useEffect(() => {
    if (loaded.data?.job) setJob(loaded.data.job);
  }, [loaded.data]);

  useLive({
    events(evs) {
      for (const ev of evs) {
        if (ev.job?.id !== id) continue;
        if (ev.type === JobEventType.DELETED) {
          setDeleted(true);
          continue;
        }
        const next = ev.job;
        // Events come in the BASIC view, without payload, result or
        // attempts: keep the ones shown, and read the job again soon when
        // its state moved (a new attempt, one ended, a result).
        setJob((cur) => (cur ? withFullFields(next, cur) : next));
        if (ev.type !== JobEventType.PROGRESS) {
          clearTimeout(refetch.current);
          refetch.current = setTimeout(loaded.reload, 150);
        }
      }
    },
    resync: () => loaded.reload(),
  });
  useEffect(() => () => clearTimeout(refetch.current), []);

  if (loaded.error && !job) {
    return (
      <div>
        <PageHeader title="Job" sub={<span class="mono">{id}</span>} />
        <ErrorBox message={loaded.error} onRetry={loaded.reload} />
      </div>
    );
  }
  if (!job) return <Spinner />;

  const act = async (what: "retry" | "cancel" | "delete") => {
    const texts = {
      retry: { title: "Retry this job?", body: "It is queued again with its attempt count reset.", action: "Retry", danger: false },
      cancel: {
        title: "Cancel this job?",
        body: job.state === JobState.RUNNING ? "Its worker is told to stop at its next heartbeat." : "It will not run.",
        action: "Cancel job",
        danger: true,
      },
      delete: { title: "Delete this job?", body: "The job, its attempts and its logs are removed for good.", action: "Delete", danger: true },
    }[what];
    if (!(await confirmAction(texts))) return;
    setBusy(true);
    try {
      if (what === "retry") {
        const r = await api().retryJob({ jobId: id });
        if (r.job) setJob(withFullFields(r.job, job));
        toast("Job queued again");
      } else if (what === "cancel") {
        const r = await api().cancelJob({ jobId: id, reason: "cancelled from the dashboard" });
        if (r.job) setJob(withFullFields(r.job, job));
        toast(r.job?.state === JobState.CANCELLED ? "Job cancelled" : "Cancel requested; the worker stops at its next heartbeat");
      } else {
        await api().deleteJob({ jobId: id });
        toast("Job deleted");
        location.hash = "#/jobs";
        return;
      }
      loaded.reload();
    } catch (err) {
      toast(errorMessage(err), "error");
    } finally {
      setBusy(false);
    }
  };

  const running = job.state === JobState.RUNNING;
  const notice = errorNotice(job);
  const runMs = (a: { startedAt?: SecondsNanos; finishedAt?: SecondsNanos }) => {
    const s = tsMillis(a.startedAt);
    if (s === undefined) return undefined;
    return (tsMillis(a.finishedAt) ?? now) - s;
  };
  return (
    <div>
      <PageHeader
        title={job.type}
        sub={
          <span class="job-sub">
            <StateBadge state={job.state} cancelRequested={job.cancelRequested} />
            <span class="mono selectable" data-testid="job-id">
              {job.id}
            </span>
            <span class="muted">in</span>
            <a href={`#/jobs?queue=${encodeURIComponent(job.queue || "default")}`}>{job.queue || "default"}</a>
          </span>
        }
      >
        <button class="btn" disabled={busy || !canRetry(job.state) || deleted} onClick={() => act("retry")} data-testid="retry">
          Retry
        </button>
        <button class="btn btn-danger-outline" disabled={busy || !canCancel(job.state) || job.cancelRequested || deleted} onClick={() => act("cancel")} data-testid="cancel">
          Cancel
        </button>
        <button class="btn btn-danger-outline" disabled={busy || !canDelete(job.state) || deleted} onClick={() => act("delete")} data-testid="delete">
          Delete
        </button>
      </PageHeader>
      {deleted ? <div class="notice notice-warn">This job was deleted.</div> : null}

      {showsProgress(job) ? (
        <Card class="progress-card">
          <div class="progress-head">
            <span class="progress-pct" data-testid="progress-percent">
              {job.progressPercent}%
            </span>
            <span class="muted ellipsis" data-testid="progress-message">
              {job.progressMessage}
            </span>
            {running ? (
              <span class="muted small">
                on <span class="mono">{job.workerId}</span>
              </span>
            ) : null}
          </div>
          <ProgressBar percent={job.progressPercent} tone={job.state === JobState.SUCCEEDED ? "green" : isTerminal(job.state) ? "gray" : "blue"} />
        </Card>
      ) : null}

      {notice ? (
        <div class={`notice notice-${notice.tone}`} data-testid="last-error">
          <div>
            <b>{notice.title}</b>
            <pre class="error-pre">{job.lastError}</pre>
          </div>
        </div>
      ) : null}

      <div class="grid-detail">
        <Card title="Details">
          <dl class="props">
            <dt>Attempts</dt>
            <dd>
              {job.attempt} of {job.maxAttempts}
            </dd>
            <dt>Priority</dt>
            <dd>{job.priority}</dd>
            <dt>Created</dt>
            <dd>
              {formatDateTime(tsMillis(job.createdAt))} <span class="muted">(<Time ms={tsMillis(job.createdAt)} now={now} />)</span>
            </dd>
            <dt>{isTerminal(job.state) ? "Run at" : "Runs at"}</dt>
            <dd>{formatDateTime(tsMillis(job.runAt))}</dd>
            <dt>Started</dt>
            <dd>{formatDateTime(tsMillis(job.startedAt))}</dd>
            <dt>Finished</dt>
            <dd>
              {formatDateTime(tsMillis(job.finishedAt))}
              {job.finishedAt && job.createdAt ? (
                <span class="muted"> (total {formatDuration((tsMillis(job.finishedAt) ?? 0) - (tsMillis(job.createdAt) ?? 0))})</span>
              ) : null}
            </dd>
            {job.workerId ? (
              <>
                <dt>Worker</dt>
                <dd class="mono">{job.workerId}</dd>
                <dt>Lease expires</dt>
                <dd>
                  <Time ms={tsMillis(job.leaseExpiresAt)} now={now} />
                </dd>
              </>
            ) : null}
            <dt>Timeout</dt>
            <dd>{formatDuration(durationMillis(job.timeout))}</dd>
            <dt>Backoff</dt>
            <dd>
              {formatDuration(durationMillis(job.retryPolicy?.baseBackoff))} → max {formatDuration(durationMillis(job.retryPolicy?.maxBackoff))}
            </dd>
            {job.uniqueKey ? (
              <>
                <dt>Unique key</dt>
                <dd class="mono">{job.uniqueKey}</dd>
              </>
            ) : null}
            {job.concurrencyKey ? (
              <>
                <dt>Concurrency key</dt>
                <dd data-testid="concurrency-key">
                  <span class="mono">{job.concurrencyKey}</span>
                  <span class="muted small">
                    {" "}
                    · {job.concurrencyKeyRunning} of {job.concurrencyLimit} running
                  </span>
                </dd>
              </>
            ) : null}
            {job.tags.length ? (
              <>
                <dt>Tags</dt>
                <dd>
                  {job.tags.map((t) => (
                    <span key={t} class="tag">
                      {t}
                    </span>
                  ))}
                </dd>
              </>
            ) : null}
            {job.scheduleName ? (
              <>
                <dt>Schedule</dt>
                <dd>
                  <a href="#/schedules">{job.scheduleName}</a>
                </dd>
              </>
            ) : null}
            {job.parentId ? (
              <>
                <dt>Parent</dt>
                <dd class="mono">
                  <a href={jobHref(job.parentId)} title={job.parentId}>
                    {shortId(job.parentId)}
                  </a>
                </dd>
              </>
            ) : null}
            {job.dependsOn.length ? (
              <>
                <dt>Depends on</dt>
                <dd class="mono links">
                  {job.dependsOn.map((d) => (
                    <a key={d} href={jobHref(d)} title={d}>
                      {shortId(d)}
                    </a>
                  ))}
                </dd>
              </>
            ) : null}
            {job.traceparent ? (
              <>
                <dt>Trace</dt>
                <dd class="mono small ellipsis" title={job.traceparent}>
                  {job.traceparent}
                </dd>
              </>
            ) : null}
          </dl>
        </Card>
        <div class="stack">
          <Card title="Payload">
            <JsonBlock value={job.payload} empty="Not loaded" />
          </Card>
          <Card title="Result">
            <JsonBlock value={job.result} empty={isTerminal(job.state) ? "No result" : "Not finished"} />
          </Card>
        </div>
      </div>

      <Card title="Attempts">
        {job.attempts.length === 0 ? (
          <Empty title="No attempts yet" />
        ) : (
          <div class="table-wrap">
            <table class="table compact cards" data-testid="attempts">
              <thead>
                <tr>
                  <th class="num" title="Place in the job's history; the log's attempt dividers use it too">
                    #
                  </th>
                  <th class="num" title="Attempt of its run: starts again at 1 after a retry; a released attempt does not count">
                    Attempt
                  </th>
                  <th>Worker</th>
                  <th>Started</th>
                  <th>Finished</th>
                  <th class="num">Took</th>
                  <th>Outcome</th>
                  <th>Error</th>
                </tr>
              </thead>
              <tbody>
                {job.attempts
                  .slice()
                  .reverse()
                  .map((a) => {
                    const o = outcomeInfo(a.outcome);
                    const cancel = attemptCancelNote(a.outcome, a.cancelRequested);
                    // seq never repeats within a job; number starts again after a retry.
                    return (
                      <tr key={a.seq} data-seq={a.seq}>
                        <td class="num" data-label="#">{a.seq}</td>
                        <td class="num" data-label="Attempt">{a.number}</td>
                        <td class="mono ellipsis" data-label="Worker">{a.workerId}</td>
                        <td data-label="Started">{formatDateTime(tsMillis(a.startedAt))}</td>
                        <td data-label="Finished">{a.finishedAt ? formatDateTime(tsMillis(a.finishedAt)) : <span class="muted">running</span>}</td>
                        <td class="num" data-label="Took">{formatDuration(runMs(a))}</td>
                        <td data-label="Outcome">
                          <span class="badge-group">
                            <Badge tone={o.tone}>{o.label}</Badge>
                            {cancel ? (
                              <Badge tone="gray" title={cancel.title}>
                                {cancel.label}
                              </Badge>
                            ) : null}
                          </span>
                        </td>
                        <td class="error-text small pre-wrap" data-label="Error">{a.error}</td>
                      </tr>
                    );
                  })}
              </tbody>
            </table>
          </div>
        )}
      </Card>

      <Children parentId={id} now={now} />

      <Card title="Logs">
        <LogTail jobId={id} active={!isTerminal(job.state)} attemptNumbers={new Map(job.attempts.map((a) => [a.seq, a.number]))} />
      </Card>
    </div>
  );
}

function Children({ parentId, now }: { parentId: string; now: number }) {
  const [tokens, setTokens] = useState<string[]>([""]);
  const token = tokens[tokens.length - 1] ?? "";
  const res = useAsync((signal) => api().listJobs(listRequest(EMPTY_FILTERS, token, 20, { parentId }), { signal }), [parentId, token]);
  useLive({
    events(evs) {
      if (evs.some((e) => e.job?.parentId === parentId)) res.reload();
    },
  });
  if (!res.data || (res.data.jobs.length === 0 && tokens.length === 1)) return null;
  return (
    <Card
      title="Children"
      actions={
        <span class="pager-buttons">
          <button class="btn btn-sm" disabled={tokens.length === 1} onClick={() => setTokens(tokens.slice(0, -1))}>
            ‹ Newer
          </button>
          <button class="btn btn-sm" disabled={!res.data.nextPageToken} onClick={() => setTokens([...tokens, res.data!.nextPageToken])}>
            Older ›
          </button>
        </span>
      }
    >
      {res.error ? <ErrorBox message={res.error} /> : null}
      <JobRows rows={res.data.jobs} now={now} />
    </Card>
  );
}
