// Reads the JSON lines written by bench.mjs --json (a file argument, or stdin)
// and prints, per workload, the median and the range (min..max) of each figure.

import { readFileSync } from 'node:fs';

const text = readFileSync(process.argv[2] ?? 0, 'utf8');
const runs = text.split('\n').filter((l) => l.trim().startsWith('{')).map((l) => JSON.parse(l));
if (runs.length === 0) {
  console.error('summarize.mjs: no results');
  process.exit(1);
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

function cell(values, digits) {
  const xs = values.filter((v) => typeof v === 'number');
  if (xs.length === 0) return '-';
  const f = (v) => v.toFixed(digits);
  if (xs.length === 1) return f(xs[0]);
  return `${f(median(xs))} (${f(Math.min(...xs))}–${f(Math.max(...xs))})`;
}

const order = ['enqueue', 'enqueue-batch', 'drain', 'latency'];
const byWorkload = new Map();
for (const r of runs) {
  if (!byWorkload.has(r.workload)) byWorkload.set(r.workload, []);
  byWorkload.get(r.workload).push(r);
}
const workloads = [...byWorkload.keys()].sort((a, b) => order.indexOf(a) - order.indexOf(b));

const header = ['workload', 'shape', 'runs', 'jobs/s', 'pickup p50 ms', 'pickup p99 ms',
  'redis cpu-s/1k jobs', 'redis peak RSS MiB', 'lost', 'dup'];
const rows = [header];
for (const w of workloads) {
  const rs = byWorkload.get(w);
  const r0 = rs[0];
  const shape = w === 'latency' ? `n=${r0.jobs} rate=${r0.rate}/s conc=${r0.concurrency}`
    : w === 'enqueue-batch' ? `n=${r0.jobs} batch=${r0.batch}` : `n=${r0.jobs} conc=${r0.concurrency}`;
  const pick = (k) => rs.map((r) => r[k]);
  rows.push([
    w, shape, String(rs.length),
    cell(pick('jobs_per_s'), 0),
    cell(pick('p50_ms'), 2),
    cell(pick('p99_ms'), 2),
    cell(pick('server_cpu_s_per_1000'), 3),
    cell(pick('server_peak_rss_mib'), 1),
    String(rs.reduce((a, r) => a + (r.lost ?? 0), 0)),
    String(rs.reduce((a, r) => a + (r.duplicated ?? 0), 0)),
  ]);
}

const widths = header.map((_, i) => Math.max(...rows.map((r) => r[i].length)));
const line = (r) => '| ' + r.map((c, i) => c.padEnd(widths[i])).join(' | ') + ' |';
console.log(`BullMQ ${runs[0].version} on Redis ${runs[0].redis_version} (AOF ${runs[0].redis_aof}), ` +
  `node ${runs[0].node_version}: median (min–max) of each workload's runs`);
console.log(line(rows[0]));
console.log('|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|');
for (const r of rows.slice(1)) console.log(line(r));
