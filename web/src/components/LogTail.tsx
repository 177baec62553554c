//! Live log tail of one job: StreamJobLogs with follow, stdout/stderr/
//! system/progress told apart, auto-scroll that pauses when the reader
//! scrolls up.
import { useEffect, useLayoutEffect, useRef, useState } from "preact/hooks";
import type { LogLine } from "../gen/jobq/v1/log_pb";
import { api, errorMessage, isAbort, noteError } from "../lib/api";
import { capLines, INITIAL_FOLLOW, jumpToLatest, onAppend, onScroll, type FollowState } from "../lib/autoscroll";
import { formatClock, formatCount, tsMillis } from "../lib/format";
import { logStreamName } from "../lib/states";
import { usePageActive } from "../lib/visibility";

const MAX_LINES = 5000;
const STREAMS = ["stdout", "stderr", "system", "progress"] as const;

type StreamStatus = "connecting" | "following" | "ended" | "retrying" | "paused";

export function LogTail({ jobId, active }: { jobId: string; active: boolean }) {
  const [lines, setLines] = useState<LogLine[]>([]);
  const [dropped, setDropped] = useState(0);
  const [status, setStatus] = useState<StreamStatus>("connecting");
  const [error, setError] = useState<string | undefined>();
  const [hidden, setHidden] = useState<Set<string>>(new Set());
  const [follow, setFollow] = useState<FollowState>(INITIAL_FOLLOW);
  const [wrap, setWrap] = useState(true);
  const followRef = useRef(follow);
  followRef.current = follow;
  const boxRef = useRef<HTMLDivElement>(null);
  const lastPos = useRef(0n);
  const pendingScroll = useRef(false);
  // A restart key: bumped when a finished job becomes active again (retried).
  const [generation, setGeneration] = useState(0);
  const activeRef = useRef(active);
  const endedRef = useRef(false);
  // A tab long in the background closes the stream; it resumes from the last line.
  const pageActive = usePageActive();

  useEffect(() => {
    if (active && !activeRef.current && endedRef.current) setGeneration((g) => g + 1);
    activeRef.current = active;
  }, [active]);

  useEffect(() => {
    if (endedRef.current && !activeRef.current) return;
    if (!pageActive) {
      setStatus("paused");
      return;
    }
    const abort = new AbortController();
    let retryDelay = 1000;
    endedRef.current = false;
    const run = async (): Promise<void> => {
      while (!abort.signal.aborted) {
        setStatus(lastPos.current === 0n ? "connecting" : "following");
        let lagged = false;
        try {
          const stream = api().streamJobLogs(
            { jobId, follow: true, afterPosition: lastPos.current },
            { signal: abort.signal, timeoutMs: 0, onHeader: () => setStatus("following") },
          );
          for await (const res of stream) {
            retryDelay = 1000;
            setError(undefined);
            if (res.lines.length > 0) {
              const last = res.lines[res.lines.length - 1];
              if (last) lastPos.current = last.position;
              const { state, scroll } = onAppend(followRef.current, res.lines.length);
              if (state !== followRef.current) setFollow(state);
              if (scroll) pendingScroll.current = true;
              setLines((cur) => {
                const r = capLines(cur, res.lines, MAX_LINES);
                if (r.dropped) setDropped((d) => d + r.dropped);
                return r.lines;
              });
            }
            if (res.lagged) {
              lastPos.current = res.resumeAfterPosition;
              lagged = true;
              break;
            }
          }
          if (lagged) continue;
          // The server ends a followed stream when the job is terminal.
          endedRef.current = true;
          setStatus("ended");
          return;
        } catch (err) {
          if (abort.signal.aborted || isAbort(err)) return;
          noteError(err);
          setError(errorMessage(err));
          setStatus("retrying");
          await new Promise((r) => setTimeout(r, retryDelay));
          retryDelay = Math.min(retryDelay * 2, 15000);
        }
      }
    };
    void run();
    return () => abort.abort();
  }, [jobId, generation, pageActive]);

  useLayoutEffect(() => {
    const box = boxRef.current;
    if (box && pendingScroll.current) {
      pendingScroll.current = false;
      box.scrollTop = box.scrollHeight;
    }
  });

  const visible = hidden.size === 0 ? lines : lines.filter((l) => !hidden.has(logStreamName(l.stream)));
  const toggle = (s: string) => {
    const next = new Set(hidden);
    if (next.has(s)) next.delete(s);
    else next.add(s);
    setHidden(next);
  };
  let prevAttempt = -1;
  return (
    <div class="logs">
      <div class="logs-toolbar">
        <span class={`live-dot ${status === "following" ? "on" : status === "ended" ? "off" : "warn"}`} />
        <span class="small" data-testid="log-status">
          {status === "following"
            ? "Following"
            : status === "ended"
              ? "Ended"
              : status === "connecting"
                ? "Connecting…"
                : status === "paused"
                  ? "Paused in background"
                  : "Reconnecting…"}
          {" · "}
          {formatCount(lines.length)} lines
        </span>
        <span class="grow" />
        {STREAMS.map((s) => (
          <label key={s} class={`stream-toggle stream-${s}`}>
            <input type="checkbox" checked={!hidden.has(s)} onChange={() => toggle(s)} />
            {s}
          </label>
        ))}
        <label class="stream-toggle">
          <input type="checkbox" checked={wrap} onChange={() => setWrap(!wrap)} />
          wrap
        </label>
      </div>
      {error && status === "retrying" ? <div class="notice notice-error small">{error}</div> : null}
      <div
        ref={boxRef}
        class={`log-box ${wrap ? "wrap" : ""}`}
        data-testid="log-box"
        onScroll={(e) => {
          const el = e.currentTarget;
          const next = onScroll(followRef.current, el);
          if (next !== followRef.current) setFollow(next);
        }}
      >
        {dropped > 0 ? <div class="log-note">{formatCount(dropped)} earlier lines not shown</div> : null}
        {visible.length === 0 ? (
          <div class="log-note">{status === "ended" ? "This job wrote no log lines." : "Waiting for log lines…"}</div>
        ) : null}
        {visible.map((l) => {
          const stream = logStreamName(l.stream);
          const divider =
            l.attempt !== prevAttempt && l.attempt > 0 ? (
              <div class="log-attempt" key={`a${l.position}`}>
                Attempt {l.attempt}
              </div>
            ) : null;
          prevAttempt = l.attempt;
          return [
            divider,
            <div key={String(l.position)} class={`log-line log-${stream}`}>
              <span class="log-time">{formatClock(tsMillis(l.time))}</span>
              <span class="log-stream">{stream}</span>
              <span class="log-msg">{l.message}</span>
            </div>,
          ];
        })}
      </div>
      {!follow.following ? (
        <button
          class="btn btn-sm jump"
          onClick={() => {
            setFollow(jumpToLatest());
            const box = boxRef.current;
            if (box) box.scrollTop = box.scrollHeight;
          }}
        >
          ↓ {follow.unseen > 0 ? `${formatCount(follow.unseen)} new lines` : "Jump to latest"}
        </button>
      ) : null}
    </div>
  );
}
