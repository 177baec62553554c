#!/usr/bin/env python3
"""A jobq client in Python, written the way another team would write one.

The stubs are generated from the repository's proto/ (jobq/v1 and
google/rpc) with grpcio-tools into a temporary directory at start; nothing
generated is kept. Then one job goes through the producer and worker APIs
against a running server, and every answer is checked:

- EnqueueJob with a dict payload and a request_id, and again with the same
  request_id (same job, already_exists); reusing it for another type is refused
  (REQUEST_ID_REUSED);
- GetJob; ListJobs in the BASIC view (no payload) and the FULL view;
- LeaseJobs; Heartbeat with optional progress fields (unset keeps, "" clears);
- PushJobLogs, a client stream with first_sequence, whose resend is not stored twice;
- CompleteJob with a dict result;
- StreamJobLogs: the lifecycle lines and the pushed lines, in order, with
  strictly increasing positions (entry << 32 | line);
- errors: google.rpc.Status read from the trailing metadata
  `grpc-status-details-bin` (ErrorInfo reason LEASE_STALE for a stale lease,
  BadRequest for an invalid id), and the google.rpc.Status embedded in the
  items of a batch report.

    python3 -m pip install -r tests/python/requirements.txt
    python3 tests/python/jobq_client_check.py --server 127.0.0.1:50051

Exit 0 when every check held, 1 (with the check that failed on stderr)
otherwise, 2 for bad usage. Only the given address is contacted, and every
call has a deadline.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
from google.protobuf import duration_pb2, json_format, struct_pb2

# Deadline of every unary call and of every stream, in seconds.
CALL_TIMEOUT = 15.0
# How long LeaseJobs may wait for the job (it is queued already, so it comes at once).
LEASE_WAIT_SECONDS = 5
# Line number of an entry's closing line (see LogLine in log.proto).
CLOSING_LINE = 2**32 - 1

# tests/python/ -> the repository root, whose proto/ is the default.
DEFAULT_PROTO_DIR = Path(__file__).resolve().parent.parent.parent / "proto"


class CheckFailed(Exception):
    """A check against the server's answers did not hold."""


def check(condition: bool, what: str) -> None:
    """Fails the run with `what` unless `condition` holds (unlike assert, also under -O)."""
    if not condition:
        raise CheckFailed(what)


def position(entry: int, line: int) -> int:
    """A log position: (entry << 32) | line."""
    return (entry << 32) | line


def split_position(pos: int) -> tuple[int, int]:
    return pos >> 32, pos & 0xFFFFFFFF


# ---- stubs ------------------------------------------------------------------


def generate_stubs(proto_root: Path, out_dir: Path) -> None:
    """Runs grpcio-tools' protoc over jobq/v1 and google/rpc into out_dir."""
    from grpc_tools import protoc

    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    files = sorted(
        str(path.relative_to(proto_root))
        for pattern in ("jobq/v1/*.proto", "google/rpc/*.proto")
        for path in proto_root.glob(pattern)
    )
    check(
        any(name.endswith("worker_service.proto") for name in files),
        f"no jobq/v1 protos under {proto_root}",
    )
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *files,
        ]
    )
    check(code == 0, f"protoc failed (exit {code}) on {files}")
    # Regular packages, so that an installed googleapis-common-protos (which
    # also has a google.rpc) cannot shadow the google/rpc generated here.
    for package in ("jobq", "jobq/v1", "google/rpc"):
        (out_dir / package / "__init__.py").touch()


class Api:
    """The generated modules, imported after generation."""

    def __init__(self, out_dir: Path) -> None:
        sys.path.insert(0, str(out_dir))
        load = importlib.import_module
        self.job = load("jobq.v1.job_pb2")
        self.log = load("jobq.v1.log_pb2")
        self.queue = load("jobq.v1.queue_service_pb2")
        self.queue_grpc = load("jobq.v1.queue_service_pb2_grpc")
        self.worker = load("jobq.v1.worker_service_pb2")
        self.worker_grpc = load("jobq.v1.worker_service_pb2_grpc")
        self.status = load("google.rpc.status_pb2")
        self.details = load("google.rpc.error_details_pb2")
        check(
            Path(self.status.__file__).resolve().is_relative_to(out_dir.resolve()),
            f"google.rpc.status_pb2 came from {self.status.__file__}, not from the generated stubs",
        )


# ---- JSON values and error details ------------------------------------------


def to_value(data) -> struct_pb2.Value:
    """Any JSON-like Python value as a google.protobuf.Value."""
    value = struct_pb2.Value()
    json_format.ParseDict(data, value)
    return value


def from_value(value: struct_pb2.Value):
    """A google.protobuf.Value as plain Python (numbers come back as floats)."""
    return json_format.MessageToDict(value)


def rich_status(api: Api, error: grpc.RpcError):
    """The google.rpc.Status the server put in the trailing metadata, or None."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return api.status.Status.FromString(value)
    return None


def unpack_details(api: Api, status, message_type) -> list:
    """The details of `status` that are of `message_type`, unpacked."""
    found = []
    for detail in status.details:
        if detail.Is(message_type.DESCRIPTOR):
            message = message_type()
            detail.Unpack(message)
            found.append(message)
    return found


def expect_rpc_error(api: Api, call, code: grpc.StatusCode, what: str):
    """Runs `call`, which must fail with `code`; returns (error, google.rpc.Status)."""
    try:
        answer = call()
    except grpc.RpcError as error:
        check(
            error.code() == code,
            f"{what}: expected {code.name}, got {error.code().name}: {error.details()}",
        )
        status = rich_status(api, error)
        check(status is not None, f"{what}: no grpc-status-details-bin in the trailing metadata")
        check(
            status.code == code.value[0],
            f"{what}: google.rpc.Status.code is {status.code}, the call's status is {code.name}",
        )
        check(
            status.message == error.details(),
            f"{what}: google.rpc.Status.message {status.message!r} != status message {error.details()!r}",
        )
        return error, status
    raise CheckFailed(f"{what}: expected {code.name}, but the call succeeded: {answer}")


def error_info(api: Api, status, what: str):
    infos = unpack_details(api, status, api.details.ErrorInfo)
    check(len(infos) == 1, f"{what}: expected one google.rpc.ErrorInfo, got {list(status.details)}")
    check(infos[0].domain == "jobq.v1", f"{what}: ErrorInfo.domain is {infos[0].domain!r}")
    return infos[0]


# ---- the scenario -------------------------------------------------------------


class Run:
    def __init__(self, api: Api, channel: grpc.Channel) -> None:
        self.api = api
        self.queue = api.queue_grpc.JobQueueServiceStub(channel)
        self.worker = api.worker_grpc.WorkerServiceStub(channel)
        suffix = uuid.uuid4().hex[:8]
        # A type of its own, so that nothing else on the server leases these jobs.
        self.job_type = f"py_thumbnail_{suffix}"
        self.worker_id = f"py-worker-{suffix}"
        self.checks = 0

    def ok(self, what: str) -> None:
        self.checks += 1
        print(f"ok   {what}", flush=True)

    def get_job(self, job_id: str):
        return self.queue.GetJob(self.api.queue.GetJobRequest(job_id=job_id), timeout=CALL_TIMEOUT).job

    # -- producer ---------------------------------------------------------------

    def enqueue(self, payload: dict) -> str:
        pb, job = self.api.queue, self.api.job
        request_id = str(uuid.uuid4())
        request = pb.EnqueueJobRequest(
            job=job.JobSpec(type=self.job_type, payload=to_value(payload), tags=["python"]),
            request_id=request_id,
        )
        first = self.queue.EnqueueJob(request, timeout=CALL_TIMEOUT)
        check(first.job.id != "", "EnqueueJob answered without a job id")
        check(not first.already_exists, "the first EnqueueJob says already_exists")
        check(first.job.state == job.JOB_STATE_QUEUED, f"new job is {job.JobState.Name(first.job.state)}")
        check(not first.job.HasField("payload"), "EnqueueJob's answer (BASIC view) carries the payload")
        self.ok(f"EnqueueJob with a dict payload and request_id -> {first.job.id}")

        # The same call again, as a client would after a timeout.
        again = self.queue.EnqueueJob(request, timeout=CALL_TIMEOUT)
        check(again.already_exists, "EnqueueJob repeated with the same request_id: already_exists not set")
        check(
            again.job.id == first.job.id,
            f"EnqueueJob repeated with the same request_id made another job: {again.job.id}",
        )
        self.ok("EnqueueJob again with the same request_id: the same job, already_exists")

        reused = pb.EnqueueJobRequest(job=job.JobSpec(type=self.job_type + "_other"), request_id=request_id)
        _, status = expect_rpc_error(
            self.api,
            lambda: self.queue.EnqueueJob(reused, timeout=CALL_TIMEOUT),
            grpc.StatusCode.FAILED_PRECONDITION,
            "EnqueueJob reusing a request_id for another type",
        )
        reason = error_info(self.api, status, "request_id reused").reason
        check(reason == "REQUEST_ID_REUSED", f"request_id reused: ErrorInfo.reason is {reason!r}")
        self.ok("a request_id reused for another type: FAILED_PRECONDITION, ErrorInfo REQUEST_ID_REUSED")
        return first.job.id

    def read_back(self, job_id: str, payload: dict) -> None:
        job = self.get_job(job_id)
        check(job.type == self.job_type, f"GetJob: type {job.type!r}")
        check(job.HasField("payload"), "GetJob (FULL view) has no payload")
        check(from_value(job.payload) == payload, f"GetJob payload {from_value(job.payload)!r} != {payload!r}")
        check(list(job.tags) == ["python"], f"GetJob tags {list(job.tags)}")
        self.ok("GetJob returns the payload as sent")

        pb, views = self.api.queue, self.api.job
        for view, has_payload in (
            (views.JOB_VIEW_UNSPECIFIED, False),
            (views.JOB_VIEW_BASIC, False),
            (views.JOB_VIEW_FULL, True),
        ):
            name = views.JobView.Name(view)
            page = self.queue.ListJobs(
                pb.ListJobsRequest(types=[self.job_type], view=view, page_size=10), timeout=CALL_TIMEOUT
            )
            check([j.id for j in page.jobs] == [job_id], f"ListJobs {name}: ids {[j.id for j in page.jobs]}")
            listed = page.jobs[0]
            check(listed.HasField("payload") == has_payload, f"ListJobs {name}: payload present = {listed.HasField('payload')}")
            if has_payload:
                check(from_value(listed.payload) == payload, f"ListJobs {name}: payload {from_value(listed.payload)!r}")
            check(not listed.HasField("result"), f"ListJobs {name}: a queued job has a result")
        self.ok("ListJobs: no payload in the BASIC (and default) view, the payload in the FULL view")

    # -- worker -----------------------------------------------------------------

    def lease(self, job_id: str, payload: dict):
        pb, job = self.api.worker, self.api.job
        answer = self.worker.LeaseJobs(
            pb.LeaseJobsRequest(
                worker_id=self.worker_id,
                types=[self.job_type],
                max_jobs=1,
                wait=duration_pb2.Duration(seconds=LEASE_WAIT_SECONDS),
                lease_duration=duration_pb2.Duration(seconds=60),
                hostname="python-check",
                version="jobq_client_check/1",
                max_response_bytes=1 << 20,
            ),
            timeout=CALL_TIMEOUT + LEASE_WAIT_SECONDS,
        )
        check(len(answer.jobs) == 1, f"LeaseJobs leased {len(answer.jobs)} jobs, expected 1")
        leased = answer.jobs[0]
        check(leased.job.id == job_id, f"LeaseJobs leased {leased.job.id}, not {job_id}")
        check(leased.job.state == job.JOB_STATE_RUNNING, f"leased job is {job.JobState.Name(leased.job.state)}")
        check(leased.job.attempt == 1, f"leased job attempt {leased.job.attempt}")
        check(leased.attempt_seq == 1, f"leased job attempt_seq {leased.attempt_seq}")
        check(leased.lease_token != "", "no lease token")
        check(leased.HasField("lease_expires_at"), "no lease_expires_at")
        check(from_value(leased.job.payload) == payload, f"leased payload {from_value(leased.job.payload)!r}")
        self.ok(f"LeaseJobs hands the job out with its payload (attempt_seq {leased.attempt_seq})")
        return pb.JobLease(job_id=job_id, lease_token=leased.lease_token), leased.attempt_seq

    def heartbeat(self, lease, **progress):
        pb = self.api.worker
        answer = self.worker.Heartbeat(
            pb.HeartbeatRequest(worker_id=self.worker_id, leases=[pb.LeaseProgress(lease=lease, **progress)]),
            timeout=CALL_TIMEOUT,
        )
        check(len(answer.results) == 1, f"Heartbeat answered {len(answer.results)} results")
        return answer.results[0]

    def heartbeats(self, lease) -> None:
        pb = self.api.worker
        steps = [
            ({"progress_percent": 25, "progress_message": "resizing 64px"}, (25, "resizing 64px"), "both set"),
            ({}, (25, "resizing 64px"), "neither set: both kept"),
            ({"progress_percent": 60}, (60, "resizing 64px"), "percent only: message kept"),
            ({"progress_message": ""}, (60, ""), 'message "": cleared, percent kept'),
        ]
        for fields, (percent, message), what in steps:
            result = self.heartbeat(lease, **fields)
            check(result.job_id == lease.job_id, f"Heartbeat result for {result.job_id}")
            check(
                not result.stop,
                f"Heartbeat ({what}) says stop: {pb.StopReason.Name(result.reason)}",
            )
            check(result.HasField("lease_expires_at"), f"Heartbeat ({what}): no lease_expires_at")
            job = self.get_job(lease.job_id)
            check(
                (job.progress_percent, job.progress_message) == (percent, message),
                f"after a Heartbeat with {what}: progress ({job.progress_percent}, {job.progress_message!r}),"
                f" expected ({percent}, {message!r})",
            )
        self.ok("Heartbeat progress: unset fields keep the stored value, an empty message clears it")

    def push(self, batches):
        return self.worker.PushJobLogs(iter(batches), timeout=CALL_TIMEOUT)

    def push_logs(self, lease, attempt_seq: int) -> list[tuple[int, str]]:
        log, pb = self.api.log, self.api.worker
        stdout, stderr = log.LOG_STREAM_STDOUT, log.LOG_STREAM_STDERR
        fields = struct_pb2.Struct()
        fields.update({"size": 256, "format": "jpeg"})
        first = pb.PushJobLogsRequest(
            lease=lease,
            first_sequence=1,
            entries=[
                log.LogEntry(stream=stdout, message="resizing to 64px"),
                log.LogEntry(stream=stdout, message="resizing to 256px", fields=fields),
            ],
        )
        second = pb.PushJobLogsRequest(
            lease=lease,
            first_sequence=3,
            entries=[log.LogEntry(stream=stderr, message="warning: EXIF orientation ignored")],
        )
        answer = self.push([first, second])
        check(
            (answer.accepted_lines, answer.duplicate_lines) == (3, 0),
            f"PushJobLogs of 3 new lines: accepted {answer.accepted_lines}, duplicates {answer.duplicate_lines}",
        )
        # Line 1 of the attempt's entry is the server's opening line.
        check(
            answer.last_position == position(attempt_seq, 4),
            f"PushJobLogs last_position {answer.last_position} {split_position(answer.last_position)},"
            f" expected {position(attempt_seq, 4)} ({attempt_seq}, 4)",
        )
        self.ok("PushJobLogs (client stream, two messages with first_sequence 1 and 3) stores 3 lines")

        # The answer got lost: the worker sends the same batches again.
        answer = self.push([first, second])
        check(
            (answer.accepted_lines, answer.duplicate_lines) == (0, 3),
            f"PushJobLogs resent: accepted {answer.accepted_lines}, duplicates {answer.duplicate_lines}",
        )
        # Overlapping: line 3 again, line 4 new.
        overlap = pb.PushJobLogsRequest(
            lease=lease,
            first_sequence=3,
            entries=[
                log.LogEntry(stream=stderr, message="warning: EXIF orientation ignored"),
                log.LogEntry(stream=stdout, message="wrote 2 thumbnails"),
            ],
        )
        answer = self.push([overlap])
        check(
            (answer.accepted_lines, answer.duplicate_lines) == (1, 1),
            f"PushJobLogs overlapping: accepted {answer.accepted_lines}, duplicates {answer.duplicate_lines}",
        )
        check(
            answer.last_position == position(attempt_seq, 5),
            f"PushJobLogs overlapping: last_position {split_position(answer.last_position)}",
        )
        self.ok("PushJobLogs sent again: nothing stored twice (duplicate_lines), only the new line stored")
        return [
            (stdout, "resizing to 64px"),
            (stdout, "resizing to 256px"),
            (stderr, "warning: EXIF orientation ignored"),
            (stdout, "wrote 2 thumbnails"),
        ]

    def complete(self, lease, result: dict) -> None:
        pb, job = self.api.worker, self.api.job
        answer = self.worker.CompleteJob(
            pb.CompleteJobRequest(lease=lease, result=to_value(result)), timeout=CALL_TIMEOUT
        )
        outcome = answer.outcome
        check(outcome.job_id == lease.job_id, f"CompleteJob outcome for {outcome.job_id}")
        check(outcome.state == job.JOB_STATE_SUCCEEDED, f"CompleteJob outcome {job.JobState.Name(outcome.state)}")
        check(outcome.attempt == 1, f"CompleteJob outcome attempt {outcome.attempt}")
        done = self.get_job(lease.job_id)
        check(done.state == job.JOB_STATE_SUCCEEDED, f"GetJob after CompleteJob: {job.JobState.Name(done.state)}")
        check(from_value(done.result) == result, f"GetJob result {from_value(done.result)!r} != {result!r}")
        check(done.HasField("finished_at"), "succeeded job has no finished_at")
        check(
            [(a.seq, a.worker_id, a.outcome) for a in done.attempts]
            == [(1, self.worker_id, job.ATTEMPT_OUTCOME_SUCCEEDED)],
            f"attempts {[(a.seq, a.worker_id, job.AttemptOutcome.Name(a.outcome)) for a in done.attempts]}",
        )
        self.ok("CompleteJob with a dict result: SUCCEEDED, GetJob returns the result")

    def stream_logs(self, job_id: str, **fields) -> list:
        pb = self.api.queue
        lines = []
        for message in self.queue.StreamJobLogs(
            pb.StreamJobLogsRequest(job_id=job_id, **fields), timeout=CALL_TIMEOUT
        ):
            lines.extend(message.lines)
        return lines

    def replay(self, job_id: str, attempt_seq: int, pushed: list[tuple[int, str]]) -> None:
        log = self.api.log
        lines = self.stream_logs(job_id)
        described = [(split_position(l.position), log.LogStream.Name(l.stream), l.message) for l in lines]
        positions = [l.position for l in lines]
        check(
            all(a < b for a, b in zip(positions, positions[1:])),
            f"StreamJobLogs positions are not strictly increasing: {described}",
        )
        check(len(lines) >= 3 + len(pushed), f"StreamJobLogs sent too few lines: {described}")

        enqueued = lines[0]
        check(
            split_position(enqueued.position)[0] == 0
            and enqueued.stream == log.LOG_STREAM_SYSTEM
            and "enqueued" in enqueued.message,
            f"the first line is not the enqueue (entry 0, system): {described[0]}",
        )
        attempt_lines = [l for l in lines if split_position(l.position)[0] == attempt_seq]
        check(
            all(l.attempt == attempt_seq for l in attempt_lines),
            f"lines of entry {attempt_seq} not tagged attempt {attempt_seq}: {described}",
        )
        opening, *middle, closing = attempt_lines
        check(
            opening.position == position(attempt_seq, 1)
            and opening.stream == log.LOG_STREAM_SYSTEM
            and self.worker_id in opening.message,
            f"the attempt's opening line is not line 1 naming the worker: {split_position(opening.position)} {opening.message!r}",
        )
        worker_lines = [(l.stream, l.message) for l in middle if l.stream != log.LOG_STREAM_SYSTEM]
        check(
            worker_lines == pushed,
            f"pushed lines replayed as {worker_lines}, expected {pushed}",
        )
        numbers = [split_position(l.position)[1] for l in middle]
        check(
            numbers == list(range(2, 2 + len(middle))),
            f"the pushed lines are not lines 2.. without gaps: {numbers}",
        )
        fields = json_format.MessageToDict(middle[1].fields)
        check(fields == {"size": 256, "format": "jpeg"}, f"the fields of a pushed line came back as {fields}")
        check(
            closing.position == position(attempt_seq, CLOSING_LINE)
            and closing.stream == log.LOG_STREAM_SYSTEM
            and "succeeded" in closing.message,
            f"the attempt's closing line: {split_position(closing.position)} {closing.message!r}",
        )
        check(lines[-1].position == closing.position, f"lines after the closing line: {described}")
        self.ok(f"StreamJobLogs replays {len(lines)} lines: enqueue, attempt opening, pushed lines, closing")

        # Resuming after a position neither skips nor repeats a line.
        resumed = self.stream_logs(job_id, after_position=opening.position)
        check(
            [l.position for l in resumed] == [l.position for l in lines if l.position > opening.position],
            f"StreamJobLogs after_position={opening.position}: {[split_position(l.position) for l in resumed]}",
        )
        # Following a finished job's log ends by itself once everything is sent.
        followed = self.stream_logs(job_id, follow=True)
        check(
            [l.position for l in followed] == positions,
            f"StreamJobLogs follow=true on a finished job: {[split_position(l.position) for l in followed]}",
        )
        self.ok("StreamJobLogs after_position resumes exactly; follow on a finished job ends with OK")

    def stale_lease(self, lease) -> None:
        pb = self.api.worker
        # The same report again (its answer was lost): answered as the first was.
        repeated = self.worker.CompleteJob(
            pb.CompleteJobRequest(lease=lease, result=to_value({"again": True})), timeout=CALL_TIMEOUT
        )
        check(
            repeated.outcome.state == self.api.job.JOB_STATE_SUCCEEDED,
            f"CompleteJob repeated with the same lease: {repeated}",
        )
        self.ok("CompleteJob sent again with the same lease: answered as the first (SUCCEEDED)")

        # Another ending for an attempt that already ended is refused.
        request = pb.FailJobRequest(lease=lease, error="too late", retryable=True)
        _, status = expect_rpc_error(
            self.api,
            lambda: self.worker.FailJob(request, timeout=CALL_TIMEOUT),
            grpc.StatusCode.FAILED_PRECONDITION,
            "FailJob with a stale lease",
        )
        info = error_info(self.api, status, "FailJob with a stale lease")
        check(info.reason == "LEASE_STALE", f"stale FailJob: ErrorInfo.reason {info.reason!r}")
        check(
            info.metadata.get("job_id") == lease.job_id,
            f"stale FailJob: ErrorInfo.metadata {dict(info.metadata)}",
        )
        self.ok("FailJob with a stale lease: FAILED_PRECONDITION, ErrorInfo LEASE_STALE from grpc-status-details-bin")

        _, status = expect_rpc_error(
            self.api,
            lambda: self.push(
                [
                    pb.PushJobLogsRequest(
                        lease=lease,
                        first_sequence=6,
                        entries=[self.api.log.LogEntry(stream=self.api.log.LOG_STREAM_STDOUT, message="late")],
                    )
                ]
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "PushJobLogs with a stale lease",
        )
        reason = error_info(self.api, status, "PushJobLogs with a stale lease").reason
        check(reason == "LEASE_STALE", f"stale PushJobLogs: ErrorInfo.reason {reason!r}")

        result = self.heartbeat(lease, progress_percent=99)
        check(
            result.stop and result.reason == pb.STOP_REASON_LEASE_LOST,
            f"Heartbeat with a stale lease: stop={result.stop} reason={pb.StopReason.Name(result.reason)}",
        )

        batch = self.worker.FailJobs(pb.FailJobsRequest(jobs=[request]), timeout=CALL_TIMEOUT)
        check(len(batch.results) == 1, f"FailJobs answered {len(batch.results)} results")
        item = batch.results[0]
        check(item.job_id == lease.job_id, f"FailJobs item for {item.job_id}")
        check(
            item.status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0],
            f"FailJobs item status code {item.status.code}",
        )
        reason = error_info(self.api, item.status, "FailJobs item").reason
        check(reason == "LEASE_STALE", f"FailJobs item: ErrorInfo.reason {reason!r}")
        check(not item.HasField("outcome"), "a refused FailJobs item has an outcome")
        self.ok("stale lease elsewhere: PushJobLogs LEASE_STALE, Heartbeat LEASE_LOST, FailJobs item google.rpc.Status LEASE_STALE")

        _, status = expect_rpc_error(
            self.api,
            lambda: self.get_job("not-a-job-id"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "GetJob with an invalid id",
        )
        violations = [
            violation.field
            for bad in unpack_details(self.api, status, self.api.details.BadRequest)
            for violation in bad.field_violations
        ]
        check(violations == ["job_id"], f"GetJob with an invalid id: BadRequest fields {violations}")
        self.ok("GetJob with an invalid id: INVALID_ARGUMENT, BadRequest names job_id")


def run(server: str, api: Api) -> int:
    started = time.monotonic()
    with grpc.insecure_channel(server) as channel:
        grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT)
        scenario = Run(api, channel)
        payload = {
            "photo": "cat.jpg",
            "sizes": [64, 256],
            "options": {"crop": True, "quality": 0.85},
            "note": None,
            "owner": {"team": "media", "account": "12345678901234567890"},
        }
        job_id = scenario.enqueue(payload)
        scenario.read_back(job_id, payload)
        lease, attempt_seq = scenario.lease(job_id, payload)
        scenario.heartbeats(lease)
        pushed = scenario.push_logs(lease, attempt_seq)
        scenario.complete(lease, {"thumbnails": ["cat-64.jpg", "cat-256.jpg"], "bytes": 18234})
        scenario.replay(job_id, attempt_seq, pushed)
        scenario.stale_lease(lease)
        print(
            f"python client: all {scenario.checks} checks passed in {time.monotonic() - started:.1f}s",
            flush=True,
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True, help="HOST:PORT of a jobq server (plaintext)")
    parser.add_argument(
        "--proto-dir",
        type=Path,
        default=DEFAULT_PROTO_DIR,
        help="root of the .proto files (default: the repository's proto/)",
    )
    args = parser.parse_args()
    try:
        with tempfile.TemporaryDirectory(prefix="jobq-python-stubs-") as out_dir:
            generate_stubs(args.proto_dir.resolve(), Path(out_dir))
            api = Api(Path(out_dir))
            print(f"ok   stubs generated from {args.proto_dir} with grpcio-tools (grpcio {grpc.__version__})", flush=True)
            return run(args.server, api)
    except CheckFailed as failure:
        print(f"FAILED: {failure}", file=sys.stderr, flush=True)
        return 1
    except grpc.RpcError as error:
        print(f"FAILED: unexpected gRPC error {error.code().name}: {error.details()}", file=sys.stderr, flush=True)
        return 1
    except grpc.FutureTimeoutError:
        print(f"FAILED: could not connect to {args.server} within {CALL_TIMEOUT}s", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
