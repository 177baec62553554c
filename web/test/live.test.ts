import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type CallOptions } from "@connectrpc/connect";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { JobEventType } from "../src/gen/jobq/v1/event_pb";
import { JobState, JobView, type Job } from "../src/gen/jobq/v1/job_pb";
import { WatchDashboardResponseSchema, WatchJobsResponseSchema, type WatchDashboardRequestSchema, type WatchDashboardResponse } from "../src/gen/jobq/v1/queue_service_pb";
import { EMPTY_FILTERS } from "../src/lib/filters";
import { liveList } from "../src/lib/listupdate";
import { LiveHub, type LagNote } from "../src/lib/live";
import { event, FakeStream, job } from "./helpers";

type Request = MessageInitShape<typeof WatchDashboardRequestSchema>;

/** A WatchDashboard client whose streams the test drives; `header` says whether a call gets its headers at once. */
function fakeWatch() {
  const streams: FakeStream<WatchDashboardResponse>[] = [];
  const requests: Request[] = [];
  const client = {
    watchDashboard(req: Request, opts?: CallOptions): AsyncIterable<WatchDashboardResponse> {
      requests.push(req);
      const s = new FakeStream<WatchDashboardResponse>(opts?.signal);
      streams.push(s);
      opts?.onHeader?.(new Headers());
      return s;
    },
  };
  return { client, streams, requests };
}

const jobs = (value: ReturnType<typeof create<typeof WatchJobsResponseSchema>>) => create(WatchDashboardResponseSchema, { update: { case: "jobs", value } });
const created = (j: Job) => jobs(create(WatchJobsResponseSchema, { event: event(JobEventType.CREATED, j) }));
const lagged = (dropped: bigint) => jobs(create(WatchJobsResponseSchema, { lagged: true, droppedEvents: dropped }));

/** A jobs list page as Jobs.tsx wires it to the hub: rows, and a reload that re-reads them. */
function listPage(initial: Job[]) {
  const page = { rows: initial, reloads: 0, log: [] as string[] };
  const listener = liveList(EMPTY_FILTERS, {
    rows: () => page.rows,
    shape: () => ({ first: true, hasNext: false, maxRows: 100 }),
    update: (r) => {
      page.rows = r.rows;
      page.log.push(`rows ${r.rows.map((x) => x.id).join(",")}`);
    },
    reload: () => {
      page.reloads++;
      page.log.push("reload");
    },
  });
  return { page, listener };
}

const ids = (rows: Job[]) => rows.map((r) => r.id);

describe("the live WatchJobs stream", () => {
  let hub: LiveHub;
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    hub?.stop();
    vi.useRealTimers();
  });

  it("watches in the BASIC view and has the list read its page again after connecting", async () => {
    const w = fakeWatch();
    hub = new LiveHub(() => w.client);
    const { page, listener } = listPage([job("b"), job("a")]);
    hub.subscribe(listener);
    await vi.advanceTimersByTimeAsync(0);
    expect(w.requests).toEqual([{ jobs: { view: JobView.BASIC }, includeStaleWorkers: false, history: undefined }]);
    expect(hub.status).toBe("live");
    expect(page.reloads).toBe(1);
  });

  it("keeps the stream open when the server dropped events, notes how many, and has the list read its page again", async () => {
    const w = fakeWatch();
    hub = new LiveHub(() => w.client);
    const notes: LagNote[] = [];
    hub.onLag((n) => notes.push(n));
    const { page, listener } = listPage([job("b"), job("a")]);
    hub.subscribe(listener);
    await vi.advanceTimersByTimeAsync(0);
    const stream = w.streams[0]!;
    page.log = [];

    stream.push(created(job("c")));
    await vi.advanceTimersByTimeAsync(200);
    expect(ids(page.rows)).toEqual(["c", "b", "a"]);

    // An event still batched when the lag comes is shown first, then the page is read again.
    stream.push(created(job("d")));
    stream.push(lagged(42n));
    await vi.advanceTimersByTimeAsync(0);
    expect(page.log).toEqual(["rows c,b,a", "rows d,c,b,a", "reload"]);
    expect(notes).toEqual([{ droppedEvents: 42n, lags: 1, lastAt: Date.now() }]);
    expect(hub.lag?.droppedEvents).toBe(42n);
    expect(hub.status).toBe("live");

    // The same stream goes on: events after the lag still arrive, and nothing reconnected.
    stream.push(created(job("e")));
    await vi.advanceTimersByTimeAsync(200);
    expect(ids(page.rows)).toEqual(["e", "d", "c", "b", "a"]);
    stream.push(lagged(8n));
    await vi.advanceTimersByTimeAsync(20_000);
    expect(hub.lag).toMatchObject({ droppedEvents: 50n, lags: 2 });
    // Once on connecting, once per lag.
    expect(page.reloads).toBe(1 + 2);
    expect(w.requests).toHaveLength(1);
  });

  it("does not re-read a list whose live updates are off", async () => {
    const w = fakeWatch();
    hub = new LiveHub(() => w.client);
    let reloads = 0;
    hub.subscribe(
      liveList(EMPTY_FILTERS, {
        rows: () => undefined,
        shape: () => ({ first: true, hasNext: false, maxRows: 10 }),
        update: () => undefined,
        reload: () => reloads++,
      }),
    );
    await vi.advanceTimersByTimeAsync(0);
    w.streams[0]!.push(lagged(3n));
    await vi.advanceTimersByTimeAsync(200);
    expect(reloads).toBe(0);
    expect(hub.lag?.droppedEvents).toBe(3n);
  });

  it("reconnects with backoff when the stream fails (the server shutting down), and re-reads once back", async () => {
    const w = fakeWatch();
    hub = new LiveHub(() => w.client);
    const { page, listener } = listPage([job("a", { state: JobState.QUEUED })]);
    hub.subscribe(listener);
    await vi.advanceTimersByTimeAsync(0);
    expect(page.reloads).toBe(1);

    w.streams[0]!.fail(new ConnectError("the server is shutting down", Code.Unavailable));
    await vi.advanceTimersByTimeAsync(0);
    expect(hub.status).toBe("reconnecting");
    await vi.advanceTimersByTimeAsync(999);
    expect(w.requests).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(w.requests).toHaveLength(2);
    expect(hub.status).toBe("live");
    expect(page.reloads).toBe(2);

    // Down again right away: the wait starts over from one second (it was connected).
    w.streams[1]!.fail(new ConnectError("connection reset", Code.Unavailable));
    await vi.advanceTimersByTimeAsync(1000);
    expect(w.requests).toHaveLength(3);
  });
});
