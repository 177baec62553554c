// Search by what a job is about, in real headless Chromium against a real
// jobq server (issue 14): payload and tag terms in the search box, the
// summary column, and the dead-letter list sorted by when jobs died.
import { fromJson } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import type { BrowserContext, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { JobState } from "../src/gen/jobq/v1/job_pb";
import { eventually, launchBrowser, queueClient, screenshot, ScriptedWorker, startServer, pageAddress, watchConsole, type Server } from "./harness";

let server: Server;
let pageUrl: string;
let stopProxy: (() => Promise<void>) | undefined;
let browser: { context: BrowserContext; close: () => Promise<void> };
let api: ReturnType<typeof queueClient>;
const consoleErrors: string[] = [];

beforeAll(async () => {
  server = await startServer();
  ({ url: pageUrl, stop: stopProxy } = await pageAddress(server));
  api = queueClient(server.url);
  browser = await launchBrowser();
});

afterAll(async () => {
  await browser?.close();
  await stopProxy?.();
  await server?.stop();
});

async function open(hash: string): Promise<Page> {
  const page = await browser.context.newPage();
  watchConsole(page, consoleErrors);
  await page.goto(`${pageUrl}/${hash}`);
  return page;
}

async function enqueue(type: string, payload: Record<string, unknown>, tags: string[] = [], queue = "e2e-search"): Promise<string> {
  const res = await api.enqueueJob({ job: { type, queue, payload: fromJson(ValueSchema, payload as never), tags } });
  return res.job?.id ?? "";
}

/** The job ids of the rows shown, top to bottom, once they equal `want`. */
async function rowsBecome(page: Page, want: string[]): Promise<string[]> {
  return eventually(`rows ${want.join(", ")}`, 20_000, async () => {
    const ids = await page.locator("tr[data-job-id]").evaluateAll((rows) => rows.map((r) => r.getAttribute("data-job-id") ?? ""));
    return JSON.stringify(ids) === JSON.stringify(want) ? ids : false;
  });
}

describe.sequential("search", () => {
  it("finds jobs by payload field and tag typed in the search box, and shows their summary", async () => {
    const kurz = await enqueue("channel_download", { channel: "Kurzgesagt", url: "https://www.youtube.com/watch?v=LongLong4K" }, ["music"]);
    const kurz2 = await enqueue("channel_download", { channel: "Kurzgesagt", url: "https://www.youtube.com/watch?v=other" });
    const other = await enqueue("channel_download", { channel: "Veritasium", url: "https://www.youtube.com/watch?v=Kurzgesagt" }, ["music"]);
    await enqueue("send_email", { to: "a@example.com", subject: "Kurzgesagt" });

    const page = await open("#/jobs");
    const box = page.locator('[data-testid="search"]');
    await box.fill("channel = Kurzgesagt");
    await box.press("Enter");
    await rowsBecome(page, [kurz2, kurz]);
    const summary = page.locator(`tr[data-job-id="${kurz}"] [data-testid="summary"]`);
    expect(await summary.textContent()).toBe("Kurzgesagt · https://www.youtube.com/watch?v=LongLong4K");
    expect(await summary.getAttribute("title")).toBe("Kurzgesagt · https://www.youtube.com/watch?v=LongLong4K");
    await screenshot(page, "search-01-payload-equals");

    // Several terms: AND.
    await box.fill("url contains longlong4k tag:music");
    await box.press("Enter");
    await rowsBecome(page, [kurz]);
    await box.fill("tag:music");
    await box.press("Enter");
    await rowsBecome(page, [other, kurz]);
    // The search stays in the URL, so the list can be shared and reloaded.
    expect(decodeURIComponent(page.url())).toContain("q=tag:music");
    await page.close();
    expect(consoleErrors).toEqual([]);
  });

  it("lists dead jobs most recently died first, with when they died", async () => {
    const worker = new ScriptedWorker(server.url, "e2e-search-worker");
    const ids: string[] = [];
    for (const n of [1, 2, 3]) ids.push(await enqueue("e2e.die", { n }, [], "e2e-search-dead"));
    // All three leased at once, then they die in the reverse order of their
    // creation: 3, then 2, then 1 (unlike the default newest-created order).
    const leased = await eventually("the three jobs leased", 20_000, async () => {
      const res = await worker.client.leaseJobs({
        workerId: worker.workerId,
        queues: ["e2e-search-dead"],
        types: ["e2e.die"],
        maxJobs: 3,
        wait: { seconds: 2n, nanos: 0 },
        leaseDuration: { seconds: 60n, nanos: 0 },
      });
      return res.jobs.length === 3 ? res.jobs : false;
    });
    const died: string[] = [];
    for (const want of [...ids].reverse()) {
      const l = leased.find((j) => j.job?.id === want);
      if (!l) throw new Error(`job ${want} was not leased`);
      await worker.fail(l, "gone for good", false);
      await eventually("the job to be dead", 10_000, async () => (await api.getJob({ jobId: want })).job?.state === JobState.DEAD);
      died.push(want);
      // Distinct finished_at times (milliseconds).
      await new Promise((r) => setTimeout(r, 20));
    }
    const page = await open("#/dead?queue=e2e-search-dead");
    await rowsBecome(page, [...died].reverse());
    await expect(page.locator("th", { hasText: "Died" }).count()).resolves.toBe(1);
    const cell = page.locator(`tr[data-job-id="${died[2]}"] [data-testid="died"]`);
    expect(await cell.locator("time").count()).toBe(1);
    expect((await cell.textContent())?.length).toBeGreaterThan(4);
    await screenshot(page, "search-02-dead-letter-died");
    await page.close();
    expect(consoleErrors).toEqual([]);
  });
});
