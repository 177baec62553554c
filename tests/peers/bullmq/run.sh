#!/usr/bin/env bash
# Runs the BullMQ peer benchmark end to end on a private Redis:
#   bash tests/peers/bullmq/run.sh
# Settings come from the environment (defaults shown):
#   RUNS=3 JOBS=20000 CONCURRENCY=32 BATCH=1000 LAT_RATE=200 LAT_JOBS=2000
#   WORKLOADS="enqueue enqueue-batch drain latency" RUN_TIMEOUT_S=300
#   RESULTS_DIR=<this folder>/results  REDIS_SERVER=/usr/bin/redis-server
# Redis listens on 127.0.0.1 only, on a free port, in a fresh temp dir, and is
# stopped (and the dir removed) when the script ends, however it ends.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RUNS="${RUNS:-3}"
JOBS="${JOBS:-20000}"
CONCURRENCY="${CONCURRENCY:-32}"
BATCH="${BATCH:-1000}"
LAT_RATE="${LAT_RATE:-200}"
LAT_JOBS="${LAT_JOBS:-2000}"
WORKLOADS="${WORKLOADS:-enqueue enqueue-batch drain latency}"
RUN_TIMEOUT_S="${RUN_TIMEOUT_S:-300}"
RESULTS_DIR="${RESULTS_DIR:-$HERE/results}"
REDIS_SERVER="${REDIS_SERVER:-/usr/bin/redis-server}"

for tool in node npm "$REDIS_SERVER" redis-cli timeout getconf; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool not found" >&2; exit 2; }
done

# Node modules, exactly as locked.
if [[ ! -f "$HERE/node_modules/bullmq/package.json" || ! -f "$HERE/node_modules/ioredis/package.json" ]]; then
  echo "== installing node modules (npm ci)"
  (cd "$HERE" && timeout 300 npm ci --no-audit --no-fund)
fi

# A free loopback port (never the shared 6379).
free_port() {
  node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}
PORT="$(free_port)"
[[ "$PORT" != 6379 ]] || PORT="$(free_port)"

WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/jobq-bullmq-bench.XXXXXX")"
REDIS_PID=""
cleanup() {
  if [[ -n "$REDIS_PID" ]] && kill -0 "$REDIS_PID" 2>/dev/null; then
    timeout 10 redis-cli -h 127.0.0.1 -p "$PORT" shutdown nosave >/dev/null 2>&1 || true
    for _ in $(seq 50); do kill -0 "$REDIS_PID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$REDIS_PID" 2>/dev/null && kill -9 "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
  fi
  rm -rf "$WORKDIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$REDIS_SERVER" \
  --bind 127.0.0.1 --port "$PORT" --protected-mode yes \
  --dir "$WORKDIR" --logfile "$WORKDIR/redis.log" \
  --appendonly yes --appendfsync everysec --save "" \
  --daemonize no &
REDIS_PID=$!
for _ in $(seq 100); do
  if redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null | grep -q PONG; then break; fi
  kill -0 "$REDIS_PID" 2>/dev/null || { echo "run.sh: redis-server exited:" >&2; cat "$WORKDIR/redis.log" >&2; exit 1; }
  sleep 0.1
done
redis-cli -h 127.0.0.1 -p "$PORT" ping | grep -q PONG || { echo "run.sh: redis did not come up" >&2; exit 1; }

mkdir -p "$RESULTS_DIR"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RESULTS="$RESULTS_DIR/bullmq-$STAMP.jsonl"
: >"$RESULTS"

busy() {
  # Other people's compilers on this shared machine skew the figures: say so.
  local n
  n="$(ps -eo comm= | grep -cE '^(rustc|cargo|cc|cc1|cc1plus|ld|ld.lld|clang|rust-analyzer)$' || true)"
  echo "load $(cut -d' ' -f1-3 /proc/loadavg), compiler processes: $n"
}

echo "== BullMQ peer benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "   $(nproc) cores, node $(node --version), $("$REDIS_SERVER" --version | cut -d' ' -f3), redis pid $REDIS_PID on 127.0.0.1:$PORT"
echo "   redis: appendonly yes, appendfsync everysec, no RDB snapshots, dir $WORKDIR"
echo "   runs=$RUNS jobs=$JOBS concurrency=$CONCURRENCY batch=$BATCH latency: ${LAT_JOBS} jobs at ${LAT_RATE}/s"
echo "   before: $(busy)"

BENCH_TIMEOUT_S=$((RUN_TIMEOUT_S > 40 ? RUN_TIMEOUT_S - 20 : 20))
failures=0
for ((run = 1; run <= RUNS; run++)); do
  # Round-robin over the workloads, so drift on the shared machine spreads evenly.
  for w in $WORKLOADS; do
    jobs="$JOBS"
    [[ "$w" == latency ]] && jobs="$LAT_JOBS"
    echo "-- run $run/$RUNS: $w"
    if out="$(timeout -k 10 "$RUN_TIMEOUT_S" node "$HERE/bench.mjs" \
        --workload "$w" --jobs "$jobs" --concurrency "$CONCURRENCY" --batch "$BATCH" \
        --rate "$LAT_RATE" --redis-port "$PORT" --timeout-s "$BENCH_TIMEOUT_S" --json)"; then
      echo "$out" >>"$RESULTS"
    else
      rc=$?
      echo "run.sh: $w run $run failed (exit $rc)" >&2
      [[ "$out" == "{"* ]] && echo "$out" >>"$RESULTS"
      failures=$((failures + 1))
    fi
  done
done

echo "   after: $(busy)"
echo
node "$HERE/summarize.mjs" "$RESULTS" || true
echo
echo "raw results: $RESULTS"
if ((failures > 0)); then
  echo "run.sh: $failures run(s) failed or lost/duplicated jobs" >&2
  exit 1
fi
