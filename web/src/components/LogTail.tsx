//! Live log tail of one job: StreamJobLogs with follow (resumed after the
//! last line when the stream breaks), stdout/stderr/system/progress told
//! apart, auto-scroll that pauses when the reader scrolls up.
import { useEffect, useLayoutEffect, useRef, useState } from "preact/hooks";
import type { LogLine } from "../gen/jobq/v1/log_pb";
import { api, errorMessage, noteError } from "../lib/api";
import { capLines, INITIAL_FOLLOW, jumpToLatest, onAppend, onScroll, type FollowState } from "../lib/autoscroll";
import { formatClock, formatCount, formatFields, logEntryLabel, tsMillis } from "../lib/format";
import { followLog, type FollowStatus } from "../lib/logfollow";
import { logStreamName } from "../lib/states";
import { usePageActive } from "../lib/visibility";

const MAX_LINES = 5000;
const STREAMS = ["stdout", "stderr", "system", "progress"] as const;

type StreamStatus = FollowStatus | "paused";

export function LogTail({ jobId, active, attemptNumbers }: { jobId: string; active: boolean; attemptNumbers?: ReadonlyMap<number, number> }) {
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
    endedRef.current = false;
    void followLog({
      client: api(),
      jobId,
      afterPosition: lastPos.current,
      signal: abort.signal,
      stillRunning: () => activeRef.current,
      onLines: (incoming) => {
        const last = incoming[incoming.length - 1];
        if (last) lastPos.current = last.position;
        const { state, scroll } = onAppend(followRef.current, incoming.length);
        if (state !== followRef.current) setFollow(state);
        if (scroll) pendingScroll.current = true;
        setLines((cur) => {
          const r = capLines(cur, incoming, MAX_LINES);
          if (r.dropped) setDropped((d) => d + r.dropped);
          return r.lines;
        });
      },
      onStatus: (next, err) => {
        if (abort.signal.aborted) return;
        if (err) noteError(err);
        setError(err ? errorMessage(err) : undefined);
        setStatus(next);
        // "ended": the job finished and its log is complete; "failed": the
        // job is gone or the call is refused. Either way nothing more comes
        // unless the job runs again.
        if (next === "ended" || next === "failed") endedRef.current = true;
      },
    });
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
  // Entries of the history, one after another: position = (entry << 32) | line.
  let prevEntry = -1n;
  return (
    <div class="logs">
      <div class="logs-toolbar">
        <span class={`live-dot ${status === "following" ? "on" : status === "ended" ? "off" : "warn"}`} />
        <span class="small" data-testid="log-status" data-status={status}>
          {
            {
              following: "Following",
              ended: "Ended",
              connecting: "Connecting…",
              paused: "Paused in background",
              retrying: "Reconnecting…",
              failed: "Stopped",
            }[status]
          }
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
      {error && (status === "retrying" || status === "failed") ? <div class="notice notice-error small">{error}</div> : null}
      <div
        ref={boxRef}
        class={`log-box ${wrap ? "wrap" : ""}`}
        data-testid="log-box"
        // Focusable, so the log scrolls with the arrow keys too.
        tabIndex={0}
        role="log"
        aria-label="Job log"
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
          const entry = l.position >> 32n;
          const divider =
            entry !== prevEntry && entry > 0n ? (
              <div class="log-attempt" key={`a${l.position}`}>
                {logEntryLabel(l.attempt, attemptNumbers)}
              </div>
            ) : null;
          prevEntry = entry;
          const fields = formatFields(l.fields);
          return [
            divider,
            <div key={String(l.position)} class={`log-line log-${stream}`}>
              <span class="log-time">{formatClock(tsMillis(l.time))}</span>
              <span class="log-stream">{stream}</span>
              <span class="log-msg">
                {l.message}
                {fields ? <span class="log-fields"> {fields}</span> : null}
              </span>
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
