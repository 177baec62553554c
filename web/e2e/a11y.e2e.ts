// Accessibility and keyboard of the dashboard in real headless Chromium
// against a real jobq server: axe-core on every view (and the dialogs) at
// desktop and phone size, light and dark, must find no serious or critical
// violation. Each state is also saved as a viewport screenshot for a person
// to look at: in test-results/a11y/, or with JOBQ_E2E_SCREENSHOTS=1 in the
// committed e2e/screenshots/ (times and ids differ each run, so a plain run
// leaves the committed ones alone).
import { mkdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { fromJson } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import type { BrowserContext, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LeasedJob } from "../src/gen/jobq/v1/worker_service_pb";
import { eventually, launchBrowser, queueClient, RESULTS_DIR, ScriptedWorker, startServer, pageAddress, watchConsole, WEB_DIR, type Server } from "./harness";

const SHOTS_DIR = process.env.JOBQ_E2E_SCREENSHOTS === "1" ? join(WEB_DIR, "e2e", "screenshots") : join(RESULTS_DIR, "a11y");
const AXE_SOURCE = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

let server: Server;
let pageUrl: string;
let stopProxy: (() => Promise<void>) | undefined;
let browser: { context: BrowserContext; close: () => Promise<void> };
let api: ReturnType<typeof queueClient>;
let scripted: ScriptedWorker;
let running: LeasedJob;
let runningId = "";
const consoleErrors: string[] = [];

beforeAll(async () => {
  server = await startServer();
  ({ url: pageUrl, stop: stopProxy } = await pageAddress(server));
  api = queueClient(server.url);
  scripted = new ScriptedWorker(server.url, "a11y-worker");
  browser = await launchBrowser();

  // Something on every view: queued, running (with logs and progress),
  // succeeded and dead jobs, and a schedule.
  const enqueue = (type: string, queue: string, payload: object, maxAttempts = 0) =>
    api.enqueueJob({ job: { type, queue, payload: fromJson(ValueSchema, payload as never), maxAttempts } });
  const first = await enqueue("e2e.demo", "e2e", { title: "Big Buck Bunny", steps: 5 });
  runningId = first.job?.id ?? "";
  running = await scripted.lease("e2e", ["e2e.demo"]);
  await scripted.log(running, [
    { stream: "system", message: "scripted worker: starting e2e.demo" },
    { stream: "stdout", message: "[download] Destination: Big Buck Bunny.mp4" },
    { stream: "stderr", message: "WARNING: falling back to the generic extractor" },
    { stream: "progress", message: "downloading part 2 of 5", percent: 40 },
  ]);
  await scripted.progress(running, 40, "downloading part 2 of 5");
  await enqueue("e2e.done", "e2e-done", { n: 1 });
  const done = await scripted.lease("e2e-done", ["e2e.done"]);
  await scripted.complete(done, { ok: true });
  await enqueue("e2e.fail", "e2e-dead", { url: "https://example.invalid/v" }, 1);
  const failing = await scripted.lease("e2e-dead", ["e2e.fail"]);
  await scripted.fail(failing, "yt-dlp exited with status 1: HTTP Error 404: Not Found", false);
  for (let i = 0; i < 3; i++) await enqueue("e2e.later", "e2e-wait", { i });
  await api.putSchedule({
    schedule: { name: "nightly-cleanup", cron: "0 0 3 * * *", timeZone: "UTC", job: { type: "cleanup", payload: fromJson(ValueSchema, { root: "/srv/media", dry_run: true }) } },
  });
});

afterAll(async () => {
  await browser?.close();
  await stopProxy?.();
  await server?.stop();
});

interface View {
  name: string;
  hash: string;
  /** Waits until the view shows its data (and opens a dialog, for the dialog states). */
  ready: (page: Page) => Promise<void>;
}

const VIEWS: View[] = [
  { name: "overview", hash: "#/", ready: (p) => p.locator('[data-testid="stat-queued"]').waitFor() },
  { name: "jobs", hash: "#/jobs", ready: (p) => p.locator('[data-testid="jobs-table"] tbody tr').first().waitFor() },
  {
    name: "job-running",
    hash: "", // filled in with the running job's id
    ready: async (p) => {
      await p.locator(".log-line", { hasText: "Destination" }).waitFor();
      await p.locator('[role="progressbar"]').first().waitFor();
    },
  },
  { name: "dead", hash: "#/dead", ready: (p) => p.locator('[data-testid="jobs-table"] tbody tr').first().waitFor() },
  { name: "queues", hash: "#/queues", ready: (p) => p.locator('[data-testid="queues-table"] tr[data-queue="e2e"]').waitFor() },
  { name: "workers", hash: "#/workers", ready: (p) => p.locator('[data-testid="workers-table"]').waitFor() },
  { name: "schedules", hash: "#/schedules", ready: (p) => p.locator('[data-testid="schedules-table"]', { hasText: "nightly-cleanup" }).waitFor() },
  {
    name: "enqueue",
    hash: "#/enqueue",
    ready: async (p) => {
      await p.getByRole("button", { name: /Job options/ }).click();
      await p.locator('[data-testid="run-at-input"]').scrollIntoViewIfNeeded();
    },
  },
  {
    name: "dialog-confirm",
    hash: "#/schedules",
    ready: async (p) => {
      await p.locator('[data-testid="schedules-table"]', { hasText: "nightly-cleanup" }).waitFor();
      await p.getByRole("button", { name: "Delete", exact: true }).click();
      await p.getByRole("dialog").waitFor();
    },
  },
  {
    name: "dialog-help",
    hash: "#/jobs",
    ready: async (p) => {
      await p.locator('[data-testid="jobs-table"]').waitFor();
      await p.keyboard.press("?");
      await p.locator('[data-testid="help-dialog"]').waitFor();
    },
  },
];

const SIZES = [
  { name: "desktop", viewport: { width: 1280, height: 800 } },
  { name: "phone", viewport: { width: 390, height: 844 } },
] as const;

interface AxeNode {
  target: string[];
  failureSummary?: string;
  html: string;
}
interface AxeViolation {
  id: string;
  impact?: string;
  help: string;
  nodes: AxeNode[];
}

/** Runs axe-core in the page; returns the serious and critical violations. */
async function axeSerious(page: Page): Promise<AxeViolation[]> {
  await page.addScriptTag({ content: AXE_SOURCE });
  const violations = await page.evaluate(async () => {
    const axe = (window as unknown as { axe: { run: (ctx: Document, opts: object) => Promise<{ violations: unknown[] }> } }).axe;
    const r = await axe.run(document, { resultTypes: ["violations"] });
    return r.violations;
  });
  return (violations as AxeViolation[]).filter((v) => v.impact === "serious" || v.impact === "critical");
}

function describeViolations(where: string, vs: AxeViolation[]): string {
  return vs
    .map((v) => {
      const nodes = v.nodes
        .slice(0, 5)
        .map((n) => `    - ${n.target.join(" ")}\n      ${n.html.slice(0, 160)}\n      ${(n.failureSummary ?? "").replace(/\n/g, "\n      ")}`)
        .join("\n");
      return `${where}: [${v.impact}] ${v.id}: ${v.help} (${v.nodes.length} element${v.nodes.length === 1 ? "" : "s"})\n${nodes}`;
    })
    .join("\n");
}

/** Lets the page settle: nothing loading, live updates connected, no animation mid-way. */
async function settle(page: Page): Promise<void> {
  // Attached, not visible: on a phone it sits in the closed menu.
  await page.locator('[data-testid="live-status"][data-status="live"]').waitFor({ state: "attached", timeout: 15_000 });
  await eventually("the page to finish loading", 15_000, async () => (await page.locator(".loading").count()) === 0);
}

describe.sequential("accessibility", () => {
  it("finds no serious or critical violations on any view, desktop and phone, light and dark", async () => {
    mkdirSync(SHOTS_DIR, { recursive: true });
    const failures: string[] = [];
    let checked = 0;
    for (const scheme of ["light", "dark"] as const) {
      for (const size of SIZES) {
        for (const view of VIEWS) {
          // Keep the running job running: its lease is renewed between views.
          await scripted.progress(running, 40, "downloading part 2 of 5");
          const page = await browser.context.newPage();
          watchConsole(page, consoleErrors);
          await page.setViewportSize(size.viewport);
          // The theme follows the system unless picked: emulate the system's.
          await page.emulateMedia({ colorScheme: scheme, reducedMotion: "reduce" });
          const hash = view.hash || `#/jobs/${runningId}`;
          await page.goto(`${pageUrl}/${hash}`);
          await settle(page);
          await view.ready(page);
          const where = `${view.name} (${size.name}, ${scheme})`;
          const bad = await axeSerious(page);
          if (bad.length > 0) failures.push(describeViolations(where, bad));
          await page.screenshot({ path: join(SHOTS_DIR, `${view.name}-${scheme}-${size.name}.png`), fullPage: false });
          checked++;
          await page.close();
        }
      }
    }
    expect(checked).toBe(VIEWS.length * SIZES.length * 2);
    if (failures.length > 0) console.error(`axe-core found serious or critical violations:\n${failures.join("\n")}`);
    expect(failures.length, "states with serious or critical axe-core violations (listed above)").toBe(0);
    expect(consoleErrors).toEqual([]);
  });
});

describe.sequential("keyboard and display preferences", () => {
  it("/ focuses search, j/k move the highlight, Enter opens the job, ? opens help and Esc closes it", async () => {
    const page = await browser.context.newPage();
    watchConsole(page, consoleErrors);
    await page.goto(`${pageUrl}/#/jobs`);
    await settle(page);
    const rows = page.locator('[data-testid="jobs-table"] tbody tr');
    await eventually("the jobs list to show several rows", 15_000, async () => (await rows.count()) >= 3);

    await page.keyboard.press("/");
    expect(await page.evaluate(() => document.activeElement?.getAttribute("data-testid"))).toBe("search");
    // Typing in the search box types: j is a letter there, not a move.
    await page.keyboard.type("j");
    expect(await page.locator('[data-testid="search"]').inputValue()).toBe("j");
    expect(await page.locator("tr.kb-current").count()).toBe(0);
    await page.locator('[data-testid="search"]').fill("");
    await page.locator("h1").click();

    const current = () => page.locator("tr.kb-current").getAttribute("data-job-id");
    const ids = await rows.evaluateAll((trs) => trs.map((tr) => tr.getAttribute("data-job-id")));
    await page.keyboard.press("j");
    expect(await current()).toBe(ids[0]);
    await page.keyboard.press("j");
    await page.keyboard.press("j");
    expect(await current()).toBe(ids[2]);
    await page.keyboard.press("k");
    expect(await current()).toBe(ids[1]);

    await page.keyboard.press("Enter");
    await page.waitForURL((u) => u.hash === `#/jobs/${encodeURIComponent(ids[1] ?? "")}`);
    await page.locator("h1").waitFor();

    await page.keyboard.press("?");
    const help = page.locator('[data-testid="help-dialog"]');
    await help.waitFor();
    expect(await help.getAttribute("aria-labelledby")).toBe("keys-title");
    await page.keyboard.press("Escape");
    await help.waitFor({ state: "detached" });
    await page.close();
  });

  it("pages through the list with the page in the URL, and Back returns to the page before", async () => {
    for (let i = 0; i < 120; i++) await api.enqueueJob({ job: { type: "e2e.bulk", queue: "e2e-bulk", payload: fromJson(ValueSchema, { i }) } });
    const page = await browser.context.newPage();
    watchConsole(page, consoleErrors);
    await page.goto(`${pageUrl}/#/jobs?queue=e2e-bulk`);
    await settle(page);
    const firstId = () => page.locator('[data-testid="jobs-table"] tbody tr').first().getAttribute("data-job-id");
    await page.locator('[data-testid="jobs-table"] tbody tr').first().waitFor();
    const page1 = await firstId();
    await page.locator('[data-testid="next-page"]').click();
    await page.waitForURL((u) => u.hash.includes("page=2"));
    await eventually("page 2 to show", 15_000, async () => (await firstId()) !== page1);
    const page2 = await firstId();
    await page.locator('[data-testid="next-page"]').click();
    await page.waitForURL((u) => u.hash.includes("page=3"));
    await eventually("page 3 to show", 15_000, async () => (await firstId()) !== page2);
    expect(await page.locator(".pager").textContent()).toContain("Page 3");

    await page.goBack();
    await page.waitForURL((u) => u.hash.includes("page=2"));
    await eventually("Back to show page 2 again", 15_000, async () => (await firstId()) === page2);
    // A reload keeps the page: it is in the URL.
    await page.reload();
    await eventually("the reloaded page 2", 15_000, async () => (await firstId()) === page2);
    await page.goBack();
    await eventually("Back to show page 1", 15_000, async () => (await firstId()) === page1);
    expect(await page.locator(".pager").textContent()).toContain("Page 1");
    await page.close();
  });

  it("keeps the first page live through a long burst of new jobs, and a deeper page counts them", async () => {
    const page = await browser.context.newPage();
    watchConsole(page, consoleErrors);
    await page.goto(`${pageUrl}/#/jobs?queue=e2e-burst`);
    await settle(page);
    await page.locator(".empty", { hasText: "No jobs match" }).waitFor();
    const rows = page.locator('[data-testid="jobs-table"] tbody tr');
    // About 50 jobs/s for 8 s (400 jobs, twice what the list used to take
    // before it stopped at "More jobs arrived than fit here"). The pacing
    // only shapes the load; nothing waits on it.
    let newest = "";
    const lags: number[] = [];
    for (let batch = 0; batch < 40; batch++) {
      const jobs = Array.from({ length: 10 }, (_, i) => ({ type: "e2e.burst", queue: "e2e-burst", payload: fromJson(ValueSchema, { n: batch * 10 + i }) }));
      const at = Date.now();
      const res = await api.enqueueJobs({ jobs });
      newest = res.results[res.results.length - 1]?.job?.id ?? newest;
      if (batch % 10 === 9) {
        // After 100, 200, 300 and 400 jobs the list still shows the newest on top.
        const id = newest;
        await eventually(`job ${batch + 1} of 400 at the top of the live list`, 30_000, async () => (await rows.first().getAttribute("data-job-id")) === id);
        lags.push(Date.now() - at);
      } else {
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    console.log(`live list: enqueue → on top of the list after 100/200/300/400 jobs: ${lags.join(", ")} ms`);
    expect(await page.locator(".table-toolbar").textContent()).not.toContain("Refresh");
    expect(await rows.count()).toBe(50);
    expect(await page.locator(".pager").textContent()).toContain("Page 1");

    // Older from a page that dropped rows reads the first page afresh: page 2
    // starts right after the 50 newest jobs.
    const all = (await api.listJobs({ queues: ["e2e-burst"], pageSize: 100 })).jobs.map((j) => j.id);
    await page.locator('[data-testid="next-page"]').click();
    await page.waitForURL((u) => u.hash.includes("page=2"));
    await eventually("page 2 to follow on from the 50 newest", 15_000, async () => (await rows.first().getAttribute("data-job-id")) === all[50]);

    // A deeper page stays put and says how many newer jobs arrived.
    await api.enqueueJobs({ jobs: Array.from({ length: 3 }, () => ({ type: "e2e.burst", queue: "e2e-burst", payload: fromJson(ValueSchema, {}) })) });
    await page.locator('[data-testid="jobs-arrived"]', { hasText: "3 newer jobs arrived" }).waitFor();
    expect(await rows.first().getAttribute("data-job-id")).toBe(all[50]);
    await page.close();
  });

  it("enqueues with run-at and timeout from the form; the toast sits clear of the table and can be dismissed", async () => {
    const page = await browser.context.newPage();
    watchConsole(page, consoleErrors);
    await page.goto(`${pageUrl}/#/enqueue`);
    await settle(page);
    await page.locator("label.type-option", { hasText: "Custom" }).click();
    await page.locator('input[name="customType"]').fill("e2e.timed");
    await page.getByRole("button", { name: /Job options/ }).click();
    await page.locator('input[name="queue"]').fill("e2e-timed");
    // The form reads run-at in the display zone (local here: the test asks the browser which that is).
    await page.locator('[data-testid="run-at-input"]').fill("2031-05-04T03:02:01");
    const runAt = await page.evaluate(() => new Date(2031, 4, 4, 3, 2, 1).getTime());
    await page.locator('[data-testid="timeout-input"]').fill("90");
    await page.locator('[data-testid="enqueue-submit"]').click();
    const t = page.locator('[data-testid="toast"]').first();
    await t.waitFor();
    const box = await t.boundingBox();
    expect(box && box.x + box.width / 2, "the toast's centre is on the left half, away from the row buttons").toBeLessThan(1440 / 2);
    await t.getByRole("button", { name: "Dismiss" }).click();
    await t.waitFor({ state: "detached" });
    const job = (await api.listJobs({ queues: ["e2e-timed"] })).jobs[0];
    expect(job?.type).toBe("e2e.timed");
    expect(Number(job?.runAt?.seconds) * 1000).toBe(runAt);
    expect(Number(job?.timeout?.seconds)).toBe(90);
    await page.close();
  });

  it("remembers the picked theme and time zone across a reload", async () => {
    const page = await browser.context.newPage();
    watchConsole(page, consoleErrors);
    await page.emulateMedia({ colorScheme: "light" });
    await page.goto(`${pageUrl}/#/jobs/${runningId}`);
    await settle(page);
    const bg = () => page.evaluate(() => getComputedStyle(document.querySelector(".card") as Element).backgroundColor);
    const light = await bg();
    await page.locator('[data-testid="theme-dark"]').click();
    expect(await bg()).not.toBe(light);
    await page.locator('[data-testid="zone-utc"]').click();
    await page.reload();
    await settle(page);
    expect(await page.evaluate(() => document.documentElement.dataset.theme)).toBe("dark");
    expect(await bg()).not.toBe(light);
    expect(await page.locator('[data-testid="zone-utc"]').getAttribute("aria-pressed")).toBe("true");
    // Relative times name the zone of their exact time.
    expect(await page.locator("main time").first().getAttribute("title")).toMatch(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$/);
    await page.locator('[data-testid="theme-system"]').click();
    await page.locator('[data-testid="zone-local"]').click();
    expect(consoleErrors).toEqual([]);
    await page.close();
  });
});
