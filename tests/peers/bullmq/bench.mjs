// Measures BullMQ on a private Redis with the workloads jobq is measured on.
//
//   node bench.mjs --workload enqueue|enqueue-batch|drain|latency \
//     --jobs N --concurrency C --batch B --rate R --redis-port P [--json]
//
// One run per invocation. The human-readable line goes to stdout, or to stderr
// when --json is given (then stdout carries exactly one JSON object per line).
// Each run starts by emptying the Redis it is pointed at (FLUSHALL), so only
// point it at a Redis started for this purpose; port 6379 is refused.

import { parseArgs } from 'node:util';
import { spawn, execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { loadavg } from 'node:os';
import { Queue } from 'bullmq';
import IORedis from 'ioredis';

const HOST = '127.0.0.1';
const WORKLOADS = ['enqueue', 'enqueue-batch', 'drain', 'latency'];
const BULLMQ_VERSION = createRequire(import.meta.url)('bullmq/package.json').version;
const WORKER_SCRIPT = fileURLToPath(new URL('./worker.mjs', import.meta.url));

// ---------- arguments ----------

function parseCli() {
  const { values } = parseArgs({
    options: {
      workload: { type: 'string' },
      jobs: { type: 'string', default: '20000' },
      concurrency: { type: 'string', default: '32' },
      batch: { type: 'string', default: '1000' },
      rate: { type: 'string', default: '200' },
      'redis-port': { type: 'string' },
      json: { type: 'boolean', default: false },
      'timeout-s': { type: 'string', default: '240' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  const usage = 'usage: node bench.mjs --workload ' + WORKLOADS.join('|') +
    ' --jobs N --concurrency C --batch B --rate R --redis-port P [--json] [--timeout-s S]';
  if (values.help) {
    console.log(usage);
    process.exit(0);
  }
  const int = (name) => {
    const v = Number(values[name]);
    if (!Number.isInteger(v) || v <= 0) fail(`--${name} must be a positive integer\n${usage}`);
    return v;
  };
  if (!WORKLOADS.includes(values.workload)) fail(`--workload must be one of ${WORKLOADS.join(', ')}\n${usage}`);
  if (values['redis-port'] === undefined) fail(`--redis-port is required\n${usage}`);
  const port = int('redis-port');
  if (port === 6379) fail('refusing port 6379: that is the machine\'s shared Redis; start a private one (see run.sh)');
  const rate = Number(values.rate);
  if (!(rate > 0)) fail('--rate must be > 0');
  return {
    workload: values.workload,
    jobs: int('jobs'),
    concurrency: int('concurrency'),
    batch: int('batch'),
    rate,
    port,
    json: values.json,
    timeoutS: int('timeout-s'),
  };
}

function fail(msg) {
  console.error(`bench.mjs: ${msg}`);
  process.exit(2);
}

// ---------- clocks and measurement helpers ----------

// CLOCK_MONOTONIC in ms; shared by every process on the machine (see worker.mjs).
const nowMs = () => Number(process.hrtime.bigint()) / 1e6;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim());

// utime+stime (whole process, all threads) and cutime+cstime (reaped children,
// e.g. an AOF rewrite fork), in seconds.
function readCpu(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after "(comm)" start at field 3; utime is field 14.
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const at = (field) => Number(f[field - 3]);
  return { self: (at(14) + at(15)) / CLK_TCK, children: (at(16) + at(17)) / CLK_TCK };
}

function readHwmKiB(pid) {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/^VmHWM:\s+(\d+)\s+kB/m);
  return m ? Number(m[1]) : null;
}

// Writing 5 to clear_refs resets VmHWM to the current RSS (needs root or the
// same uid as Redis). Without it VmHWM is the peak since Redis started.
function resetHwm(pid) {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

// Nearest-rank percentile over an ascending array: the smallest sample such
// that at least p% of the samples are <= it.
function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[rank - 1];
}

const round = (x, digits) => (x === null || x === undefined || Number.isNaN(x) ? null : Number(x.toFixed(digits)));

// ---------- Redis housekeeping ----------

async function infoField(admin, section, field) {
  const text = await admin.info(section);
  const m = text.match(new RegExp(`^${field}:(.*)$`, 'm'));
  return m ? m[1].trim() : null;
}

async function waitAofRewriteIdle(admin, deadline) {
  for (;;) {
    const inProgress = await infoField(admin, 'persistence', 'aof_rewrite_in_progress');
    const scheduled = await infoField(admin, 'persistence', 'aof_rewrite_scheduled');
    if (inProgress !== '1' && scheduled !== '1') return;
    if (nowMs() > deadline) throw new Error('AOF rewrite did not finish in time');
    await sleep(50);
  }
}

// Empty Redis, load BullMQ's Lua scripts into the script cache, empty again,
// compact the AOF and return freed memory, so every run starts from the same
// state and the timed part does not pay for first-time script loading.
async function prepareRedis(admin, port, pid, runId) {
  await admin.flushall();
  const warm = new Queue(`${runId}-warmup`, { connection: { host: HOST, port } });
  await warm.waitUntilReady();
  await warm.add('noop', { seq: -1 });
  await warm.addBulk([{ name: 'noop', data: { seq: -2 } }, { name: 'noop', data: { seq: -3 } }]);
  await warm.close();
  await admin.flushall();
  const deadline = nowMs() + 60_000;
  await waitAofRewriteIdle(admin, deadline);
  await admin.bgrewriteaof();
  await sleep(20);
  await waitAofRewriteIdle(admin, deadline);
  try {
    await admin.call('MEMORY', 'PURGE');
  } catch {
    // not available with every allocator; harmless
  }
  return resetHwm(pid);
}

// ---------- worker process ----------

function startWorker(opts, queueName, mode, jobs) {
  const child = spawn(process.execPath, [
    WORKER_SCRIPT,
    '--queue', queueName,
    '--redis-port', String(opts.port),
    '--concurrency', String(opts.concurrency),
    '--jobs', String(jobs),
    '--mode', mode,
  ], { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  async function expect(event) {
    for (;;) {
      const { value, done } = await lines.next();
      if (done) throw new Error(`worker process ended before reporting "${event}"`);
      let msg;
      try {
        msg = JSON.parse(value);
      } catch {
        process.stderr.write(`worker: ${value}\n`);
        continue;
      }
      if (msg.event === event) return msg;
    }
  }
  const send = (cmd) => child.stdin.write(cmd + '\n');
  async function shutdown() {
    const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
    child.stdin.end();
    const result = await exited;
    clearTimeout(timer);
    return result;
  }
  return { child, expect, send, shutdown };
}

// ---------- workloads ----------
// Each returns { seconds, cpu0, cpu1, lost, duplicated, ... } for the timed part.

async function enqueueOnePerCall(ctx) {
  const { opts, queue, pid } = ctx;
  const n = opts.jobs;
  const ackMs = new Float64Array(n);
  let next = 0;
  async function lane() {
    for (;;) {
      const seq = next++;
      if (seq >= n) return;
      const t = nowMs();
      await queue.add('noop', { seq });
      ackMs[seq] = nowMs() - t;
    }
  }
  const cpu0 = readCpu(pid);
  const t0 = nowMs();
  await Promise.all(Array.from({ length: opts.concurrency }, lane));
  const t1 = nowMs();
  const cpu1 = readCpu(pid);
  const sorted = Array.from(ackMs).sort((a, b) => a - b);
  return {
    seconds: (t1 - t0) / 1000, cpu0, cpu1, concurrency: opts.concurrency, batch: null,
    ack_p50_ms: percentile(sorted, 50), ack_p99_ms: percentile(sorted, 99),
    ...(await countWaiting(queue, n)),
  };
}

async function enqueueBatches(ctx) {
  const { opts, queue, pid } = ctx;
  const n = opts.jobs;
  const ackMs = [];
  const cpu0 = readCpu(pid);
  const t0 = nowMs();
  for (let start = 0; start < n; start += opts.batch) {
    const end = Math.min(n, start + opts.batch);
    const jobs = [];
    for (let seq = start; seq < end; seq++) jobs.push({ name: 'noop', data: { seq } });
    const t = nowMs();
    await queue.addBulk(jobs);
    ackMs.push(nowMs() - t);
  }
  const t1 = nowMs();
  const cpu1 = readCpu(pid);
  ackMs.sort((a, b) => a - b);
  return {
    seconds: (t1 - t0) / 1000, cpu0, cpu1, concurrency: 1, batch: opts.batch,
    ack_p50_ms: percentile(ackMs, 50), ack_p99_ms: percentile(ackMs, 99),
    ...(await countWaiting(queue, n)),
  };
}

// After an enqueue workload every job must be waiting, once.
async function countWaiting(queue, n) {
  const counts = await queue.getJobCounts('wait', 'active', 'completed', 'failed', 'delayed', 'prioritized');
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  return { lost: Math.max(0, n - total), duplicated: Math.max(0, total - n), queue_counts: counts };
}

async function drain(ctx) {
  const { opts, queue, pid, queueName } = ctx;
  const n = opts.jobs;
  // Untimed preload, in batches of 1,000.
  for (let start = 0; start < n; start += 1000) {
    const jobs = [];
    for (let seq = start; seq < Math.min(n, start + 1000); seq++) jobs.push({ name: 'noop', data: { seq } });
    await queue.addBulk(jobs);
  }
  const waiting = await queue.getWaitingCount();
  if (waiting !== n) throw new Error(`preload left ${waiting} waiting jobs, expected ${n}`);

  const w = startWorker(opts, queueName, 'drain', n);
  ctx.worker = w;
  await w.expect('ready');
  const cpu0 = readCpu(pid);
  w.send('go');
  const done = await w.expect('done');
  const cpu1 = readCpu(pid);
  await w.shutdown();
  const counts = await queue.getJobCounts('wait', 'active', 'completed', 'failed', 'delayed', 'prioritized');
  if (done.reason !== 'all-completed') console.error(`bench.mjs: worker stopped early (${done.reason})`);
  if (counts.completed !== n) console.error(`bench.mjs: completed set holds ${counts.completed} jobs, expected ${n}`);
  return {
    seconds: (done.t_last_completion - done.t0) / 1000, cpu0, cpu1,
    concurrency: opts.concurrency, batch: null,
    lost: done.lost, duplicated: done.duplicated, failed: done.failed,
    worker_completed: done.completed, queue_counts: counts,
  };
}

async function latency(ctx) {
  const { opts, queue, pid, queueName } = ctx;
  const n = opts.jobs;
  const w = startWorker(opts, queueName, 'latency', n);
  ctx.worker = w;
  await w.expect('ready');
  w.send('go');
  await w.expect('running');
  await sleep(500); // let the worker settle into its blocking wait: it is idle when jobs arrive

  const intervalMs = 1000 / opts.rate;
  const inflight = new Set();
  const cpu0 = readCpu(pid);
  const tStart = nowMs();
  // Open loop: job i is sent at tStart + i*interval whatever the earlier adds are doing.
  for (let seq = 0; seq < n; seq++) {
    const due = tStart + seq * intervalMs;
    const wait = due - nowMs();
    if (wait > 1) await sleep(wait);
    const p = queue.add('noop', { seq, t_enq_ms: nowMs(), wall_ms: Date.now() });
    inflight.add(p);
    p.catch(() => {}).then(() => inflight.delete(p));
  }
  const tLastSend = nowMs();
  await Promise.all(inflight);
  const done = await w.expect('done');
  const cpu1 = readCpu(pid);
  await w.shutdown();
  if (done.reason !== 'all-completed') console.error(`bench.mjs: worker stopped early (${done.reason})`);
  const sorted = done.pickup_ms.sort((a, b) => a - b);
  return {
    seconds: (done.t_last_completion - tStart) / 1000, cpu0, cpu1,
    concurrency: opts.concurrency, batch: null, rate: opts.rate,
    p50_ms: percentile(sorted, 50), p90_ms: percentile(sorted, 90),
    p99_ms: percentile(sorted, 99), max_ms: sorted.length ? sorted[sorted.length - 1] : null,
    lost: done.lost, duplicated: done.duplicated, failed: done.failed,
    achieved_send_rate: n > 1 ? (n - 1) / ((tLastSend - tStart) / 1000) : null,
  };
}

const RUNNERS = { enqueue: enqueueOnePerCall, 'enqueue-batch': enqueueBatches, drain, latency };

// ---------- main ----------

async function main() {
  const opts = parseCli();
  const ctx = { opts };
  const watchdog = setTimeout(() => {
    console.error(`bench.mjs: ${opts.workload} run exceeded ${opts.timeoutS}s, aborting`);
    ctx.worker?.child.kill('SIGKILL');
    process.exit(3);
  }, opts.timeoutS * 1000);

  const admin = new IORedis({ host: HOST, port: opts.port, maxRetriesPerRequest: 2, connectTimeout: 5000 });
  admin.on('error', () => {}); // surfaced by the first command instead
  const pid = Number(await infoField(admin, 'server', 'process_id'));
  const redisVersion = await infoField(admin, 'server', 'redis_version');
  const aof = await admin.config('GET', 'appendonly');
  const fsync = await admin.config('GET', 'appendfsync');
  const runId = `bench-${opts.workload}-${process.pid}`;
  const hwmReset = await prepareRedis(admin, opts.port, pid, runId);

  const queueName = `${runId}-q`;
  const queue = new Queue(queueName, { connection: { host: HOST, port: opts.port } });
  await queue.waitUntilReady();
  Object.assign(ctx, { queue, queueName, pid });
  const load0 = loadavg()[0];

  const r = await RUNNERS[opts.workload](ctx);

  const hwmKiB = readHwmKiB(pid);
  await queue.close();
  await admin.quit();
  clearTimeout(watchdog);

  const cpuSelf = r.cpu1.self - r.cpu0.self;
  const cpuChildren = r.cpu1.children - r.cpu0.children;
  const out = {
    peer: 'bullmq',
    version: BULLMQ_VERSION,
    workload: opts.workload,
    jobs: opts.jobs,
    concurrency: r.concurrency,
    batch: r.batch,
    rate: r.rate ?? null,
    seconds: round(r.seconds, 4),
    jobs_per_s: round(opts.jobs / r.seconds, 1),
    p50_ms: round(r.p50_ms, 3),
    p99_ms: round(r.p99_ms, 3),
    server_cpu_s_per_1000: round((cpuSelf / opts.jobs) * 1000, 4),
    server_peak_rss_mib: round(hwmKiB / 1024, 1),
    lost: r.lost,
    duplicated: r.duplicated,
    // extras
    p90_ms: round(r.p90_ms, 3),
    max_ms: round(r.max_ms, 3),
    ack_p50_ms: round(r.ack_p50_ms, 3),
    ack_p99_ms: round(r.ack_p99_ms, 3),
    failed: r.failed ?? 0,
    server_cpu_s: round(cpuSelf, 3),
    server_child_cpu_s: round(cpuChildren, 3),
    peak_rss_since: hwmReset ? 'run-start' : 'redis-start',
    queue_counts: r.queue_counts ?? null,
    achieved_send_rate: round(r.achieved_send_rate, 1),
    redis_version: redisVersion,
    redis_aof: `${aof[1]}/${fsync[1]}`,
    node_version: process.version,
    loadavg_1m_before: round(load0, 2),
    loadavg_1m_after: round(loadavg()[0], 2),
    at: new Date().toISOString(),
  };
  for (const k of ['p90_ms', 'max_ms', 'ack_p50_ms', 'ack_p99_ms', 'achieved_send_rate']) {
    if (out[k] === null) delete out[k];
  }

  const human = humanLine(out);
  if (opts.json) {
    process.stderr.write(human + '\n');
    process.stdout.write(JSON.stringify(out) + '\n');
  } else {
    process.stdout.write(human + '\n');
  }
  const ok = out.lost === 0 && out.duplicated === 0 && out.failed === 0;
  process.exit(ok ? 0 : 1);
}

function humanLine(o) {
  const fmt = (v, d = 1) => (v === null || v === undefined ? '-' : Number(v).toFixed(d));
  const shape = o.workload === 'latency'
    ? `rate=${o.rate}/s conc=${o.concurrency}`
    : o.workload === 'enqueue-batch' ? `batch=${o.batch}` : `conc=${o.concurrency}`;
  const lat = o.workload === 'latency'
    ? `  pickup p50=${fmt(o.p50_ms, 2)} p90=${fmt(o.p90_ms, 2)} p99=${fmt(o.p99_ms, 2)} max=${fmt(o.max_ms, 2)} ms`
    : '';
  return [
    `bullmq ${o.version}`.padEnd(13),
    o.workload.padEnd(14),
    `n=${o.jobs}`.padEnd(8),
    shape.padEnd(20),
    `${fmt(o.seconds, 3)} s`.padStart(9),
    `${fmt(o.jobs_per_s, 0)} jobs/s`.padStart(13),
    `  redis ${fmt(o.server_cpu_s_per_1000, 4)} cpu-s/1k jobs`,
    `  peak rss ${fmt(o.server_peak_rss_mib, 1)} MiB`,
    `  lost ${o.lost} dup ${o.duplicated}`,
    lat,
    `  load1 ${fmt(o.loadavg_1m_before, 2)}`,
  ].join(' ');
}

main().catch((err) => {
  console.error(`bench.mjs: ${err?.stack ?? err}`);
  process.exit(1);
});
