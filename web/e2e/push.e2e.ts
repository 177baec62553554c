// Push, not polling: an idle page makes no request, counts arrive over the
// page's streams, and a server restart under an open list, an open log tail
// and a filter clicked while it was down heals by itself.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { BrowserContext, Page, Request } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { eventually, launchBrowser, queueClient, RESULTS_DIR, screenshot, ScriptedWorker, startServer, pageAddress, watchConsole, type Server } from "./harness";

/** How long each view sits idle while its requests are counted. */
const IDLE_MS = Number(process.env.JOBQ_E2E_IDLE_MS ?? 30_000);

let server: Server;
let pageUrl: string;
let stopProxy: (() => Promise<void>) | undefined;
let browser: { context: BrowserContext; close: () => Promise<void> };
let api: ReturnType<typeof queueClient>;
const consoleErrors: string[] = [];

/** Every request the page starts, by method name (grpc-web paths end in /Service/Method). */
function recordRequests(page: Page): { since: (mark: number) => string[]; mark: () => number } {
  const seen: string[] = [];
  page.on("request", (r: Request) => {
    const path = new URL(r.url()).pathname;
    seen.push(path.startsWith("/jobq.") ? path.slice(path.lastIndexOf("/") + 1) : path);
  });
  return { since: (mark) => seen.slice(mark), mark: () => seen.length };
}

async function waitLive(page: Page): Promise<void> {
  await page.locator('[data-testid="live-status"][data-status="live"]').waitFor({ timeout: 20_000 });
}

// Kept across the restart below (a server's own fresh data dir goes with it).
let dataDir = "";

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "jobq-web-push-"));
  server = await startServer([], dataDir);
  ({ url: pageUrl, stop: stopProxy } = await pageAddress(server));
  api = queueClient(server.url);
  browser = await launchBrowser();
});

afterAll(async () => {
  if (server) {
    mkdirSync(RESULTS_DIR, { recursive: true });
    writeFileSync(join(RESULTS_DIR, "push-jobq-server.log"), server.output());
  }
  await browser?.close();
  await stopProxy?.();
  await server?.stop();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  expect(consoleErrors.filter((e) => !/Failed to load resource|ERR_CONNECTION_REFUSED|net::ERR/.test(e))).toEqual([]);
});

describe("push, not polling", () => {
  it("sends no request from any idle view, and counts still arrive over the open streams", { timeout: 600_000 }, async () => {
    const done = await api.enqueueJob({ job: { type: "e2e-push", queue: "push" } });
    const worker = new ScriptedWorker(server.url, "push-worker");
    const leased = await worker.lease("push", ["e2e-push"]);
    await worker.log(leased, [{ stream: "stdout", message: "one line" }]);
    await worker.complete(leased, { ok: true });

    const page = await browser.context.newPage();
    watchConsole(page, consoleErrors);
    const requests = recordRequests(page);
    await page.goto(`${pageUrl}/#/`);
    await waitLive(page);
    const views = ["#/", "#/jobs", `#/jobs/${done.job?.id ?? ""}`, "#/dead", "#/queues", "#/schedules", "#/workers", "#/enqueue"];
    const counts: Record<string, string[]> = {};
    for (const view of views) {
      await page.evaluate((h) => (location.hash = h), view);
      await page.locator("main h1").first().waitFor({ timeout: 15_000 });
      // Let the view's first reads finish before counting.
      await page.waitForTimeout(2000);
      const mark = requests.mark();
      await page.waitForTimeout(IDLE_MS);
      counts[view] = requests.since(mark);
    }
    console.log(`requests per view over ${IDLE_MS / 1000}s idle: ${JSON.stringify(counts)}`);
    for (const view of views) expect(counts[view], `requests from ${view} while idle`).toEqual([]);

    // Counts move while nothing on the page asks: a job enqueued shows in the
    // overview's queued card over the open stream.
    await page.evaluate(() => (location.hash = "#/"));
    const queued = page.locator('[data-testid="stat-queued"] .stat-value');
    await queued.waitFor({ timeout: 15_000 });
    await page.waitForTimeout(1500);
    const before = Number((await queued.textContent())?.replace(/\D/g, "") ?? "0");
    const mark = requests.mark();
    const sentAt = Date.now();
    await api.enqueueJob({ job: { type: "e2e-push", queue: "push-later" } });
    await eventually("the queued count to grow on the overview", 15_000, async () => Number((await queued.textContent())?.replace(/\D/g, "") ?? "0") === before + 1);
    console.log(`queued count on the overview updated ${Date.now() - sentAt} ms after the enqueue call returned`);
    const leasedLater = await worker.lease("push-later", ["e2e-push"]);
    const running = page.locator('[data-testid="stat-running"] .stat-value');
    await eventually("the running count to show the leased job", 15_000, async () => (await running.textContent())?.trim() === "1");
    await worker.complete(leasedLater, { ok: true });
    await eventually("the running count back to zero", 15_000, async () => (await running.textContent())?.trim() === "0");
    expect(requests.since(mark), "requests while counts changed").toEqual([]);
    await page.close();
  });
});

describe("a server restart", () => {
  it("heals an open list, an open log tail and a filter clicked while it was down, with no line lost or shown twice", { timeout: 240_000 }, async () => {
    const worker = new ScriptedWorker(server.url, "restart-worker");
    const job = await api.enqueueJob({ job: { type: "e2e-restart", queue: "restart" } });
    const jobId = job.job?.id ?? "";
    const leased = await worker.lease("restart", ["e2e-restart"]);
    await worker.log(leased, [
      { stream: "stdout", message: "before restart 1" },
      { stream: "stdout", message: "before restart 2" },
    ]);

    const list = await browser.context.newPage();
    watchConsole(list, consoleErrors);
    await list.goto(`${pageUrl}/#/jobs`);
    await waitLive(list);
    await list.locator(`tr[data-job-id="${jobId}"]`).waitFor({ timeout: 15_000 });
    const detail = await browser.context.newPage();
    watchConsole(detail, consoleErrors);
    await detail.goto(`${pageUrl}/#/jobs/${jobId}`);
    await waitLive(detail);
    const logLines = detail.locator('[data-testid="log-box"] .log-line.log-stdout .log-msg');
    await eventually("the log's first lines", 15_000, async () => (await logLines.count()) === 2);

    const port = Number(new URL(server.url).port);
    await server.stop();
    for (const page of [list, detail]) await page.locator('[data-testid="connection-banner"]').waitFor({ timeout: 30_000 });
    // A filter clicked while the server is away fails at first…
    await list.locator('[data-testid="chip-running"]').click();
    await list.locator('.notice-error[role="alert"]').waitFor({ timeout: 30_000 });

    server = await startServer([], dataDir, port);
    api = queueClient(server.url);
    const after = new ScriptedWorker(server.url, "restart-worker");
    // …and the page heals by itself: no click, no reload.
    for (const page of [list, detail]) {
      await waitLive(page);
      await page.locator('[data-testid="connection-banner"]').waitFor({ state: "detached", timeout: 30_000 });
    }
    await list
      .locator(`tr[data-job-id="${jobId}"]`)
      .waitFor({ timeout: 30_000 })
      .catch(async (err: unknown) => {
        await screenshot(list, "push-restart-list-failed");
        throw err;
      });
    expect(await list.locator('.notice-error[role="alert"]').count()).toBe(0);
    expect(list.url()).toContain("state=running");

    await after.log(leased, [
      { stream: "stdout", message: "after restart 1" },
      { stream: "stdout", message: "after restart 2" },
    ]);
    await eventually("the log tail to resume", 30_000, async () => (await logLines.count()) >= 4);
    await after.complete(leased, { ok: true });
    await detail.locator('[data-testid="log-status"][data-status="ended"]').waitFor({ timeout: 30_000 });
    expect(await logLines.allTextContents()).toEqual(["before restart 1", "before restart 2", "after restart 1", "after restart 2"]);
    await list.close();
    await detail.close();
  });
});
