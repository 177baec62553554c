import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
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
