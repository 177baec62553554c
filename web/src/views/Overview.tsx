//! Overview: counts by state and queue, throughput and latency charts from
//! the server's job history (last hour / day / week), workers.
import { useEffect, useState } from "preact/hooks";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { JobState } from "../gen/jobq/v1/job_pb";
import { WorkerStatus } from "../gen/jobq/v1/admin_pb";
import type { GetQueueStatsResponse } from "../gen/jobq/v1/queue_service_pb";
import { addSeen, describeLatency, describeThroughput, HISTORY_WINDOWS, HistoryPoints, MINUTE_MS, type HistoryWindow } from "../lib/activity";
import { live } from "../lib/live";
import { durationMillis, tsMillis, formatCompact, formatCount, formatDuration, formatLatency } from "../lib/format";
import { useDashboardPart } from "../lib/dashboard";
import { useNow, usePref } from "../lib/hooks";
import { useQueueStats } from "../lib/stats";
import { href } from "../lib/router";
import { STATES, stateInfo } from "../lib/states";
import { TimeChart } from "../components/chart";
import { Badge, Card, Empty, ErrorBox, PageHeader, Spinner, Time } from "../components/ui";

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
      <Charts now={now} queues={stats.data?.queues.map((q) => q.queue) ?? []} />
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

/** Live history of one window (and queue, or all): the server pushes each closed minute. */
interface HistoryState {
  points: HistoryPoints;
  version: number;
  error?: string;
  loaded: boolean;
  /** Until when the server's answers cover what happened (ms since the epoch). */
  coveredUntil: number;
}

function useJobHistory(w: HistoryWindow, queue: string): HistoryState {
  const [state, setState] = useState<HistoryState>(() => ({ points: new HistoryPoints(), version: 0, loaded: false, coveredUntil: Date.now() }));
  useEffect(() => {
    const points = new HistoryPoints();
    let version = 0;
    let coveredUntil = Date.now();
    setState({ points, version, loaded: false, coveredUntil });
    // Over the page's one stream: the window slides with the server's clock
    // (no end time), then only closed minutes are pushed; the page asks
    // nothing more. After a reconnect the window comes again.
    return live.watchHistory(
      () => ({ startTime: timestampFromMs(Date.now() - w.windowMs), step: { seconds: BigInt(w.stepMs / 1000), nanos: 0 }, queues: queue ? [queue] : [] }),
      (message, first) => {
        points.apply(message.points, Date.now() - w.windowMs - w.stepMs);
        coveredUntil = first ? Date.now() : Math.max(coveredUntil, Math.floor(Date.now() / MINUTE_MS) * MINUTE_MS);
        version += 1;
        setState({ points, version, loaded: true, coveredUntil });
      },
    );
  }, [w.key, queue]);
  return state;
}

function Charts({ now, queues }: { now: number; queues: string[] }) {
  const [key, setKey] = usePref<string>("historyWindow", "1h");
  const [queue, setQueue] = usePref<string>("historyQueue", "");
  const w = HISTORY_WINDOWS.find((x) => x.key === key) ?? HISTORY_WINDOWS[0];
  const history = useJobHistory(w, queue);
  const buckets = history.points.buckets(now, w.windowMs, w.stepMs);
  // What happened since the server's last answer, as this browser saw it
  // (all queues only: the page's event counters are not kept per queue).
  if (!queue && history.loaded) addSeen(buckets, live.activity.perSecond(), history.coveredUntil, w.stepMs);
  const starts = buckets.map((b) => b.start);
  const picker = (
    <div class="seg" role="group" aria-label="History window">
      {HISTORY_WINDOWS.map((x) => (
        <button key={x.key} class={`seg-btn ${x.key === w.key ? "active" : ""}`} aria-pressed={x.key === w.key} onClick={() => setKey(x.key)}>
          {x.label}
        </button>
      ))}
    </div>
  );
  const queuePicker = (
    <select class="input input-sm" style={{ width: "auto" }} aria-label="Queue of the charts" value={queue} onChange={(e) => setQueue((e.currentTarget as HTMLSelectElement).value)}>
      <option value="">All queues</option>
      {[...new Set([...queues, ...(queue ? [queue] : [])])].sort().map((q) => (
        <option key={q} value={q}>
          {q}
        </option>
      ))}
    </select>
  );
  const note = history.error ? (
    <span class="muted small">History stream interrupted ({history.error}); reconnecting…</span>
  ) : !history.loaded ? (
    <span class="muted small">Loading history…</span>
  ) : null;
  return (
    <div class="grid-2" data-testid="history-charts" data-points={history.points.size}>
      <Card
        title={`Throughput (jobs per ${w.stepLabel})`}
        actions={
          <>
            {queuePicker} {picker}
          </>
        }
      >
        <TimeChart
          starts={starts}
          bucketMs={w.stepMs}
          windowLabel={w.key}
          format={(v) => formatCompact(Math.round(v))}
          ariaLabel={describeThroughput(buckets, w)}
          emptyText="No job finished or enqueued in this window"
          series={[
            { label: "Succeeded", color: "var(--green)", kind: "bar", values: buckets.map((b) => b.succeeded) },
            { label: "Failed (retried)", color: "var(--amber)", kind: "bar", values: buckets.map((b) => b.failed) },
            { label: "Dead", color: "var(--red)", kind: "bar", values: buckets.map((b) => b.dead) },
            { label: "Enqueued", color: "var(--accent)", kind: "line", values: buckets.map((b) => b.enqueued) },
          ]}
        />
        {note}
      </Card>
      <Card title="Wait and run time (p50 / p99)">
        <TimeChart
          starts={starts}
          bucketMs={w.stepMs}
          windowLabel={w.key}
          format={(v) => formatDuration(v)}
          minTop={1000}
          ariaLabel={describeLatency(buckets, w)}
          emptyText="No job started or finished in this window"
          series={[
            { label: "Wait p50", color: "var(--sky)", kind: "line", values: buckets.map((b) => b.waitP50) },
            { label: "Wait p99", color: "var(--accent)", kind: "line", values: buckets.map((b) => b.waitP99) },
            { label: "Run p50", color: "var(--green)", kind: "line", values: buckets.map((b) => b.runP50) },
            { label: "Run p99", color: "var(--amber)", kind: "line", values: buckets.map((b) => b.runP99) },
          ]}
        />
        {note}
      </Card>
    </div>
  );
}
