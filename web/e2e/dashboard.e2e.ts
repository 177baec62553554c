// The dashboard in real headless Chromium against a real jobq server, with
// a scripted worker (and the real jobq-worker when it is built).
import { mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fromBinary, fromJson, toJson } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import type { BrowserContext, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MissedTicks } from "../src/gen/jobq/v1/admin_pb";
import { AttemptOutcome, JobState } from "../src/gen/jobq/v1/job_pb";
import { EnqueueJobRequestSchema } from "../src/gen/jobq/v1/queue_service_pb";
import {
  eventually,
  launchBrowser,
  queueClient,
  RESULTS_DIR,
  screenshot,
  ScriptedWorker,
  startServer,
  pageAddress,
  startWorker,

  watchConsole,

  type Proc,
  type Server,
} from "./harness";

let server: Server;
let pageUrl: string;
let stopProxy: (() => Promise<void>) | undefined;
let browser: { context: BrowserContext; close: () => Promise<void> };
let scripted: ScriptedWorker;
let realWorker: Proc | undefined;
let mediaRoot = "";
let api: ReturnType<typeof queueClient>;
const consoleErrors: string[] = [];

async function open(hash: string): Promise<Page> {
  const page = await browser.context.newPage();
  watchConsole(page, consoleErrors);
  await page.goto(`${pageUrl}/${hash}`);
  return page;
}

async function waitLive(page: Page): Promise<void> {
  await page.locator('[data-testid="live-status"][data-status="live"]').waitFor({ timeout: 15_000 });
}

async function confirm(page: Page): Promise<void> {
  await page.locator('[data-testid="confirm-ok"]').click();
}

beforeAll(async () => {
  server = await startServer();
  ({ url: pageUrl, stop: stopProxy } = await pageAddress(server));
  api = queueClient(server.url);
  scripted = new ScriptedWorker(server.url);
  browser = await launchBrowser();
  // The real worker takes the built-in job types from the default queue; the
  // scripted one works the "e2e" queue, so the two never race for a job.
  mediaRoot = mkdtempSync(join(tmpdir(), "jobq-web-e2e-media-"));
  mkdirSync(join(mediaRoot, "old"), { recursive: true });
  for (const name of ["old/episode-1.mp4", "old/episode-2.mp4", "fresh.mp4"]) writeFileSync(join(mediaRoot, name), "x".repeat(1024));
  const longAgo = new Date(Date.now() - 90 * 86400_000);
  utimesSync(join(mediaRoot, "old/episode-1.mp4"), longAgo, longAgo);
  utimesSync(join(mediaRoot, "old/episode-2.mp4"), longAgo, longAgo);
  realWorker = startWorker(server.url, ["--worker-id", "e2e-real-worker", "--queues", "default", "--media-root", mediaRoot, "--concurrency", "2"]);
});

afterAll(async (ctx) => {
  if (server) {
    mkdirSync(RESULTS_DIR, { recursive: true });
    writeFileSync(join(RESULTS_DIR, "jobq-server.log"), server.output());
    if (ctx.tasks.some((t) => t.result?.state === "fail")) console.log(`jobq-server output: ${join(RESULTS_DIR, "jobq-server.log")}`);
  }
  await browser?.close();
  if (realWorker) writeFileSync(join(RESULTS_DIR, "jobq-worker.log"), realWorker.output());
  await realWorker?.stop();
  if (mediaRoot) rmSync(mediaRoot, { recursive: true, force: true });
  await stopProxy?.();
  await server?.stop();
});

describe.sequential("dashboard", () => {
  it("is served by the jobq server at /", async () => {
    const res = await fetch(`${pageUrl}/`);
    expect(res.status, `GET / on the jobq server answered ${res.status}`).toBe(200);
    expect(await res.text()).toContain('<div id="app">');
  });

  // Stays open through the whole run: its charts are measured in the browser.
  let overview: Page;

  it("loads the overview", async () => {
    overview = await open("#/");
    await overview.locator("h1", { hasText: "Overview" }).waitFor();
    await overview.locator('[data-testid="stat-queued"]').waitFor();
    await waitLive(overview);
    await screenshot(overview, "01-overview-empty");
  });

  let jobId = "";

  it("shows a job enqueued from the form in the list, live", async () => {
    const list = await open("#/jobs");
    await list.locator('[data-testid="jobs-table"], .empty').first().waitFor();
    await waitLive(list);
    await list.evaluate(() => ((window as unknown as { marker: number }).marker = 42));

    const form = await open("#/enqueue");
    await form.locator("label.type-option", { hasText: "Custom" }).click();
    await form.locator('input[name="customType"]').fill("e2e.demo");
    await form.locator('textarea[name="customPayload"]').fill('{"steps": 5, "title": "Big Buck Bunny"}');
    await form.getByRole("button", { name: /Job options/ }).click();
    await form.locator('input[name="queue"]').fill("e2e");
    await expect.poll(() => form.locator('[data-testid="payload-preview"]').textContent()).toContain("Big Buck Bunny");
    await screenshot(form, "02-enqueue-form");
    const sent = form.waitForRequest((r) => r.url().endsWith("/jobq.v1.JobQueueService/EnqueueJob"));
    await form.locator('[data-testid="enqueue-submit"]').click();
    await form.waitForURL(/#\/jobs\/.+/);
    jobId = (await form.locator('[data-testid="job-id"]').textContent()) ?? "";
    expect(jobId).not.toBe("");
    await form.close();

    // The form sent a request id (one grpc-web frame: flag, length, message),
    // so sending the same call again returns this job instead of a second one.
    const body = (await sent).postDataBuffer() ?? Buffer.alloc(0);
    const req = fromBinary(EnqueueJobRequestSchema, body.subarray(5, 5 + body.readUInt32BE(1)));
    expect(req.requestId).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    const repeated = await api.enqueueJob(req);
    expect(repeated.alreadyExists).toBe(true);
    expect(repeated.job?.id).toBe(jobId);

    const row = list.locator(`tr[data-job-id="${jobId}"]`);
    await row.waitFor({ timeout: 10_000 });
    expect(await row.locator("[data-state]").getAttribute("data-state")).toBe("queued");
    expect(await list.evaluate(() => (window as unknown as { marker: number }).marker), "the list page did not reload").toBe(42);

    // A job enqueued elsewhere (not from this page) shows up too.
    // An unset payload means {}.
    const other = await api.enqueueJob({ job: { type: "e2e.other", queue: "e2e" } });
    await list.locator(`tr[data-job-id="${other.job?.id}"]`).waitFor({ timeout: 10_000 });
    await screenshot(list, "03-jobs-list");
    await list.close();
    await api.cancelJob({ jobId: other.job?.id ?? "", reason: "not needed" });
  });

  it("shows live progress and log lines on the job page, then cancel and retry work", async () => {
    const page = await open(`#/jobs/${jobId}`);
    await waitLive(page);
    await page.locator('[data-testid="log-status"]', { hasText: /Following|Connecting/ }).waitFor();

    const leased = await scripted.lease("e2e", ["e2e.demo"]);
    expect(leased.job?.id).toBe(jobId);
    // The payload arrives as the JSON value the form sent, not as text.
    expect(leased.job?.payload && toJson(ValueSchema, leased.job.payload)).toEqual({ steps: 5, title: "Big Buck Bunny" });
    await page.locator('.page-header [data-state="running"]').waitFor();
    // The server tells the job's lifecycle in its log too.
    await page.locator(".log-line.log-system", { hasText: /attempt 1 of \d+ leased by worker e2e-scripted-worker/ }).waitFor();

    await scripted.log(leased, [
      { stream: "system", message: "scripted worker: starting e2e.demo" },
      { stream: "stdout", message: "[download] Destination: Big Buck Bunny.mp4" },
    ]);
    await page.locator(".log-line.log-stdout", { hasText: "Destination: Big Buck Bunny.mp4" }).waitFor();
    await page.locator(".log-line.log-system", { hasText: "scripted worker: starting" }).waitFor();

    expect(await scripted.progress(leased, 40, "downloading part 2 of 5")).toBe(false);
    await scripted.log(leased, [
      { stream: "progress", message: "40% downloading part 2 of 5", percent: 40 },
      { stream: "stderr", message: "WARNING: unable to fetch subtitles" },
    ]);
    await page.locator('[data-testid="progress-percent"]', { hasText: "40%" }).waitFor();
    await page.locator('[data-testid="progress-message"]', { hasText: "downloading part 2 of 5" }).waitFor();
    await page.locator(".log-line.log-stderr", { hasText: "unable to fetch subtitles" }).waitFor();

    // Many lines: the tail follows them to the bottom.
    await scripted.log(
      leased,
      Array.from({ length: 80 }, (_, i) => ({ stream: "stdout" as const, message: `[download] ${(i + 1) * 1.25}% of 512.00MiB` })),
    );
    await page.locator(".log-line", { hasText: "100% of 512.00MiB" }).waitFor();
    await eventually("the log box to follow to the bottom", 5_000, () =>
      page.locator('[data-testid="log-box"]').evaluate((el) => el.scrollHeight - el.scrollTop - el.clientHeight < 40),
    );
    await screenshot(page, "04-job-running");

    // Scrolled up, the tail stays put and counts what arrives; "jump" follows again.
    const box = page.locator('[data-testid="log-box"]');
    await box.evaluate((el) => {
      el.scrollTop = 0;
      el.dispatchEvent(new Event("scroll"));
    });
    await page.locator("button.jump").waitFor();
    await scripted.log(leased, [
      { stream: "stdout", message: "[download] part 3 of 5" },
      { stream: "stdout", message: "[download] part 4 of 5" },
    ]);
    await page.locator("button.jump", { hasText: "2 new lines" }).waitFor();
    expect(await box.evaluate((el) => el.scrollTop)).toBe(0);
    await screenshot(page, "04b-log-paused");
    await page.locator("button.jump").click();
    await eventually("the log box to be back at the bottom", 5_000, () =>
      box.evaluate((el) => el.scrollHeight - el.scrollTop - el.clientHeight < 40),
    );
    await page.locator("button.jump").waitFor({ state: "detached" });

    // Cancel from the button: the worker hears it on its next heartbeat.
    await page.locator('[data-testid="cancel"]').click();
    await confirm(page);
    await eventually("the heartbeat to say stop", 10_000, () => scripted.progress(leased, 45, "stopping"));
    await scripted.fail(leased, "stopped: cancelled from the dashboard", true);
    await page.locator('.page-header [data-state="cancelled"]').waitFor();
    await page.locator('[data-testid="attempts"] .badge', { hasText: "Cancelled" }).waitFor();
    expect((await api.getJob({ jobId })).job?.state).toBe(JobState.CANCELLED);
    await screenshot(page, "05-job-cancelled");

    // Retry from the button: it is queued again and this time succeeds.
    await page.locator('[data-testid="retry"]').click();
    await confirm(page);
    await page.locator('.page-header [data-state="queued"]').waitFor();
    const again = await scripted.lease("e2e", ["e2e.demo"]);
    expect(again.job?.id).toBe(jobId);
    await page.locator('.page-header [data-state="running"]').waitFor();
    await scripted.log(again, [{ stream: "stdout", message: "second attempt: all 5 parts done" }]);
    await page.locator(".log-line", { hasText: "second attempt: all 5 parts done" }).waitFor();
    await scripted.progress(again, 100, "done");
    await scripted.complete(again, { files: ["Big Buck Bunny.mp4"], bytes: 536870912 });
    await page.locator('.page-header [data-state="succeeded"]').waitFor();
    await page.locator(".code", { hasText: "Big Buck Bunny.mp4" }).first().waitFor();
    // Attempts are keyed by seq, which never repeats within a job; the
    // number started again at 1 after the retry.
    const attempts = (await api.getJob({ jobId })).job?.attempts ?? [];
    expect(attempts.map((a) => a.number)).toEqual([1, 1]);
    expect(attempts[1]?.seq ?? 0).toBeGreaterThan(attempts[0]?.seq ?? 0);
    for (const a of attempts) await page.locator(`[data-testid="attempts"] tbody tr[data-seq="${a.seq}"]`).waitFor();
    // The job finished: the server ended the log stream normally, and the tail says so.
    await page.locator('[data-testid="log-status"][data-status="ended"]').waitFor();
    await screenshot(page, "06-job-succeeded");
    await page.close();
  });

  it("requeues a dead job from the dead-letter view", async () => {
    // Its own queue, so this test does not depend on how the one above ended.
    const enq = await api.enqueueJob({
      job: { type: "e2e.fail", queue: "e2e-dead", payload: fromJson(ValueSchema, { url: "https://example.invalid/v" }), maxAttempts: 1 },
    });
    const id = enq.job?.id ?? "";
    const leased = await scripted.lease("e2e-dead", ["e2e.fail"]);
    await scripted.log(leased, [{ stream: "stderr", message: "ERROR: HTTP Error 404: Not Found" }]);
    await scripted.fail(leased, "yt-dlp exited with status 1: HTTP Error 404: Not Found", false);
    await eventually("the job to be dead", 10_000, async () => (await api.getJob({ jobId: id })).job?.state === JobState.DEAD);

    const page = await open("#/dead");
    await waitLive(page);
    const row = page.locator(`tr[data-job-id="${id}"]`);
    await row.waitFor();
    await row.locator('input[type="checkbox"]').check();
    await screenshot(page, "07-dead-letter");
    await page.locator('[data-testid="requeue-selected"]').click();
    await confirm(page);
    await row.waitFor({ state: "detached", timeout: 10_000 });
    await eventually("the job to be queued again", 10_000, async () => (await api.getJob({ jobId: id })).job?.state === JobState.QUEUED);
    await page.close();
    await api.deleteJob({ jobId: id });
  });

  it("runs built-in jobs enqueued from the form on the real worker", async (ctx) => {
    if (!realWorker) ctx.skip();
    // A no-op that takes a few seconds and writes log lines.
    const page = await open("#/enqueue");
    await page.locator("label.type-option", { hasText: "No-op" }).click();
    await page.locator('input[name="sleepSeconds"]').fill("2");
    await page.locator('input[name="logLines"]').fill("25");
    await page.locator('[data-testid="enqueue-submit"]').click();
    await page.waitForURL(/#\/jobs\/.+/);
    await page.locator(".log-line.log-stdout", { hasText: "line 25 of 25" }).waitFor({ timeout: 20_000 });
    await page.locator('.page-header [data-state="succeeded"]').waitFor({ timeout: 20_000 });
    // Progress belongs to a running attempt: a finished job shows none.
    await page.locator(".progress-card").waitFor({ state: "detached" });
    await screenshot(page, "12-noop-succeeded");

    // A dry-run cleanup of the worker's media root: lists the old files, deletes nothing.
    await page.goto(`${pageUrl}/#/enqueue`);
    await page.locator("label.type-option", { hasText: "Cleanup" }).click();
    await page.locator('input[name="olderThanDays"]').fill("30");
    await page.locator('[data-testid="enqueue-submit"]').click();
    await page.waitForURL(/#\/jobs\/.+/);
    await page.locator('.page-header [data-state="succeeded"]').waitFor({ timeout: 20_000 });
    await page.locator(".code", { hasText: "episode-1.mp4" }).first().waitFor();
    const cleanupId = (await page.locator('[data-testid="job-id"]').textContent()) ?? "";
    const stored = (await api.getJob({ jobId: cleanupId })).job;
    expect(stored?.attempts.map((a) => a.outcome), "the stored attempt of a succeeded job").toEqual([AttemptOutcome.SUCCEEDED]);
    await page.locator('[data-testid="attempts"] .badge', { hasText: "Succeeded" }).waitFor();
    await screenshot(page, "13-cleanup-dry-run");
    await page.close();
  });

  it("shows queues, schedules and workers", async () => {
    await api.putSchedule({
      schedule: {
        name: "nightly-cleanup",
        cron: "0 0 3 * * *",
        timeZone: "UTC",
        job: { type: "cleanup", payload: fromJson(ValueSchema, { root: "/srv/media", older_than_days: 30, dry_run: true }) },
      },
    });

    const queues = await open("#/queues");
    const e2eRow = queues.locator('tr[data-queue="e2e"]');
    await e2eRow.waitFor();
    await queues.locator('[data-testid="pause-e2e"]').click();
    await e2eRow.locator(".badge", { hasText: "Paused" }).waitFor();
    await screenshot(queues, "08-queues");
    await queues.locator('[data-testid="pause-e2e"]').click();
    await e2eRow.locator(".badge", { hasText: "Active" }).waitFor();
    await queues.close();

    const schedules = await open("#/schedules");
    await schedules.locator('[data-testid="schedules-table"]', { hasText: "nightly-cleanup" }).waitFor();
    await screenshot(schedules, "09-schedules");
    await schedules.close();

    const workers = await open("#/workers");
    await workers.locator('[data-testid="workers-table"]', { hasText: "e2e-scripted-worker" }).waitFor();
    if (realWorker) await workers.locator('[data-testid="workers-table"]', { hasText: "e2e-real-worker" }).waitFor();
    await screenshot(workers, "10-workers");
    await workers.close();

    // A phone-sized window: the menu folds away, tables scroll sideways.
    const narrow = await open("#/jobs");
    await narrow.setViewportSize({ width: 390, height: 844 });
    await narrow.locator("tr[data-job-id]").first().waitFor();
    await screenshot(narrow, "15-jobs-narrow");
    await narrow.close();

    await overview.locator('[data-testid="stat-succeeded"] .stat-value', { hasText: /^[1-9]/ }).waitFor();
    await overview.locator(".chart-svg rect[fill]").first().waitFor();
    await screenshot(overview, "11-overview");
    await overview.close();
  });

  it("sets a queue's rate and burst, and shows concurrency keys and missed-tick policies", async () => {
    // A queue no worker takes from, so nothing here races the other tests.
    const limited = await api.enqueueJob({ job: { type: "e2e.keyed", queue: "limits-ui", concurrencyKey: "channel:UCxyz" } });
    const queues = await open("#/queues");
    const row = queues.locator('tr[data-queue="limits-ui"]');
    await row.waitFor();
    await row.getByRole("button", { name: "Limits…" }).click();
    const editing = queues.locator("tr.editing");
    await editing.getByLabel("Rate (jobs/s)").fill("4");
    await editing.getByLabel("Burst").fill("8");
    await editing.getByRole("button", { name: "Save" }).click();
    await row.locator("td", { hasText: "burst 8" }).waitFor();
    await screenshot(queues, "16-queue-rate-and-burst");
    const saved = (await api.listQueues({})).queues.find((q) => q.name === "limits-ui");
    expect([saved?.rateLimitPerSecond, saved?.rateBurst]).toEqual([4, 8]);
    await queues.close();

    const detail = await open(`#/jobs/${limited.job?.id}`);
    await detail.locator('[data-testid="concurrency-key"]', { hasText: "channel:UCxyz" }).waitFor();
    await detail.locator('[data-testid="concurrency-key"]', { hasText: "0 of 1 running" }).waitFor();
    await screenshot(detail, "17-job-concurrency-key");
    await detail.close();

    const schedules = await open("#/schedules");
    await schedules.getByRole("button", { name: "New schedule" }).click();
    await schedules.getByLabel("Name").fill("hourly-skip");
    await schedules.getByLabel("Cron").fill("0 0 * * * *");
    await schedules.getByLabel("Job type").fill("cleanup");
    await schedules.locator('[data-testid="missed-ticks"]').selectOption("skip");
    await schedules.getByRole("button", { name: "Save schedule" }).click();
    await schedules.locator('[data-testid="schedules-table"] tr', { hasText: "hourly-skip" }).locator("td", { hasText: "skips missed ticks" }).waitFor();
    const stored = (await api.listSchedules({})).schedules.find((sch) => sch.name === "hourly-skip");
    expect(stored?.missedTicks).toBe(MissedTicks.SKIP);
    await api.deleteSchedule({ name: "hourly-skip" });
    await schedules.close();
  });

  it("had no errors in the browser console", () => {
    expect(consoleErrors).toEqual([]);
  });
});

describe.sequential("dashboard with authentication", () => {
  let secured: Server;
  let securedUrl: string;
  let stopSecuredProxy: (() => Promise<void>) | undefined;

  beforeAll(async () => {
    secured = await startServer(["--auth-token", "admin:e2e-admin-token-0123456789"]);
    ({ url: securedUrl, stop: stopSecuredProxy } = await pageAddress(secured));
  });

  afterAll(async () => {
    await stopSecuredProxy?.();
    await secured?.stop();
  });

  it("asks for a token, keeps it for the session and sends it on every call", async () => {
    const page = await browser.context.newPage();
    await page.goto(`${securedUrl}/#/jobs`);
    const input = page.locator('[data-testid="token-input"]');
    await input.waitFor();
    await screenshot(page, "14-token-prompt");
    await input.fill("wrong-token");
    await input.press("Enter");
    // A wrong token is refused: the prompt comes back.
    await input.waitFor();
    await page.locator(".modal", { hasText: "refused" }).waitFor();
    await input.fill("e2e-admin-token-0123456789");
    await input.press("Enter");
    await input.waitFor({ state: "detached" });
    await waitLive(page);
    await page.locator('[data-testid="chip-queued"] .chip-count').waitFor();
    expect(await page.evaluate(() => sessionStorage.getItem("jobq.token"))).toBe("e2e-admin-token-0123456789");
    // A reload keeps the session's token: no prompt.
    await page.reload();
    await waitLive(page);
    expect(await input.count()).toBe(0);
    await page.close();
  });
});
