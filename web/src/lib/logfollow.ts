//! Following one job's log with StreamJobLogs: a stream that ends with an
//! error (UNAVAILABLE when the server shuts down, a dropped connection) is
//! opened again after the last position received, backing off; one that
//! ends normally (OK) means the job finished and its log is complete —
//! unless the page still sees the job running, then it is resumed too.
import { Code, ConnectError } from "@connectrpc/connect";
import type { LogLine } from "../gen/jobq/v1/log_pb";
import type { JobQueueClient } from "./api";

export type FollowStatus = "connecting" | "following" | "retrying" | "ended" | "failed";

/** Errors that trying again cannot fix: the job is gone, or the call is refused as such. */
const FINAL_CODES: ReadonlySet<Code> = new Set([Code.NotFound, Code.InvalidArgument, Code.PermissionDenied, Code.Unimplemented]);

export const FIRST_RETRY_MS = 1000;
export const MAX_RETRY_MS = 15_000;

export interface FollowOptions {
  client: Pick<JobQueueClient, "streamJobLogs">;
  jobId: string;
  /** Lines after this position (0n: from the start of the log). */
  afterPosition: bigint;
  signal: AbortSignal;
  /** New lines, in position order; each position is greater than the last one given. */
  onLines(lines: LogLine[]): void;
  /** The stream's state; `error` is set for "retrying" and "failed". */
  onStatus(status: FollowStatus, error?: ConnectError): void;
  /** Whether the job is still running, as the page knows it: a stream that ends while it is was cut short. */
  stillRunning?: () => boolean;
  /** Waits before trying again (tests pass one that does not wait). */
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
}

function sleepFor(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(t);
      resolve();
    });
  });
}

/**
 * Follows the log until it is complete ("ended"), an error that retrying
 * cannot fix ("failed"), or `signal` aborts. Resolves with the position of
 * the last line received, to resume from later.
 *
 * Positions are (entry << 32) | line: they only grow but have gaps, so the
 * resume point is the last position seen, never a count of lines.
 */
export async function followLog(o: FollowOptions): Promise<bigint> {
  const sleep = o.sleep ?? sleepFor;
  let last = o.afterPosition;
  let retryMs = FIRST_RETRY_MS;
  let retrying = false;
  while (!o.signal.aborted) {
    if (!retrying) o.onStatus("connecting");
    try {
      const stream = o.client.streamJobLogs(
        { jobId: o.jobId, follow: true, afterPosition: last },
        { signal: o.signal, timeoutMs: 0, onHeader: () => o.onStatus("following") },
      );
      for await (const res of stream) {
        retrying = false;
        retryMs = FIRST_RETRY_MS;
        // The server never repeats a line after the position asked for; a
        // line at or before it would be one already shown.
        const fresh = res.lines.filter((l) => l.position > last);
        const newest = fresh[fresh.length - 1];
        if (!newest) continue;
        last = newest.position;
        o.onLines(fresh);
      }
      if (o.signal.aborted) break;
      // An OK end means the log is complete, unless the job still runs:
      // then the server went away mid-stream; resume after the last line.
      if (o.stillRunning?.()) {
        retrying = true;
        o.onStatus("retrying");
        await sleep(retryMs, o.signal);
        retryMs = Math.min(retryMs * 2, MAX_RETRY_MS);
        continue;
      }
      o.onStatus("ended");
      return last;
    } catch (err) {
      if (o.signal.aborted) break;
      const e = ConnectError.from(err);
      if (e.code === Code.Canceled) break;
      if (FINAL_CODES.has(e.code)) {
        o.onStatus("failed", e);
        return last;
      }
      retrying = true;
      o.onStatus("retrying", e);
      await sleep(retryMs, o.signal);
      retryMs = Math.min(retryMs * 2, MAX_RETRY_MS);
    }
  }
  return last;
}
