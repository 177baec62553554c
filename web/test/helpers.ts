import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { JobEventSchema, JobEventType, type JobEvent } from "../src/gen/jobq/v1/event_pb";
import { JobSchema, JobState, type Job } from "../src/gen/jobq/v1/job_pb";

export function job(id: string, init: Partial<Omit<Job, "$typeName">> = {}): Job {
  return create(JobSchema, { id, type: "noop", queue: "default", state: JobState.QUEUED, ...init });
}

export function event(type: JobEventType, j: Job, init: { previousState?: JobState; timeMs?: number } = {}): JobEvent {
  return create(JobEventSchema, {
    type,
    job: j,
    previousState: init.previousState ?? JobState.UNSPECIFIED,
    time: init.timeMs !== undefined ? timestampFromMs(init.timeMs) : undefined,
  });
}

/**
 * A server stream a test feeds by hand: what it pushes is read by the
 * code under test, in order; it ends when the test ends or fails it, or
 * when the call's signal aborts (as a cancelled call does).
 */
export class FakeStream<T> implements AsyncIterable<T> {
  private queue: ({ value: T } | { error: unknown } | { done: true })[] = [];
  private wake?: () => void;

  constructor(signal?: AbortSignal) {
    signal?.addEventListener("abort", () => this.fail(new ConnectError("aborted", Code.Canceled)));
  }

  push(value: T): void {
    this.put({ value });
  }

  fail(error: unknown): void {
    this.put({ error });
  }

  end(): void {
    this.put({ done: true });
  }

  private put(item: { value: T } | { error: unknown } | { done: true }): void {
    this.queue.push(item);
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      const item = this.queue.shift();
      if (!item) {
        await new Promise<void>((r) => (this.wake = r));
        continue;
      }
      if ("error" in item) throw item.error;
      if ("done" in item) return;
      yield item.value;
    }
  }
}

/** Position of a log line: (entry << 32) | line. */
export function logPosition(entry: number, line: number): bigint {
  return (BigInt(entry) << 32n) | BigInt(line);
}
