// The overview's charts come from the server's job history: a reload keeps
// them, and so does a server restart on the same data dir.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { BrowserContext, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { eventually, launchBrowser, queueClient, screenshot, ScriptedWorker, startServer, pageAddress, watchConsole, type Server } from "./harness";

const QUEUE = "history-e2e";
const dataDir = mkdtempSync(join(tmpdir(), "jobq-web-e2e-history-"));
let server: Server | undefined;
let pageUrl = "";
let stopProxy: (() => Promise<void>) | undefined;
let browser: { context: BrowserContext; close: () => Promise<void> };
const consoleErrors: string[] = [];

/** Starts the server on the test's data dir (kept across restarts). */
async function boot(): Promise<void> {
  server = await startServer([], dataDir);
  ({ url: pageUrl, stop: stopProxy } = await pageAddress(server));
}

async function shutdown(): Promise<void> {
  await stopProxy?.();
  stopProxy = undefined;
  await server?.stop();
  server = undefined;
}

const throughput = (page: Page) => page.locator('[data-testid="history-charts"] svg[role="img"]').first();

/** The throughput chart's text alternative once it counts what the test ran. */
async function chartSays(page: Page, what: string[]): Promise<string> {
  return eventually(`the throughput chart to say ${what.join(", ")}`, 30_000, async () => {
    const label = (await throughput(page).getAttribute("aria-label")) ?? "";
    return what.every((w) => label.includes(w)) ? label : undefined;
  });
}

beforeAll(async () => {
  await boot();
  browser = await launchBrowser();
});

afterAll(async () => {
  await browser?.close();
  await shutdown();
  rmSync(dataDir, { recursive: true, force: true });
});

describe("job history on the overview", () => {
  it("shows what ran, after a reload and after a server restart, without polling", async () => {
    if (!server) throw new Error("no server");
    const api = queueClient(server.url);
    const worker = new ScriptedWorker(server.url, "history-e2e-worker");
    for (let i = 0; i < 4; i++) await api.enqueueJob({ job: { type: "hist", queue: QUEUE, maxAttempts: 1 } });
    for (let i = 0; i < 3; i++) await worker.complete(await worker.lease(QUEUE, ["hist"]), { ok: i });
    await worker.fail(await worker.lease(QUEUE, ["hist"]), "no luck", false);
    const expected = ["3 succeeded", "1 dead", "4 enqueued"];

    const page = await browser.context.newPage();
    watchConsole(page, consoleErrors);
    await page.goto(`${pageUrl}/#/`);
    await chartSays(page, expected);

    // Nothing asks for history again: the server pushes closed minutes over
    // the page's one stream (WatchDashboard, with the job history asked).
    const asked: string[] = [];
    page.on("request", (r) => {
      if (/JobHistory|WatchDashboard/.test(r.url())) asked.push(r.url());
    });
    await page.reload();
    await chartSays(page, expected);
    expect(asked.length, "one stream per page load").toBe(1);
    await new Promise((r) => setTimeout(r, 3_000));
    expect(asked.length, "no history request while the page is idle").toBe(1);

    // The text alternative is on every chart, and axe finds nothing serious.
    for (const svg of await page.locator('[data-testid="history-charts"] svg[role="img"]').all()) {
      expect(((await svg.getAttribute("aria-label")) ?? "").length).toBeGreaterThan(20);
    }
    const axe = await axeSource();
    if (axe) {
      await page.addScriptTag({ content: axe });
      const serious = await page.evaluate(async () => {
        const run = (window as unknown as { axe: { run: (el: Element) => Promise<{ violations: { id: string; impact?: string }[] }> } }).axe.run;
        const charts = document.querySelector('[data-testid="history-charts"]');
        const result = await run(charts ?? document.body);
        return result.violations.filter((v) => v.impact === "serious" || v.impact === "critical").map((v) => v.id);
      });
      expect(serious).toEqual([]);
    }

    // SIGTERM writes the open minute; a new server on the same data dir reads it.
    await shutdown();
    await boot();
    await page.goto(`${pageUrl}/#/`);
    await chartSays(page, expected);
    await screenshot(page, "history-after-restart");
    await page.close();
    expect(consoleErrors.filter((e) => !/Failed to load resource|ERR_CONNECTION_REFUSED|net::/.test(e))).toEqual([]);
  });
});

/** axe-core's browser bundle, when the package is installed (it is optional here). */
async function axeSource(): Promise<string | undefined> {
  try {
    const { createRequire } = await import("node:module");
    const { readFile } = await import("node:fs/promises");
    const path = createRequire(import.meta.url).resolve("axe-core/axe.min.js");
    return await readFile(path, "utf8");
  } catch {
    return undefined;
  }
}
