//! Workers: id, host, queues and job types, running jobs, last heartbeat.
import { useState } from "preact/hooks";
import { WorkerStatus } from "../gen/jobq/v1/admin_pb";
import { formatDateTime, formatVersion, shortId, tsMillis } from "../lib/format";
import { useDashboardPart } from "../lib/dashboard";
import { useNow } from "../lib/hooks";
import { jobHref } from "../lib/router";
import { workerStatusInfo } from "../lib/states";
import { Badge, Card, Empty, ErrorBox, PageHeader, Spinner, Time } from "../components/ui";

export function Workers() {
  const [stale, setStale] = useState(false);
  const list = useDashboardPart("workers", stale);
  const now = useNow(1000);
  const workers = list.data?.workers ?? [];
  const active = workers.filter((w) => w.status === WorkerStatus.ACTIVE).length;
  return (
    <div>
      <PageHeader title="Workers" sub={list.data ? `${active} active, ${workers.length - active} lost` : undefined}>
        <label class="toggle small">
          <input type="checkbox" checked={stale} onChange={(e) => setStale(e.currentTarget.checked)} />
          Include workers lost over an hour ago
        </label>
      </PageHeader>
      {list.error ? <ErrorBox message={list.error} onRetry={list.reload} /> : null}
      <Card>
        {!list.data && list.loading ? (
          <Spinner />
        ) : workers.length === 0 ? (
          <Empty title="No workers">
            Start one: <code>jobq-worker --server http://HOST:PORT</code>
          </Empty>
        ) : (
          <div class="table-wrap">
            <table class="table cards" data-testid="workers-table">
              <thead>
                <tr>
                  <th>Worker</th>
                  <th>Host</th>
                  <th>Status</th>
                  <th>Queues</th>
                  <th>Job types</th>
                  <th>Running jobs</th>
                  <th>Last heartbeat</th>
                  <th>Up since</th>
                </tr>
              </thead>
              <tbody>
                {workers.map((w) => {
                  const st = workerStatusInfo(w.status);
                  return (
                    <tr key={w.workerId}>
                      <td class="mono" data-label="Worker">
                        {w.workerId}
                        {w.version ? <div class="muted small">{formatVersion(w.version)}</div> : null}
                      </td>
                      <td data-label="Host">{w.hostname || <span class="muted">—</span>}</td>
                      <td data-label="Status">
                        <Badge tone={st.tone}>{st.label}</Badge>
                      </td>
                      <td data-label="Queues">{(w.queues.length ? w.queues : ["default"]).map((q) => <span key={q} class="tag">{q}</span>)}</td>
                      <td data-label="Job types">{w.types.length ? w.types.map((t) => <span key={t} class="tag">{t}</span>) : <span class="muted">any</span>}</td>
                      <td class="mono" data-label="Running">
                        {/* A flex box inside the cell: `display: flex` on the td itself takes it out of the table layout. */}
                        <div class="links">
                          {w.runningJobIds.length === 0 ? (
                            <span class="muted">idle</span>
                          ) : (
                            <>
                              {w.runningJobIds.slice(0, 5).map((id) => (
                                <a key={id} href={jobHref(id)} title={id}>
                                  {shortId(id)}
                                </a>
                              ))}
                              {w.runningJobIds.length > 5 ? <span class="muted">+{w.runningJobIds.length - 5} more</span> : null}
                            </>
                          )}
                        </div>
                      </td>
                      <td data-label="Heartbeat">
                        <Time ms={tsMillis(w.lastSeenAt)} now={now} />
                      </td>
                      <td title={formatDateTime(tsMillis(w.firstSeenAt))} data-label="Up since">
                        <Time ms={tsMillis(w.firstSeenAt)} now={now} />
                      </td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
        )}
      </Card>
    </div>
  );
}
