// How long the jobs list takes to show 50 rows with 1,000,000 jobs stored.
// Not part of CI (filling the database takes a while):
//   cargo build --release --bins          # or use the debug build
//   cd web && JOBQ_SERVER_BIN=../target/release/jobq-server npm run perf:list
// JOBQ_PERF_JOBS sets the count (default 1,000,000). JOBQ_PERF_FILL picks how
// the jobs get there: "sql" (default: rows written straight into the server's
// SQLite file with the sqlite3 CLI, ~1 min) or "api" (EnqueueJobs batches
// through the server, which also exercises its write path but takes longer).
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fromJson, toJson } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import type { Page } from "playwright-core";
import { afterAll, beforeAll, expect, it } from "vitest";
import { AttemptOutcome, JobState } from "../src/gen/jobq/v1/job_pb";
import { launchBrowser, queueClient, screenshot, startServer, type Server } from "./harness";

const TOTAL = Number(process.env.JOBQ_PERF_JOBS ?? 1_000_000);
const FILL = process.env.JOBQ_PERF_FILL ?? "sql";
const TYPES = ["channel_download", "playlist_download", "metadata_extraction", "cleanup", "noop"];
const QUEUES = ["default", "media", "maintenance"];

let server: Server;
let dataDir = "";
let browser: Awaited<ReturnType<typeof launchBrowser>>;

/**
 * Rows written with INSERT … SELECT over a recursive counter: ids are
 * UUIDv7-shaped and time-ordered. Every row is one the server could have
 * written (migrations/src, newest: m20261130_000001_add_history_and_write_path):
 * payload_bytes is the byte length of the payload text; each job that ran
 * has one `job_attempts` row per attempt (kind 'attempt', seq 1, 2, … per
 * job, ending in the state the job is in), and its history_seq is the number
 * of those rows; request_key, lease_ms and attempt_started_at are unset
 * (no request id, nothing running), and no job has dependents.
 *
 * Of every 20 jobs: 14 succeeded (1 attempt), 2 queued, 1 dead (3 failed
 * attempts, its max_attempts), 1 cancelled while running (1 attempt),
 * 1 retrying (1 failed attempt; due in an hour) and 1 scheduled (in a day).
 */
function fillSql(total: number, now: number): string {
  const start = now - total * 10; // one job every 10 ms, ending now
  return `
PRAGMA journal_mode = WAL;
PRAGMA synchronous = OFF;
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ${total - 1}),
r AS (
  SELECT i, ${start} + i * 10 AS t,
    '{"url":"https://www.youtube.com/watch?v=' || i || '"}' AS payload,
    CASE WHEN i % 20 < 14 THEN 'succeeded' WHEN i % 20 < 16 THEN 'queued' WHEN i % 20 = 16 THEN 'dead'
         WHEN i % 20 = 17 THEN 'cancelled' WHEN i % 20 = 18 THEN 'retrying' ELSE 'scheduled' END AS state
  FROM n
),
s AS (
  SELECT *, CASE state WHEN 'dead' THEN 3 WHEN 'queued' THEN 0 WHEN 'scheduled' THEN 0 ELSE 1 END AS attempts FROM r
)
INSERT INTO jobs (id, job_type, queue, payload, payload_bytes, priority, run_at, max_attempts, timeout_ms,
  backoff_base_ms, backoff_max_ms, unique_key, request_key, tags, parent_id, traceparent, state, attempt,
  history_seq, progress_percent, progress_message, result, last_error, cancel_requested, lease_token, worker_id,
  lease_expires_at, lease_ms, attempt_deadline, attempt_started_at, created_at, started_at, finished_at,
  updated_at, schedule_name, has_dependents)
SELECT
  substr(printf('%012x', t), 1, 8) || '-' || substr(printf('%012x', t), 9, 4)
    || '-7' || printf('%03x', i % 4096) || '-8' || printf('%03x', (i / 4096) % 4096) || '-' || printf('%012x', i),
  CASE i % 5 ${TYPES.map((t, k) => `WHEN ${k} THEN '${t}'`).join(" ")} END,
  CASE i % 3 ${QUEUES.map((q, k) => `WHEN ${k} THEN '${q}'`).join(" ")} END,
  payload, length(CAST(payload AS BLOB)),
  -- scheduled jobs are due in a day, retrying ones in an hour (their worker
  -- asked for it): the server does not promote them while the test runs
  0, CASE state WHEN 'retrying' THEN ${now} + 3600000 + i WHEN 'scheduled' THEN ${now} + 86400000 + i ELSE t END,
  CASE state WHEN 'dead' THEN 3 ELSE 25 END,
  3600000, 1000, 3600000,
  CASE WHEN i % 100 = 0 THEN 'perf-' || i END, NULL, '[]', NULL, NULL,
  state, attempts, attempts,
  CASE state WHEN 'succeeded' THEN 100 ELSE 0 END, '',
  CASE state WHEN 'succeeded' THEN '{"ok":true}' END,
  CASE WHEN state IN ('dead', 'retrying') THEN 'HTTP Error 404: Not Found' END,
  0, NULL, NULL, NULL, NULL, NULL, NULL, t,
  CASE WHEN attempts > 0 THEN t + 5 END,
  -- attempt k runs from t + 5 + (k - 1) * 2000 for 4 ms
  CASE WHEN state IN ('succeeded', 'dead', 'cancelled') THEN t + 9 + (attempts - 1) * 2000 END,
  CASE WHEN attempts > 0 THEN t + 9 + (attempts - 1) * 2000 ELSE t END,
  NULL, 0
FROM s;
WITH RECURSIVE k(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM k WHERE n < 3)
INSERT INTO job_attempts (job_id, seq, kind, number, worker_id, lease_token, started_at, finished_at, outcome,
  error, cancel_requested, then_state, then_run_at)
SELECT j.id, k.n, 'attempt', k.n, 'perf-worker-' || (j.rowid % 4),
  printf('%08x-0000-4000-8000-%012x', k.n, j.rowid),
  j.started_at + (k.n - 1) * 2000, j.started_at + (k.n - 1) * 2000 + 4,
  CASE WHEN k.n < j.attempt THEN 'failed' WHEN j.state IN ('succeeded', 'cancelled') THEN j.state ELSE 'failed' END,
  CASE WHEN k.n < j.attempt OR j.state IN ('dead', 'retrying') THEN 'HTTP Error 404: Not Found' END,
  CASE WHEN k.n = j.attempt AND j.state = 'cancelled' THEN 1 ELSE 0 END,
  CASE WHEN k.n < j.attempt THEN 'retrying' ELSE j.state END,
  CASE WHEN k.n < j.attempt THEN j.started_at + k.n * 2000 WHEN j.state = 'retrying' THEN j.run_at END
FROM jobs AS j JOIN k ON k.n <= j.attempt
ORDER BY j.id, k.n;
COMMIT;
`;
}

function fillWithSql(db: string): void {
  const r = spawnSync("sqlite3", [db], { input: fillSql(TOTAL, Date.now()), encoding: "utf8", maxBuffer: 1 << 24 });
  if (r.status !== 0) throw new Error(`sqlite3 failed (apt-get install sqlite3?): ${r.stderr || r.error}`);
}

async function fillWithApi(url: string): Promise<void> {
  const api = queueClient(url);
  let next = 0;
  const lane = async () => {
    while (next < TOTAL) {
      const from = next;
      next += 1000;
      const n = Math.min(1000, TOTAL - from);
      await api.enqueueJobs({
        jobs: Array.from({ length: n }, (_, k) => ({
          type: TYPES[(from + k) % TYPES.length],
          queue: QUEUES[(from + k) % QUEUES.length],
          payload: fromJson(ValueSchema, { url: `https://www.youtube.com/watch?v=${from + k}` }),
          uniqueKey: (from + k) % 100 === 0 ? `perf-${from + k}` : "",
        })),
      });
    }
  };
  await Promise.all([lane(), lane(), lane(), lane()]);
}

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "jobq-web-perf-"));
  const started = Date.now();
  if (FILL === "sql") {
    const migrate = await startServer([], dataDir); // creates the schema
    await migrate.stop();
    fillWithSql(join(dataDir, "jobq.db"));
    server = await startServer([], dataDir);
  } else {
    server = await startServer([], dataDir);
    await fillWithApi(server.url);
  }
  console.log(`stored ${TOTAL} jobs (${FILL}) in ${((Date.now() - started) / 1000).toFixed(1)}s`);
  browser = await launchBrowser();
}, 3_600_000);

afterAll(async () => {
  await browser?.close();
  await server?.stop();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

it("reads the stored jobs back as the server wrote them", async () => {
  const api = queueClient(server.url);
  const one = async (state: JobState) => {
    const page = await api.listJobs({ states: [state], pageSize: 1 });
    const id = page.jobs[0]?.id;
    expect(id, `a ${JobState[state]} job`).toBeTruthy();
    const job = (await api.getJob({ jobId: id ?? "" })).job;
    expect(job?.payload && toJson(ValueSchema, job.payload)).toMatchObject({ url: expect.stringMatching(/^https:/) });
    return job;
  };
  const dead = await one(JobState.DEAD);
  expect(dead?.attempts.map((a) => [a.seq, a.number, a.outcome])).toEqual([
    [1, 1, AttemptOutcome.FAILED],
    [2, 2, AttemptOutcome.FAILED],
    [3, 3, AttemptOutcome.FAILED],
  ]);
  const done = await one(JobState.SUCCEEDED);
  expect(done?.result && toJson(ValueSchema, done.result)).toEqual({ ok: true });
  expect(done?.attempts.map((a) => a.outcome)).toEqual([AttemptOutcome.SUCCEEDED]);
  expect((await one(JobState.QUEUED))?.attempts).toEqual([]);
  expect((await one(JobState.RETRYING))?.attempts.map((a) => a.outcome)).toEqual([AttemptOutcome.FAILED]);
  expect((await one(JobState.SCHEDULED))?.attempts).toEqual([]);
});

/** From a blank page to `rows` rows of the list: page load, ListJobs, render. */
async function timeRows(page: Page, hash: string, rows = 50): Promise<number> {
  await page.goto("about:blank");
  const t0 = Date.now();
  await page.goto(`${server.url}/${hash}`);
  await page.locator("tr[data-job-id]").nth(rows - 1).waitFor({ timeout: 120_000 });
  return Date.now() - t0;
}

it(`renders 50 rows of the jobs list with ${TOTAL} jobs stored`, async () => {
  const page = await browser.context.newPage();
  page.setDefaultNavigationTimeout(60_000);
  await timeRows(page, "#/jobs"); // warm-up: page cache, connection, database cache
  const results: Record<string, number> = {};
  for (const [name, hash, rows] of [
    ["newest 50", "#/jobs", 50],
    ["state=dead", "#/jobs?state=dead", 50],
    ["state=queued,retrying", "#/jobs?state=queued,retrying", 50],
    ["type=cleanup", "#/jobs?type=cleanup", 50],
    ["queue=media", "#/jobs?queue=media", 50],
    ["search (unique key)", `#/jobs?q=perf-${Math.floor(TOTAL / 200) * 100}`, 1],
    ["dead-letter view", "#/dead", 50],
  ] as const) {
    results[name] = await timeRows(page, hash, rows);
  }
  // Keyset paging: the next page from the first one.
  await page.goto(`${server.url}/#/jobs`);
  await page.locator("tr[data-job-id]").nth(49).waitFor();
  const first = await page.locator("tr[data-job-id]").first().getAttribute("data-job-id");
  const t0 = Date.now();
  await page.locator('[data-testid="next-page"]').click();
  await page.waitForFunction((id) => document.querySelector("tr[data-job-id]")?.getAttribute("data-job-id") !== id, first);
  await page.locator("tr[data-job-id]").nth(49).waitFor();
  results["next page"] = Date.now() - t0;
  await screenshot(page, "perf-jobs-list");
  const stats = Date.now();
  await queueClient(server.url).getQueueStats({});
  results["GetQueueStats (rpc)"] = Date.now() - stats;
  console.table(results);
  expect(results["newest 50"]).toBeLessThan(10_000);
}, 1_800_000);
