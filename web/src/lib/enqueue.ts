//! Sending the enqueue form: every submission carries a request id
//! (EnqueueJobRequest.request_id, AIP-155), so trying it again can never
//! create a second job.
//!
//! - A new submission gets a fresh random UUID.
//! - When a call fails in a way that does not say whether the server got it
//!   (UNAVAILABLE, a network error, a timeout), it is sent again
//!   automatically, a few times, with the same id: the server answers a
//!   repeated id with the job the first call created (`already_exists`).
//! - When those tries are used up and the person presses "Enqueue" again
//!   without changing the form, that is still the same submission: it keeps
//!   the id. A changed form, or one that was enqueued or refused, gets a new
//!   one.
import { create, equals } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { JobSpecSchema, type Job, type JobSpec } from "../gen/jobq/v1/job_pb";
import type { JobQueueClient } from "./api";
import type { JobSpecInit } from "./jobtypes";

/**
 * Failures after which the job may or may not exist: the call is repeated
 * with the same request id. (`Unknown` is what a failed fetch becomes.)
 */
const AMBIGUOUS_CODES: ReadonlySet<Code> = new Set([Code.Unavailable, Code.Unknown, Code.DeadlineExceeded, Code.Aborted]);

/** Waits before the 2nd and 3rd try. */
export const RETRY_DELAYS_MS: readonly number[] = [500, 1500];

/** Whether the server may have acted on a call that failed with `err`. */
export function isAmbiguous(err: unknown): boolean {
  return AMBIGUOUS_CODES.has(ConnectError.from(err).code);
}

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * A random (version 4) UUID. `crypto.randomUUID` exists only in secure
 * contexts (https or localhost); a dashboard served over plain http from
 * another host has only `crypto.getRandomValues`.
 */
export function newRequestId(): string {
  const c = globalThis.crypto;
  if (typeof c?.randomUUID === "function") return c.randomUUID();
  const b = c.getRandomValues(new Uint8Array(16));
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = hex(b);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export interface EnqueueOutcome {
  job: Job | undefined;
  alreadyExists: boolean;
  requestId: string;
  /** Calls made for this result (1 when the first one answered). */
  tries: number;
  /** The id was kept from an earlier press whose calls all failed ambiguously. */
  resumed: boolean;
}

export interface EnqueuerOptions {
  client: Pick<JobQueueClient, "enqueueJob">;
  /** Waits between tries (tests pass one that does not wait). */
  sleep?: (ms: number) => Promise<void>;
  /** Makes request ids (tests may pass a predictable one). */
  newId?: () => string;
  retryDelaysMs?: readonly number[];
}

export interface Enqueuer {
  /** Enqueues `spec`; throws the last error when it could not. */
  submit(spec: JobSpecInit): Promise<EnqueueOutcome>;
}

const sleepFor = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** The enqueue form's sender; one per form, it remembers an unfinished submission. */
export function createEnqueuer(o: EnqueuerOptions): Enqueuer {
  const sleep = o.sleep ?? sleepFor;
  const newId = o.newId ?? newRequestId;
  const delays = o.retryDelaysMs ?? RETRY_DELAYS_MS;
  /** A submission whose every call failed ambiguously: the job may exist. */
  let unfinished: { job: JobSpec; requestId: string } | undefined;

  return {
    async submit(init) {
      const job = create(JobSpecSchema, init);
      const resumed = unfinished !== undefined && equals(JobSpecSchema, unfinished.job, job);
      const requestId = resumed && unfinished ? unfinished.requestId : newId();
      unfinished = undefined;
      for (let tries = 1; ; tries++) {
        try {
          const res = await o.client.enqueueJob({ job, requestId });
          return { job: res.job, alreadyExists: res.alreadyExists, requestId, tries, resumed };
        } catch (err) {
          const delay = delays[tries - 1];
          if (!isAmbiguous(err)) throw err;
          if (delay === undefined) {
            unfinished = { job, requestId };
            throw err;
          }
          await sleep(delay);
        }
      }
    },
  };
}

/** What the form says after a submission. */
export function enqueuedMessage(spec: JobSpecInit, r: EnqueueOutcome): string {
  const id = r.job?.id ?? "";
  if (!r.alreadyExists) return `Enqueued ${spec.type} job ${id}`;
  const repeated = r.tries > 1 || r.resumed;
  if (!spec.uniqueKey) {
    // Without a unique key only the request id can name an existing job:
    // an earlier try of this submission reached the server.
    return `Enqueued ${spec.type} job ${id}`;
  }
  return repeated
    ? `Job ${id} exists (created by an earlier try, or it holds this unique key)`
    : `A job with this unique key exists already: ${id}`;
}
