// Test harness for the browser end-to-end tests: starts the real jobq
// server (and worker) binaries on loopback, a scripted worker speaking the
// WorkerService over gRPC, and Debian's headless Chromium via playwright-core.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { fromJson, type JsonValue, type MessageInitShape } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { chromium, type BrowserContext, type Page } from "playwright-core";
import { JobQueueService } from "../src/gen/jobq/v1/queue_service_pb";
import { LogStream } from "../src/gen/jobq/v1/log_pb";
import { WorkerService, type LeasedJob, type PushJobLogsRequestSchema } from "../src/gen/jobq/v1/worker_service_pb";

export const WEB_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const REPO_ROOT = resolve(WEB_DIR, "..");
export const RESULTS_DIR = join(WEB_DIR, "test-results");
export const SERVER_BIN = process.env.JOBQ_SERVER_BIN ?? join(REPO_ROOT, "target/debug/jobq-server");
export const WORKER_BIN = process.env.JOBQ_WORKER_BIN ?? join(REPO_ROOT, "target/debug/jobq-worker");
export const CHROMIUM = process.env.JOBQ_CHROMIUM ?? "/usr/bin/chromium";

/** Thrown by a probe to stop `eventually` at once (the thing waited for can no longer happen). */
export class GiveUp extends Error {}

/** Polls `probe` until it returns a value other than undefined/false, or fails after `ms`. */
export async function eventually<T>(what: string, ms: number, probe: () => Promise<T | undefined | false> | T | undefined | false): Promise<T> {
  const deadline = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      if (err instanceof GiveUp) throw err;
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${ms}ms waiting for ${what}${last ? `: ${String(last)}` : ""}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export interface Proc {
  child: ChildProcess;
  output: () => string;
  stop: () => Promise<void>;
}

function start(bin: string, args: string[], env: Record<string, string> = {}): Proc {
  const child = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env } });
  let out = "";
  child.stdout?.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr?.on("data", (d: Buffer) => (out += d.toString()));
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((r) => child.once("exit", () => r()));
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(timer);
  };
  return { child, output: () => out, stop };
}

export interface Server extends Proc {
  url: string;
  dataDir: string;
}

/**
 * Starts jobq-server on 127.0.0.1:`listenPort` (0: any free one) with a fresh data
 * dir (or the given one, which stop() then leaves in place); resolves once it
 * prints its address.
 */
export async function startServer(extraArgs: string[] = [], existingDataDir?: string, listenPort = 0): Promise<Server> {
  if (!existsSync(SERVER_BIN)) throw new Error(`${SERVER_BIN} is missing: run \`cargo build --bins\` first`);
  const dataDir = existingDataDir ?? mkdtempSync(join(tmpdir(), "jobq-web-e2e-"));
  const p = start(SERVER_BIN, ["--listen", `127.0.0.1:${listenPort}`, "--data-dir", dataDir, ...extraArgs], { RUST_LOG: "warn" });
  const port = await eventually("the server's `listening on` line", 30_000, () => {
    if (p.child.exitCode !== null) throw new GiveUp(`jobq-server exited: ${p.output()}`);
    return /listening on 127\.0\.0\.1:(\d+)/.exec(p.output())?.[1];
  });
  const stop = async () => {
    await p.stop();
    if (!existingDataDir && process.env.JOBQ_E2E_KEEP !== "1") rmSync(dataDir, { recursive: true, force: true });
  };
  return { ...p, stop, url: `http://127.0.0.1:${port}`, dataDir };
}

/** Starts the real jobq-worker against the server, if it was built. */
export function startWorker(serverUrl: string, args: string[] = []): Proc | undefined {
  if (!existsSync(WORKER_BIN)) return undefined;
  return start(WORKER_BIN, ["--server", serverUrl, ...args], { RUST_LOG: "info" });
}

export function queueClient(url: string): Client<typeof JobQueueService> {
  return createClient(JobQueueService, createGrpcTransport({ baseUrl: url }));
}

/**
 * A worker the test drives step by step through the WorkerService, so log
 * lines, progress and outcomes happen exactly when the test says.
 */
export class ScriptedWorker {
  readonly client: Client<typeof WorkerService>;
  constructor(
    url: string,
    readonly workerId = "e2e-scripted-worker",
  ) {
    this.client = createClient(WorkerService, createGrpcTransport({ baseUrl: url }));
  }

  /** Leases one job of these types from this queue, waiting up to `ms`. */
  async lease(queue: string, types: string[], ms = 15_000): Promise<LeasedJob> {
    return eventually(`a ${types.join("/")} job to lease in queue ${queue}`, ms, async () => {
      const res = await this.client.leaseJobs({
        workerId: this.workerId,
        queues: [queue],
        types,
        maxJobs: 1,
        wait: { seconds: 2n, nanos: 0 },
        leaseDuration: { seconds: 60n, nanos: 0 },
      });
      return res.jobs[0];
    });
  }

  lease_(l: LeasedJob) {
    return { jobId: l.job?.id ?? "", leaseToken: l.leaseToken };
  }

  async log(l: LeasedJob, lines: { stream: "stdout" | "stderr" | "system" | "progress"; message: string; percent?: number }[]): Promise<void> {
    const streams = { stdout: LogStream.STDOUT, stderr: LogStream.STDERR, system: LogStream.SYSTEM, progress: LogStream.PROGRESS };
    const lease = this.lease_(l);
    async function* body(): AsyncGenerator<MessageInitShape<typeof PushJobLogsRequestSchema>> {
      yield {
        lease,
        // progress_percent is optional: unset when the line has none.
        entries: lines.map((x) => ({ stream: streams[x.stream], message: x.message, progressPercent: x.percent })),
      };
    }
    await this.client.pushJobLogs(body());
  }

  /** Heartbeat with progress; returns whether the server says stop. */
  async progress(l: LeasedJob, percent: number, message: string): Promise<boolean> {
    const res = await this.client.heartbeat({
      workerId: this.workerId,
      leases: [{ lease: this.lease_(l), progressPercent: percent, progressMessage: message }],
    });
    return res.results[0]?.stop ?? false;
  }

  /** Reports success with `result`, a JSON value (sent as a google.protobuf.Value). */
  async complete(l: LeasedJob, result: JsonValue): Promise<void> {
    await this.client.completeJob({ lease: this.lease_(l), result: fromJson(ValueSchema, result) });
  }

  async fail(l: LeasedJob, error: string, retryable: boolean): Promise<void> {
    await this.client.failJob({ lease: this.lease_(l), error, retryable });
  }
}

/** Debian's Chromium, headless, with a fresh profile; never a downloaded browser. */
export async function launchBrowser(): Promise<{ context: BrowserContext; close: () => Promise<void> }> {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install chromium`);
  const profile = mkdtempSync(join(tmpdir(), "jobq-web-e2e-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--disable-quic",
    ],
    viewport: { width: 1440, height: 900 },
    timeout: 30_000,
  });
  context.setDefaultTimeout(15_000);
  context.setDefaultNavigationTimeout(15_000);
  return {
    context,
    close: async () => {
      await context.close().catch(() => undefined);
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** Fails the test on any page error or console error the dashboard logs. */
export function watchConsole(page: Page, errors: string[]): void {
  page.on("pageerror", (e) => errors.push(`pageerror: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(`console: ${m.text()}`);
  });
}

export async function screenshot(page: Page, name: string): Promise<string> {
  mkdirSync(RESULTS_DIR, { recursive: true });
  const path = join(RESULTS_DIR, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}

/**
 * A stand-in for the server's own dashboard route, for working on the page
 * before a server serves it: serves web/dist and forwards everything else
 * (grpc-web) to the server. Only used when JOBQ_E2E_STATIC=1.
 */
/**
 * Where the page is loaded from for `server`: the server itself, or with
 * JOBQ_E2E_STATIC=1 a proxy in front of it serving web/dist from disk.
 */
export async function pageAddress(server: Server): Promise<{ url: string; stop?: () => Promise<void> }> {
  if (process.env.JOBQ_E2E_STATIC !== "1") return { url: server.url };
  const proxy = await startStaticProxy(server.url);
  return { url: proxy.url, stop: proxy.stop };
}

export async function startStaticProxy(serverUrl: string): Promise<{ url: string; stop: () => Promise<void> }> {
  const http = await import("node:http");
  const { readFile } = await import("node:fs/promises");
  const target = new URL(serverUrl);
  const types: Record<string, string> = { html: "text/html", js: "text/javascript", css: "text/css", svg: "image/svg+xml" };
  const srv = http.createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0] ?? "/";
    if (req.method === "GET" && !path.startsWith("/jobq.")) {
      const file = join(WEB_DIR, "dist", path === "/" ? "index.html" : path);
      readFile(file).then(
        (body) => {
          res.writeHead(200, { "content-type": types[file.split(".").pop() ?? ""] ?? "application/octet-stream" });
          res.end(body);
        },
        () => {
          res.writeHead(404);
          res.end();
        },
      );
      return;
    }
    const upstream = http.request(
      { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers },
      (up) => {
        res.writeHead(up.statusCode ?? 502, up.headers);
        res.flushHeaders();
        up.pipe(res);
      },
    );
    upstream.on("error", () => {
      res.writeHead(502);
      res.end();
    });
    req.pipe(upstream);
  });
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", () => r()));
  const addr = srv.address();
  const port = typeof addr === "object" && addr ? addr.port : 0;
  return {
    url: `http://127.0.0.1:${port}`,
    stop: () =>
      new Promise<void>((r) => {
        srv.closeAllConnections();
        srv.close(() => r());
      }),
  };
}
