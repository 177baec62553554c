//! Overview: counts by state and queue, throughput and wait charts, workers.
import { useState } from "preact/hooks";
import { JobState } from "../gen/jobq/v1/job_pb";
import { WorkerStatus } from "../gen/jobq/v1/admin_pb";
import type { GetQueueStatsResponse } from "../gen/jobq/v1/queue_service_pb";
import { averageWait, perSecond, WINDOWS } from "../lib/activity";
import { durationMillis, tsMillis, formatCount, formatDuration, formatLatency, formatRate } from "../lib/format";
import { useDashboardPart } from "../lib/dashboard";
import { useNow, usePref } from "../lib/hooks";
import { useQueueStats } from "../lib/stats";
import { live } from "../lib/live";
import { href } from "../lib/router";
import { STATES, stateInfo } from "../lib/states";
import { TimeChart } from "../components/chart";
import { Badge, Card, Empty, ErrorBox, PageHeader, Spinner, Time } from "../components/ui";

const pageOpenedAt = Date.now();

/** Count of a state in a StateCount list. */
function countOf(counts: { state: JobState; count: bigint }[], state: JobState): bigint {
  return counts.find((c) => c.state === state)?.count ?? 0n;
}

export function Overview() {
  const stats = useQueueStats();
  // Pushed by the server with the counts: nothing here polls.
  const workers = useDashboardPart("workers");
  const queues = useDashboardPart("queues");
  const now = useNow(2000);

  return (
    <div>
      <PageHeader
        title="Overview"
        sub={stats.data?.asOf ? <>Counts as of <Time ms={tsMillis(stats.data.asOf)} now={now} /></> : undefined}
      />
      {stats.error ? <ErrorBox message={stats.error} onRetry={stats.reload} /> : null}
      {stats.data ? <StateCards stats={stats.data} /> : !stats.error ? <Spinner /> : null}
      <Charts now={now} />
      <div class="grid-2">
        <Card title="Queues" actions={<a href="#/queues">Manage queues →</a>}>
          {stats.data ? <QueueTable stats={stats.data} paused={new Set(queues.data?.queues.filter((q) => q.paused).map((q) => q.name))} /> : <Spinner />}
        </Card>
        <Card title="Workers" actions={<a href="#/workers">All workers →</a>}>
          {workers.error ? <ErrorBox message={workers.error} /> : null}
          {workers.data === undefined && !workers.loading && !workers.error ? (
            <Empty title="Worker list not available">The server does not list workers yet.</Empty>
          ) : workers.data ? (
            workers.data.workers.length === 0 ? (
              <Empty title="No workers connected">Start one with <code>jobq-worker --server …</code></Empty>
            ) : (
              <div class="table-wrap">
                <table class="table compact">
                  <thead>
                    <tr>
                      <th>Worker</th>
                      <th>Status</th>
                      <th class="num">Running</th>
                      <th>Last seen</th>
                    </tr>
                  </thead>
                  <tbody>
                    {workers.data.workers.slice(0, 8).map((w) => (
                      <tr key={w.workerId}>
                        <td class="mono ellipsis" title={w.workerId}>
                          {w.workerId}
                        </td>
                        <td>
                          <Badge tone={w.status === WorkerStatus.ACTIVE ? "green" : "red"}>
                            {w.status === WorkerStatus.ACTIVE ? "Active" : "Lost"}
                          </Badge>
                        </td>
                        <td class="num">{w.runningJobIds.length}</td>
                        <td>
                          <Time ms={tsMillis(w.lastSeenAt)} now={now} />
                        </td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
            )
          ) : (
            <Spinner />
          )}
        </Card>
      </div>
    </div>
  );
}

function StateCards({ stats }: { stats: GetQueueStatsResponse }) {
  const latency = Math.max(0, ...stats.queues.map((q) => durationMillis(q.oldestReadyAge) ?? 0));
  return (
    <div class="stat-grid">
      {STATES.map((s) => {
        const n = countOf(stats.totals, s.state);
        return (
          <a key={s.slug} class={`stat stat-${s.tone}`} href={href("/jobs", { state: s.slug })} data-testid={`stat-${s.slug}`}>
            <span class="stat-label">
              <span class={`dot dot-${s.tone}`} />
              {s.label}
            </span>
            <span class="stat-value">{formatCount(n)}</span>
          </a>
        );
      })}
      <div class="stat stat-plain" title="How long the oldest ready job has waited, over all queues">
        <span class="stat-label">Latency</span>
        <span class="stat-value">{latency > 0 ? formatDuration(latency) : "—"}</span>
      </div>
    </div>
  );
}

function QueueTable({ stats, paused }: { stats: GetQueueStatsResponse; paused: Set<string> }) {
  if (stats.queues.length === 0) return <Empty title="No jobs yet">Enqueue one from the <a href="#/enqueue">Enqueue</a> page.</Empty>;
  const cols = [JobState.QUEUED, JobState.RUNNING, JobState.RETRYING, JobState.DEAD];
  return (
    <div class="table-wrap">
      <table class="table compact">
        <thead>
          <tr>
            <th>Queue</th>
            {cols.map((c) => (
              <th key={c} class="num">
                {stateInfo(c).label}
              </th>
            ))}
            <th class="num">Latency</th>
          </tr>
        </thead>
        <tbody>
          {stats.queues.map((q) => (
            <tr key={q.queue}>
              <td>
                <a href={href("/jobs", { queue: q.queue })}>{q.queue}</a>
                {paused.has(q.queue) ? (
                  <>
                    {" "}
                    <Badge tone="amber">paused</Badge>
                  </>
                ) : null}
              </td>
              {cols.map((c) => {
                const n = countOf(q.counts, c);
                return (
                  <td key={c} class={`num ${n === 0n ? "muted" : ""}`}>
                    <a class="plain" href={href("/jobs", { queue: q.queue, state: stateInfo(c).slug })}>
                      {formatCount(n)}
                    </a>
                  </td>
                );
              })}
              <td class="num">{formatLatency(q.oldestReadyAge)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function Charts({ now }: { now: number }) {
  const [win, setWin] = usePref<string>("chartWindow", "5m");
  const w = WINDOWS.find((x) => x.label === win) ?? WINDOWS[0];
  const buckets = live.activity.buckets(now, w.windowMs, w.bucketMs);
  const starts = buckets.map((b) => b.start);
  const openFor = now - pageOpenedAt;
  const [, force] = useState(0);
  const windowPicker = (
    <div class="seg">
      {WINDOWS.map((x) => (
        <button
          key={x.label}
          class={`seg-btn ${x.label === w.label ? "active" : ""}`}
          onClick={() => {
            setWin(x.label);
            force((n) => n + 1);
          }}
        >
          {x.label}
        </button>
      ))}
    </div>
  );
  const note =
    openFor < w.windowMs ? (
      <span class="muted small">Measured in this browser since the page opened {formatDuration(openFor)} ago.</span>
    ) : null;
  return (
    <div class="grid-2">
      <Card title="Throughput (jobs/s)" actions={windowPicker}>
        <TimeChart
          starts={starts}
          bucketMs={w.bucketMs}
          windowLabel={w.label}
          format={formatRate}
          emptyText="No jobs enqueued or finished in this window"
          series={[
            { label: "Succeeded", color: "var(--green)", kind: "bar", values: buckets.map((b) => perSecond(b.succeeded, w.bucketMs)) },
            { label: "Failed", color: "var(--red)", kind: "bar", values: buckets.map((b) => perSecond(b.failed, w.bucketMs)) },
            { label: "Enqueued", color: "var(--accent)", kind: "line", values: buckets.map((b) => perSecond(b.enqueued, w.bucketMs)) },
          ]}
        />
        {note}
      </Card>
      <Card title="Wait time (queued → started)">
        <TimeChart
          starts={starts}
          bucketMs={w.bucketMs}
          windowLabel={w.label}
          format={(v) => formatDuration(v)}
          minTop={1000}
          emptyText="No job started in this window"
          series={[
            { label: "Average", color: "var(--sky)", kind: "bar", values: buckets.map((b) => averageWait(b)) },
            { label: "Max", color: "var(--amber)", kind: "line", values: buckets.map((b) => (b.waitCount > 0 ? b.waitMaxMs : undefined)) },
          ]}
        />
        {note}
      </Card>
    </div>
  );
}
