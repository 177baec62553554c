// BullMQ worker process driven by bench.mjs (one process per drain/latency run).
//
// Protocol, one JSON object per line on stdout, plain lines on stdin:
//   -> {"event":"ready"}                 connected, not yet consuming
//   <- go                                start consuming (t0 is taken here)
//   -> {"event":"running","t0":...}
//   -> {"event":"done", ...}            all expected jobs completed (or gave up)
//   <- stop                              give up now and report what was seen
// If stdin closes (the parent died) the process exits at once.
//
// Times are milliseconds on CLOCK_MONOTONIC (process.hrtime), which is the same
// clock in every process on the machine, so the parent's enqueue stamps and this
// process's handler-start stamps can be subtracted directly.

import { parseArgs } from 'node:util';
import { createInterface } from 'node:readline';
import { Worker } from 'bullmq';

const { values: opt } = parseArgs({
  options: {
    queue: { type: 'string' },
    'redis-port': { type: 'string' },
    concurrency: { type: 'string', default: '32' },
    jobs: { type: 'string' },
    mode: { type: 'string', default: 'drain' },
    'idle-timeout-s': { type: 'string', default: '20' },
  },
});

const queueName = opt.queue;
const port = Number(opt['redis-port']);
const concurrency = Number(opt.concurrency);
const expected = Number(opt.jobs);
const mode = opt.mode;
const idleTimeoutMs = Number(opt['idle-timeout-s']) * 1000;
if (!queueName || !Number.isInteger(port) || !Number.isInteger(expected) || expected <= 0 ||
    !Number.isInteger(concurrency) || concurrency <= 0 || !['drain', 'latency'].includes(mode)) {
  console.error('worker.mjs: bad arguments');
  process.exit(2);
}

const nowMs = () => Number(process.hrtime.bigint()) / 1e6;
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

// runsBySeq[i] = how many times the handler ran for the job carrying seq i.
const runsBySeq = new Uint32Array(expected);
const pickupMs = mode === 'latency' ? new Float64Array(expected).fill(NaN) : null;
let unexpected = 0;
let completed = 0;
let failed = 0;
let t0 = 0;
let tLastCompletion = 0;
let lastProgress = 0;
let finished = false;

const worker = new Worker(
  queueName,
  async (job) => {
    const started = nowMs();
    const seq = job.data?.seq;
    if (Number.isInteger(seq) && seq >= 0 && seq < expected) {
      runsBySeq[seq] += 1;
      if (pickupMs && runsBySeq[seq] === 1) pickupMs[seq] = started - job.data.t_enq_ms;
    } else {
      unexpected += 1;
    }
    // no-op job: nothing else to do
  },
  {
    connection: { host: '127.0.0.1', port, maxRetriesPerRequest: null },
    concurrency,
    autorun: false,
  },
);

worker.on('completed', () => {
  completed += 1;
  tLastCompletion = nowMs();
  lastProgress = tLastCompletion;
  if (completed >= expected) finish('all-completed');
});
worker.on('failed', (job, err) => {
  failed += 1;
  lastProgress = nowMs();
  console.error(`worker.mjs: job ${job?.id} failed: ${err?.message}`);
  if (completed + failed >= expected) finish('all-settled');
});
worker.on('error', (err) => console.error(`worker.mjs: ${err?.message ?? err}`));

const idleCheck = setInterval(() => {
  if (t0 && !finished && nowMs() - lastProgress > idleTimeoutMs) finish('idle-timeout');
}, 500);

function finish(reason) {
  if (finished) return;
  finished = true;
  clearInterval(idleCheck);
  let lost = 0;
  let duplicated = 0;
  for (const n of runsBySeq) {
    if (n === 0) lost += 1;
    else duplicated += n - 1;
  }
  const report = {
    event: 'done', reason, t0, t_last_completion: tLastCompletion,
    completed, failed, unexpected, lost, duplicated,
  };
  if (pickupMs) report.pickup_ms = Array.from(pickupMs).filter((x) => !Number.isNaN(x));
  emit(report);
  const bail = setTimeout(() => process.exit(0), 10_000);
  bail.unref();
  worker.close().catch(() => {}).finally(() => process.exit(0));
}

const stdin = createInterface({ input: process.stdin });
stdin.on('line', (line) => {
  const cmd = line.trim();
  if (cmd === 'go' && !t0) {
    t0 = nowMs();
    lastProgress = t0;
    worker.run().catch((err) => console.error(`worker.mjs: run: ${err?.message ?? err}`));
    emit({ event: 'running', t0 });
  } else if (cmd === 'stop') {
    finish('stopped');
  }
});
stdin.on('close', () => {
  if (!finished) process.exit(1);
});

await worker.waitUntilReady();
emit({ event: 'ready' });
