//! Small presentational pieces: badges, progress bars, times, notices, pager.
import type { ComponentChildren } from "preact";
import type { Value } from "@bufbuild/protobuf/wkt";
import type { JobState } from "../gen/jobq/v1/job_pb";
import { clampPercent, formatDateTimeZone, formatRelative, prettyValue } from "../lib/format";
import { stateInfo, type Tone } from "../lib/states";

export function Badge({ tone, children, title }: { tone: Tone; children: ComponentChildren; title?: string }) {
  return (
    <span class={`badge badge-${tone}`} title={title}>
      {children}
    </span>
  );
}

export function StateBadge({ state, cancelRequested }: { state: JobState; cancelRequested?: boolean }) {
  const info = stateInfo(state);
  return (
    <span class="badge-group">
      <span class={`badge badge-${info.tone}`} data-state={info.slug}>
        <span class="dot" />
        {info.label}
      </span>
      {cancelRequested && !info.terminal ? (
        <span class="badge badge-gray" title="A cancel was asked; the worker stops at its next heartbeat">
          cancelling
        </span>
      ) : null}
    </span>
  );
}

export function ProgressBar({ percent, tone = "blue", label }: { percent: number; tone?: Tone; label?: string }) {
  const p = clampPercent(percent);
  return (
    <div class="progress" role="progressbar" aria-label={label ?? "Progress"} aria-valuenow={p} aria-valuemin={0} aria-valuemax={100} title={label}>
      <div class={`progress-fill fill-${tone}`} style={{ width: `${p}%` }} />
    </div>
  );
}

/** A relative time ("5m ago") with the exact time on hover. */
export function Time({ ms, now }: { ms: number | undefined; now: number }) {
  if (ms === undefined) return <span class="muted">—</span>;
  return (
    <time dateTime={new Date(ms).toISOString()} title={formatDateTimeZone(ms)}>
      {formatRelative(ms, now)}
    </time>
  );
}

export function ErrorBox({ message, onRetry }: { message: string; onRetry?: () => void }) {
  return (
    <div class="notice notice-error" role="alert">
      <span>{message}</span>
      {onRetry ? (
        <button class="btn btn-sm" onClick={onRetry}>
          Try again
        </button>
      ) : null}
    </div>
  );
}

export function Empty({ title, children }: { title: string; children?: ComponentChildren }) {
  return (
    <div class="empty">
      <div class="empty-title">{title}</div>
      {children ? <div class="empty-text">{children}</div> : null}
    </div>
  );
}

export function Spinner({ label = "Loading…" }: { label?: string }) {
  return (
    <div class="loading">
      <span class="spinner" aria-hidden="true" />
      {label}
    </div>
  );
}

export function PageHeader({ title, sub, children }: { title: string; sub?: ComponentChildren; children?: ComponentChildren }) {
  return (
    <div class="page-header">
      <div>
        <h1>{title}</h1>
        {sub ? <div class="page-sub">{sub}</div> : null}
      </div>
      {children ? <div class="page-actions">{children}</div> : null}
    </div>
  );
}

export function Card({ title, actions, children, class: cls }: { title?: ComponentChildren; actions?: ComponentChildren; children: ComponentChildren; class?: string }) {
  return (
    <section class={`card ${cls ?? ""}`}>
      {title || actions ? (
        <header class="card-header">
          <h2>{title}</h2>
          {actions ? <div class="card-actions">{actions}</div> : null}
        </header>
      ) : null}
      {children}
    </section>
  );
}

/** A JSON value (payload, result) pretty-printed; `empty` when it is unset. */
export function JsonBlock({ value, empty = "—" }: { value: Value | undefined; empty?: string }) {
  const pretty = prettyValue(value);
  if (!pretty) return <div class="muted">{empty}</div>;
  return <pre class="code">{pretty}</pre>;
}

export interface PagerProps {
  page: number;
  hasPrev: boolean;
  hasNext: boolean;
  onFirst: () => void;
  onPrev: () => void;
  onNext: () => void;
  shown: number;
}

/** Keyset paging: newest / previous / next (no page numbers to jump to). */
export function Pager(p: PagerProps) {
  return (
    <div class="pager">
      <span class="muted">
        Page {p.page} · {p.shown} shown
      </span>
      <div class="pager-buttons">
        <button class="btn btn-sm" disabled={!p.hasPrev} onClick={p.onFirst}>
          « Newest
        </button>
        <button class="btn btn-sm" disabled={!p.hasPrev} onClick={p.onPrev}>
          ‹ Newer
        </button>
        <button class="btn btn-sm" disabled={!p.hasNext} onClick={p.onNext} data-testid="next-page">
          Older ›
        </button>
      </div>
    </div>
  );
}
