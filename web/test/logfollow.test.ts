import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type CallOptions } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { LogLineSchema, LogStream, type LogLine } from "../src/gen/jobq/v1/log_pb";
import { StreamJobLogsResponseSchema, type StreamJobLogsRequestSchema, type StreamJobLogsResponse } from "../src/gen/jobq/v1/queue_service_pb";
import { FIRST_RETRY_MS, followLog, MAX_RETRY_MS, type FollowOptions, type FollowStatus } from "../src/lib/logfollow";
import { logPosition } from "./helpers";

type Request = MessageInitShape<typeof StreamJobLogsRequestSchema>;
/** What one StreamJobLogs call does: the batches it sends, then how it ends. */
type Call = { batches: LogLine[][]; end: "ok" | ConnectError; header?: boolean };

const LAST_LINE = 0xffff_ffff;

function line(entry: number, n: number, message: string, stream = LogStream.STDOUT): LogLine {
  return create(LogLineSchema, { position: logPosition(entry, n), attempt: entry, stream, message });
}

const unavailable = () => new ConnectError("the server is shutting down", Code.Unavailable);

/** A client whose StreamJobLogs calls play `calls` in turn, and what they were asked. */
function scriptedClient(calls: Call[]) {
  const requests: Request[] = [];
  const client: FollowOptions["client"] = {
    streamJobLogs(req: Request, opts?: CallOptions): AsyncIterable<StreamJobLogsResponse> {
      requests.push(req);
      const call = calls.shift();
      if (!call) throw new Error("no more calls scripted");
      return (async function* () {
        if (call.header !== false) opts?.onHeader?.(new Headers());
        for (const lines of call.batches) yield create(StreamJobLogsResponseSchema, { lines });
        if (call.end !== "ok") throw call.end;
      })();
    },
  };
  return { client, requests };
}

/** Runs followLog to its end with a sleep that only records. */
async function follow(calls: Call[], afterPosition = 0n, stillRunning?: () => boolean) {
  const { client, requests } = scriptedClient(calls);
  const statuses: string[] = [];
  const errors: (Code | undefined)[] = [];
  const received: LogLine[] = [];
  const sleeps: number[] = [];
  const last = await followLog({
    client,
    jobId: "job-1",
    afterPosition,
    signal: new AbortController().signal,
    stillRunning,
    onLines: (lines) => received.push(...lines),
    onStatus: (s: FollowStatus, err) => {
      statuses.push(s);
      errors.push(err?.code);
    },
    sleep: async (ms) => {
      sleeps.push(ms);
    },
  });
  return { last, requests, statuses, errors, received, sleeps };
}

describe("following a job's log", () => {
  it("reconnects after a stream error, resuming after the last position received, until the server ends it", async () => {
    const r = await follow([
      {
        batches: [
          [line(0, 1, "enqueued", LogStream.SYSTEM)],
          [line(1, 1, "attempt 1 of 3 leased by worker w1", LogStream.SYSTEM), line(1, 2, "downloading")],
        ],
        end: unavailable(),
      },
      {
        batches: [[line(1, 3, "done"), line(1, LAST_LINE, "attempt 1 succeeded on worker w1", LogStream.SYSTEM)]],
        end: "ok",
      },
    ]);
    // The second call asks for what follows the last line shown: positions
    // have gaps, so it is that position, not a count of lines.
    expect(r.requests.map((q) => q.afterPosition)).toEqual([0n, logPosition(1, 2)]);
    expect(r.requests.every((q) => q.follow === true && q.jobId === "job-1")).toBe(true);
    expect(r.received.map((l) => l.message)).toEqual([
      "enqueued",
      "attempt 1 of 3 leased by worker w1",
      "downloading",
      "done",
      "attempt 1 succeeded on worker w1",
    ]);
    expect(r.statuses).toEqual(["connecting", "following", "retrying", "following", "ended"]);
    expect(r.errors[2]).toBe(Code.Unavailable);
    expect(r.sleeps).toEqual([FIRST_RETRY_MS]);
    expect(r.last).toBe(logPosition(1, LAST_LINE));
  });

  it("resumes from the position it is given (a tab back from the background)", async () => {
    const r = await follow([{ batches: [[line(2, 5, "more")]], end: "ok" }], logPosition(2, 4));
    expect(r.requests[0]?.afterPosition).toBe(logPosition(2, 4));
    expect(r.last).toBe(logPosition(2, 5));
  });

  it("backs off while the server stays away, and starts again from the first wait once lines flow", async () => {
    const down = (): Call => ({ batches: [], end: unavailable(), header: false });
    const r = await follow([
      down(),
      down(),
      down(),
      down(),
      down(),
      { batches: [[line(0, 1, "enqueued")]], end: unavailable() },
      down(),
      { batches: [], end: "ok" },
    ]);
    expect(r.sleeps).toEqual([1000, 2000, 4000, 8000, MAX_RETRY_MS, FIRST_RETRY_MS, 2000]);
    expect(r.requests.map((q) => q.afterPosition)).toEqual([0n, 0n, 0n, 0n, 0n, 0n, logPosition(0, 1), logPosition(0, 1)]);
    expect(r.statuses.at(-1)).toBe("ended");
    // Only the very first try says "connecting"; later ones are reconnects.
    expect(r.statuses.filter((s) => s === "connecting")).toHaveLength(1);
  });

  it("never hands over a line twice", async () => {
    const r = await follow([{ batches: [[line(1, 1, "old"), line(1, 2, "seen"), line(1, 3, "new")]], end: "ok" }], logPosition(1, 2));
    expect(r.received.map((l) => l.message)).toEqual(["new"]);
  });

  it("gives up on errors that retrying cannot fix", async () => {
    const r = await follow([{ batches: [], end: new ConnectError("job job-1 not found", Code.NotFound) }]);
    expect(r.statuses).toEqual(["connecting", "following", "failed"]);
    expect(r.errors.at(-1)).toBe(Code.NotFound);
    expect(r.requests).toHaveLength(1);
    expect(r.sleeps).toEqual([]);
  });

  it("stops without reconnecting when the page closes the stream", async () => {
    const abort = new AbortController();
    const statuses: FollowStatus[] = [];
    let calls = 0;
    const client: FollowOptions["client"] = {
      streamJobLogs: () => {
        calls++;
        return (async function* () {
          yield create(StreamJobLogsResponseSchema, { lines: [line(0, 1, "enqueued")] });
          abort.abort();
          throw new ConnectError("aborted", Code.Canceled);
        })();
      },
    };
    const last = await followLog({ client, jobId: "j", afterPosition: 0n, signal: abort.signal, onLines: () => undefined, onStatus: (s) => statuses.push(s) });
    expect(calls).toBe(1);
    expect(statuses).not.toContain("ended");
    expect(statuses).not.toContain("retrying");
    expect(last).toBe(logPosition(0, 1));
  });
});

describe("followLog with the job still running", () => {
  it("resumes after the last line when the stream ends OK while the page still sees the job running", async () => {
    let running = 2;
    const { requests, statuses, received } = await follow(
      [
        { batches: [[line(1, 0, "a"), line(1, 1, "b")]], end: "ok" },
        { batches: [[line(1, 2, "c")]], end: "ok" },
        { batches: [[line(1, 3, "d")]], end: "ok" },
      ],
      0n,
      () => running-- > 0,
    );
    expect(received.map((l) => l.message)).toEqual(["a", "b", "c", "d"]);
    expect(requests.map((r) => r.afterPosition)).toEqual([0n, logPosition(1, 1), logPosition(1, 2)]);
    expect(statuses.filter((s) => s === "retrying")).toHaveLength(2);
    expect(statuses[statuses.length - 1]).toBe("ended");
  });
});

