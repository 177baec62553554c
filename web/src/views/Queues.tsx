//! Queues: pause/resume, concurrency and rate limits, with live counts.
import { useState } from "preact/hooks";
import { JobState } from "../gen/jobq/v1/job_pb";
import type { Queue } from "../gen/jobq/v1/admin_pb";
import type { QueueStats } from "../gen/jobq/v1/queue_service_pb";
import { api, errorMessage } from "../lib/api";
import { formatCount, formatLatency } from "../lib/format";
import { useDashboardPart } from "../lib/dashboard";
import { useQueueStats } from "../lib/stats";
import { href } from "../lib/router";
import { stateInfo } from "../lib/states";
import { toast } from "../components/overlay";
import { Badge, Card, Empty, ErrorBox, PageHeader, Spinner } from "../components/ui";

/** Limits as typed: "" or a number ≥ 0; returns an error text or undefined. */
export function parseLimit(text: string, integer: boolean): { value?: number; error?: string } {
  const t = text.trim();
  if (t === "") return { value: 0 };
  const n = Number(t);
  if (!Number.isFinite(n) || n < 0) return { error: "Must be 0 or more" };
  if (integer && !Number.isInteger(n)) return { error: "Must be a whole number" };
  if (integer && n > 2_147_483_647) return { error: "Too large" };
  return { value: n };
}

interface Row {
  name: string;
  queue?: Queue;
  stats?: QueueStats;
}

export function Queues() {
  const queues = useDashboardPart("queues");
  const stats = useQueueStats();
  const [editing, setEditing] = useState<string | undefined>();
  const [newName, setNewName] = useState("");

  const names = new Set<string>();
  for (const q of queues.data?.queues ?? []) names.add(q.name);
  for (const q of stats.data?.queues ?? []) names.add(q.queue);
  const rows: Row[] = [...names].sort().map((name) => ({
    name,
    queue: queues.data?.queues.find((q) => q.name === name),
    stats: stats.data?.queues.find((q) => q.queue === name),
  }));

  const update = async (name: string, change: { paused?: boolean; concurrencyLimit?: number; rateLimitPerSecond?: number; rateBurst?: number }) => {
    try {
      await api().updateQueue({ name, ...change });
      toast(change.paused === undefined ? `Limits of ${name} saved` : change.paused ? `Queue ${name} paused` : `Queue ${name} resumed`);
      return true;
    } catch (err) {
      toast(errorMessage(err), "error");
      return false;
    }
  };

  return (
    <div>
      <PageHeader title="Queues" sub="A paused queue keeps its jobs but hands none out. Limits apply across all workers and server replicas; the burst is how many jobs the rate lets start at once after a quiet spell." />
      {queues.error ? <ErrorBox message={queues.error} onRetry={queues.reload} /> : null}
      <Card>
        {!queues.data && !stats.data ? (
          <Spinner />
        ) : rows.length === 0 ? (
          <Empty title="No queues yet">A queue appears when a job is enqueued into it or when you configure it below.</Empty>
        ) : (
          <div class="table-wrap">
            <table class="table cards" data-testid="queues-table">
              <thead>
                <tr>
                  <th>Queue</th>
                  <th>Status</th>
                  <th class="num">Queued</th>
                  <th class="num">Running</th>
                  <th class="num">Retrying</th>
                  <th class="num">Dead</th>
                  <th class="num">Latency</th>
                  <th class="num">Concurrency</th>
                  <th class="num">Rate (jobs/s)</th>
                  <th />
                </tr>
              </thead>
              <tbody>
                {rows.map((r) =>
                  editing === r.name ? (
                    <EditRow key={r.name} row={r} onCancel={() => setEditing(undefined)} onSave={async (c) => (await update(r.name, c)) && setEditing(undefined)} />
                  ) : (
                    <QueueRow key={r.name} row={r} onEdit={() => setEditing(r.name)} onPause={(p) => update(r.name, { paused: p })} />
                  ),
                )}
              </tbody>
            </table>
          </div>
        )}
      </Card>
      <Card title="Configure a queue">
        <form
          class="inline-form"
          onSubmit={(e) => {
            e.preventDefault();
            const n = newName.trim();
            if (!n) return;
            setEditing(n);
            if (!names.has(n)) {
              void update(n, {}).then(() => setNewName(""));
            }
          }}
        >
          <input class="input" placeholder="Queue name" aria-label="Queue name" value={newName} onInput={(e) => setNewName(e.currentTarget.value)} pattern="[A-Za-z0-9_.:\-]{1,128}" />
          <button class="btn" type="submit">
            Add queue
          </button>
          <span class="muted small">Then set its limits in the table.</span>
        </form>
      </Card>
    </div>
  );
}

function count(stats: QueueStats | undefined, state: JobState): bigint {
  return stats?.counts.find((c) => c.state === state)?.count ?? 0n;
}

function Counts({ row }: { row: Row }) {
  return (
    <>
      {[JobState.QUEUED, JobState.RUNNING, JobState.RETRYING, JobState.DEAD].map((s) => {
        const n = count(row.stats, s);
        return (
          <td key={s} class={`num ${n === 0n ? "muted" : ""}`} data-label={stateInfo(s).label}>
            {formatCount(n)}
          </td>
        );
      })}
      <td class="num" data-label="Latency">{formatLatency(row.stats?.oldestReadyAge)}</td>
    </>
  );
}

function QueueRow({ row, onEdit, onPause }: { row: Row; onEdit: () => void; onPause: (paused: boolean) => void }) {
  const paused = row.queue?.paused ?? false;
  return (
    <tr data-queue={row.name}>
      <td data-label="Queue">
        <a href={href("/jobs", { queue: row.name })}>{row.name}</a>
      </td>
      <td data-label="Status">{paused ? <Badge tone="amber">Paused</Badge> : <Badge tone="green">Active</Badge>}</td>
      <Counts row={row} />
      <td class="num" data-label="Concurrency">{row.queue?.concurrencyLimit ? formatCount(row.queue.concurrencyLimit) : <span class="muted">none</span>}</td>
      <td class="num" data-label="Rate">
        {row.queue?.rateLimitPerSecond ? (
          <>
            {row.queue.rateLimitPerSecond}
            <span class="muted small"> · burst {effectiveBurst(row.queue)}</span>
          </>
        ) : (
          <span class="muted">none</span>
        )}
      </td>
      <td class="actions">
        <button class="btn btn-sm" onClick={() => onPause(!paused)} data-testid={`pause-${row.name}`}>
          {paused ? "Resume" : "Pause"}
        </button>
        <button class="btn btn-sm btn-ghost" onClick={onEdit}>
          Limits…
        </button>
      </td>
    </tr>
  );
}

/** The rate limit's bucket size as the server applies it: the burst set, else the rate rounded up. */
export function effectiveBurst(queue: Pick<Queue, "rateLimitPerSecond" | "rateBurst">): number {
  return queue.rateBurst > 0 ? queue.rateBurst : Math.max(1, Math.ceil(queue.rateLimitPerSecond));
}

function EditRow({
  row,
  onCancel,
  onSave,
}: {
  row: Row;
  onCancel: () => void;
  onSave: (c: { concurrencyLimit: number; rateLimitPerSecond: number; rateBurst: number }) => void;
}) {
  const [conc, setConc] = useState(row.queue?.concurrencyLimit ? String(row.queue.concurrencyLimit) : "");
  const [rate, setRate] = useState(row.queue?.rateLimitPerSecond ? String(row.queue.rateLimitPerSecond) : "");
  const [burst, setBurst] = useState(row.queue?.rateBurst ? String(row.queue.rateBurst) : "");
  const c = parseLimit(conc, true);
  const r = parseLimit(rate, false);
  const b = parseLimit(burst, false);
  const paused = row.queue?.paused ?? false;
  return (
    <tr class="editing">
      <td data-label="Queue">{row.name}</td>
      <td data-label="Status">{paused ? <Badge tone="amber">Paused</Badge> : <Badge tone="green">Active</Badge>}</td>
      <Counts row={row} />
      <td class="num" data-label="Concurrency">
        <input class={`input input-sm num ${c.error ? "invalid" : ""}`} placeholder="none" aria-label="Concurrency limit" title={c.error ?? "Most jobs running at once; empty or 0 for no limit"} value={conc} onInput={(e) => setConc(e.currentTarget.value)} />
      </td>
      <td class="num" data-label="Rate">
        <input class={`input input-sm num ${r.error ? "invalid" : ""}`} placeholder="none" aria-label="Rate (jobs/s)" title={r.error ?? "Most jobs started per second; empty or 0 for no limit"} value={rate} onInput={(e) => setRate(e.currentTarget.value)} />
        <input
          class={`input input-sm num ${b.error ? "invalid" : ""}`}
          placeholder="burst"
          aria-label="Burst"
          data-testid="burst-input"
          title={b.error ?? "Most jobs the rate lets start at once; empty or 0 for the rate rounded up"}
          value={burst}
          onInput={(e) => setBurst(e.currentTarget.value)}
        />
      </td>
      <td class="actions">
        <button
          class="btn btn-sm btn-primary"
          disabled={!!c.error || !!r.error || !!b.error}
          onClick={() => onSave({ concurrencyLimit: c.value ?? 0, rateLimitPerSecond: r.value ?? 0, rateBurst: b.value ?? 0 })}
        >
          Save
        </button>
        <button class="btn btn-sm btn-ghost" onClick={onCancel}>
          Cancel
        </button>
      </td>
    </tr>
  );
}
