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
import type { Page } from "playwright-core";
import { afterAll, beforeAll, expect, it } from "vitest";
import { launchBrowser, queueClient, screenshot, startServer, type Server } from "./harness";

const TOTAL = Number(process.env.JOBQ_PERF_JOBS ?? 1_000_000);
const FILL = process.env.JOBQ_PERF_FILL ?? "sql";
const TYPES = ["channel_download", "playlist_download", "metadata_extraction", "cleanup", "noop"];
const QUEUES = ["default", "media", "maintenance"];

let server: Server;
let dataDir = "";
let browser: Awaited<ReturnType<typeof launchBrowser>>;

/** Rows written with one INSERT … SELECT over a recursive counter: ids are UUIDv7-shaped and time-ordered. */
function fillWithSql(db: string): void {
  const now = Date.now();
  const start = now - TOTAL * 10; // one job every 10 ms, ending now
  const sql = `
PRAGMA journal_mode = WAL;
PRAGMA synchronous = OFF;
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ${TOTAL - 1})
INSERT INTO jobs (id, job_type, queue, payload, priority, run_at, max_attempts, timeout_ms, backoff_base_ms,
  backoff_max_ms, unique_key, tags, parent_id, traceparent, state, attempt, progress_percent, progress_message,
  result, last_error, cancel_requested, lease_token, worker_id, lease_expires_at, attempt_deadline, created_at,
  started_at, finished_at, updated_at, schedule_name)
SELECT
  substr(printf('%012x', ${start} + i * 10), 1, 8) || '-' || substr(printf('%012x', ${start} + i * 10), 9, 4)
    || '-7' || printf('%03x', i % 4096) || '-8' || printf('%03x', (i / 4096) % 4096) || '-' || printf('%012x', i),
  CASE i % 5 ${TYPES.map((t, k) => `WHEN ${k} THEN '${t}'`).join(" ")} END,
  CASE i % 3 ${QUEUES.map((q, k) => `WHEN ${k} THEN '${q}'`).join(" ")} END,
  '{"url":"https://www.youtube.com/watch?v=' || i || '"}',
  0, ${start} + i * 10, 25, 3600000, 1000, 3600000,
  CASE WHEN i % 100 = 0 THEN 'perf-' || i END, '[]', NULL, NULL,
  CASE WHEN i % 20 < 14 THEN 'succeeded' WHEN i % 20 < 16 THEN 'queued' WHEN i % 20 = 16 THEN 'dead'
       WHEN i % 20 = 17 THEN 'cancelled' WHEN i % 20 = 18 THEN 'retrying' ELSE 'scheduled' END,
  CASE WHEN i % 20 < 14 OR i % 20 IN (16, 17, 18) THEN 1 ELSE 0 END,
  CASE WHEN i % 20 < 14 THEN 100 ELSE 0 END, '',
  CASE WHEN i % 20 < 14 THEN '{"ok":true}' END,
  CASE WHEN i % 20 IN (16, 18) THEN 'HTTP Error 404: Not Found' END,
  0, NULL, NULL, NULL, NULL, ${start} + i * 10,
  CASE WHEN i % 20 < 14 OR i % 20 IN (16, 17, 18) THEN ${start} + i * 10 + 5 END,
  CASE WHEN i % 20 < 14 OR i % 20 IN (16, 17) THEN ${start} + i * 10 + 9 END,
  ${start} + i * 10 + 9, NULL
FROM n;
`;
  const r = spawnSync("sqlite3", [db], { input: sql, encoding: "utf8", maxBuffer: 1 << 24 });
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
          payload: JSON.stringify({ url: `https://www.youtube.com/watch?v=${from + k}` }),
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
