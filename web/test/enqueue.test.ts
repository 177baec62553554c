import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { JobSchema, JobSpecSchema } from "../src/gen/jobq/v1/job_pb";
import { EnqueueJobRequestSchema, EnqueueJobResponseSchema, type EnqueueJobRequest, type EnqueueJobResponse } from "../src/gen/jobq/v1/queue_service_pb";
import { createEnqueuer, enqueuedMessage, newRequestId, RETRY_DELAYS_MS, type EnqueueOutcome } from "../src/lib/enqueue";
import { buildSpec, DEFAULT_FORM, type EnqueueForm, type JobSpecInit } from "../src/lib/jobtypes";

type Request = MessageInitShape<typeof EnqueueJobRequestSchema>;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

const spec = (f: Partial<EnqueueForm> = {}): JobSpecInit => {
  const s = buildSpec({ ...DEFAULT_FORM, type: "noop", ...f }).spec;
  if (!s) throw new Error("the form does not build");
  return s;
};

/**
 * A server that answers EnqueueJob like jobq does for request ids: a call
 * with an id it has seen returns that job with already_exists. `failures`
 * are thrown by the next calls, in turn, after (`"after"`) or before
 * (`"before"`) the job is stored: a lost answer or a refused call.
 */
function fakeServer(failures: { error: ConnectError; when: "before" | "after" }[] = []) {
  /** What went over the wire, as the server decodes it. */
  const requests: EnqueueJobRequest[] = [];
  const byRequestId = new Map<string, string>();
  let jobs = 0;
  const sleeps: number[] = [];
  const client = {
    async enqueueJob(req: Request): Promise<EnqueueJobResponse> {
      const wire = fromBinary(EnqueueJobRequestSchema, toBinary(EnqueueJobRequestSchema, create(EnqueueJobRequestSchema, req)));
      requests.push(wire);
      const failure = failures.shift();
      if (failure?.when === "before") throw failure.error;
      const seen = wire.requestId ? byRequestId.get(wire.requestId) : undefined;
      const id = seen ?? `job-${++jobs}`;
      if (wire.requestId) byRequestId.set(wire.requestId, id);
      if (failure) throw failure.error;
      return create(EnqueueJobResponseSchema, { job: create(JobSchema, { id, type: wire.job?.type }), alreadyExists: seen !== undefined });
    },
  };
  const enqueuer = createEnqueuer({
    client,
    sleep: async (ms) => {
      sleeps.push(ms);
    },
  });
  return { enqueuer, requests, sleeps, jobCount: () => jobs };
}

const unavailable = () => new ConnectError("connection reset", Code.Unavailable);

describe("enqueue request ids", () => {
  it("sends a request id (a random UUID) with the job", async () => {
    const s = fakeServer();
    const r = await s.enqueuer.submit(spec());
    expect(s.requests).toHaveLength(1);
    expect(s.requests[0]!.requestId).toMatch(UUID);
    expect(s.requests[0]!.requestId).toBe(r.requestId);
    expect(s.requests[0]!.job?.type).toBe("noop");
    expect(r).toMatchObject({ alreadyExists: false, tries: 1, resumed: false });
  });

  it("gives two separate submissions different ids, even of the same form", async () => {
    const s = fakeServer();
    await s.enqueuer.submit(spec());
    await s.enqueuer.submit(spec());
    await s.enqueuer.submit(spec({ logLines: "3" }));
    const ids = s.requests.map((r) => r.requestId);
    expect(ids.every((id) => UUID.test(id))).toBe(true);
    expect(new Set(ids).size).toBe(3);
    expect(s.jobCount()).toBe(3);
  });

  it("retries a lost answer with the same id, so only one job is created", async () => {
    const s = fakeServer([{ error: unavailable(), when: "after" }]);
    const r = await s.enqueuer.submit(spec());
    expect(s.requests).toHaveLength(2);
    expect(s.requests[1]!.requestId).toBe(s.requests[0]!.requestId);
    expect(s.sleeps).toEqual([RETRY_DELAYS_MS[0]]);
    expect(s.jobCount()).toBe(1);
    expect(r).toMatchObject({ alreadyExists: true, tries: 2 });
    expect(r.job?.id).toBe("job-1");
    // Without a unique key, already_exists can only mean an earlier try got through.
    expect(enqueuedMessage(spec(), r)).toBe("Enqueued noop job job-1");
  });

  it("keeps the id when the person sends the same form again after the tries ran out", async () => {
    const lost = RETRY_DELAYS_MS.length + 1;
    const s = fakeServer([
      { error: unavailable(), when: "after" },
      ...Array.from({ length: lost - 1 }, () => ({ error: unavailable(), when: "before" as const })),
    ]);
    await expect(s.enqueuer.submit(spec())).rejects.toThrow(/connection reset/);
    expect(s.requests).toHaveLength(lost);
    const again = await s.enqueuer.submit(spec());
    expect(again).toMatchObject({ resumed: true, alreadyExists: true, tries: 1 });
    expect(new Set(s.requests.map((r) => r.requestId)).size).toBe(1);
    expect(s.jobCount()).toBe(1);
    // That submission is done: the next one is new.
    await s.enqueuer.submit(spec());
    expect(s.requests.at(-1)!.requestId).not.toBe(s.requests[0]!.requestId);
    expect(s.jobCount()).toBe(2);
  });

  it("uses a new id when the form changed after a failure, or the failure was a refusal", async () => {
    const s = fakeServer([
      ...Array.from({ length: RETRY_DELAYS_MS.length + 1 }, () => ({ error: unavailable(), when: "before" as const })),
      { error: new ConnectError("bad payload", Code.InvalidArgument), when: "before" },
    ]);
    await expect(s.enqueuer.submit(spec())).rejects.toThrow();
    await expect(s.enqueuer.submit(spec({ logLines: "7" }))).rejects.toThrow(/bad payload/);
    await s.enqueuer.submit(spec({ logLines: "7" }));
    const [first, refused, last] = [s.requests[0]!, s.requests.at(-2)!, s.requests.at(-1)!];
    expect(refused.requestId).not.toBe(first.requestId);
    expect(last.requestId).not.toBe(refused.requestId);
    expect(s.sleeps).toHaveLength(RETRY_DELAYS_MS.length);
  });

  it("does not retry errors that say the job was not created", async () => {
    const s = fakeServer([{ error: new ConnectError("no", Code.PermissionDenied), when: "before" }]);
    await expect(s.enqueuer.submit(spec())).rejects.toThrow(/no/);
    expect(s.requests).toHaveLength(1);
    expect(s.sleeps).toEqual([]);
  });

  it("makes UUIDs without crypto.randomUUID (plain http from another host)", () => {
    expect(typeof globalThis.crypto.randomUUID).toBe("function");
    const c = globalThis.crypto as { randomUUID?: unknown };
    // Hides the method (it lives on the prototype) with an own property.
    Object.defineProperty(c, "randomUUID", { value: undefined, configurable: true, writable: true });
    try {
      const ids = Array.from({ length: 50 }, newRequestId);
      expect(ids.every((id) => UUID.test(id))).toBe(true);
      expect(new Set(ids).size).toBe(50);
    } finally {
      delete c.randomUUID;
    }
    expect(newRequestId()).toMatch(UUID);
  });

  it("says whether a unique key returned an existing job", () => {
    const keyed = spec({ uniqueKey: "k1" });
    const outcome = (o: Partial<EnqueueOutcome>): EnqueueOutcome => ({
      job: create(JobSchema, { id: "j9" }),
      alreadyExists: true,
      requestId: "r",
      tries: 1,
      resumed: false,
      ...o,
    });
    expect(enqueuedMessage(keyed, outcome({}))).toBe("A job with this unique key exists already: j9");
    expect(enqueuedMessage(keyed, outcome({ alreadyExists: false }))).toBe("Enqueued noop job j9");
    expect(enqueuedMessage(keyed, outcome({ tries: 2 }))).toMatch(/earlier try/);
    expect(create(JobSpecSchema, keyed).uniqueKey).toBe("k1");
  });
});
