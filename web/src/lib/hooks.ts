//! Small Preact hooks shared by the views.
import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import type { Code } from "@connectrpc/connect";
import { errorCode, errorMessage, isAbort } from "./api";
import { live, type LagNote, type LiveListener, type LiveStatus } from "./live";

/** The current time, re-read every `intervalMs` (for "5s ago" labels). */
export function useNow(intervalMs = 1000): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), intervalMs);
    return () => clearInterval(t);
  }, [intervalMs]);
  return now;
}

export interface AsyncState<T> {
  data?: T;
  error?: string;
  /** gRPC code of the error. */
  code?: Code;
  loading: boolean;
  /** Runs the loader again (keeps the old data on screen meanwhile). */
  reload: () => void;
  /** Like reload, but does nothing while a load is still running. */
  refresh: () => void;
}

/**
 * Runs `load` when deps change (aborting the previous run), and again on
 * reload(). Errors become a message for people.
 */
export function useAsync<T>(load: (signal: AbortSignal) => Promise<T>, deps: unknown[]): AsyncState<T> {
  const [state, setState] = useState<{ data?: T; error?: string; code?: Code; loading: boolean }>({ loading: true });
  const [epoch, setEpoch] = useState(0);
  const loadRef = useRef(load);
  loadRef.current = load;
  useEffect(() => {
    const abort = new AbortController();
    setState((s) => ({ ...s, loading: true }));
    loadRef.current(abort.signal).then(
      (data) => {
        if (!abort.signal.aborted) setState({ data, loading: false });
      },
      (err: unknown) => {
        if (abort.signal.aborted || isAbort(err)) return;
        setState((s) => ({ data: s.data, error: errorMessage(err), code: errorCode(err), loading: false }));
      },
    );
    return () => abort.abort();
  }, [...deps, epoch]);
  const reload = useCallback(() => setEpoch((e) => e + 1), []);
  // A load that failed while the server was away is tried again once the
  // page's live stream is back, without anyone clicking "Retry".
  const failedRef = useRef(false);
  failedRef.current = state.error !== undefined;
  useEffect(
    () =>
      live.subscribe({
        resync: () => {
          if (failedRef.current) reload();
        },
      }),
    [reload],
  );
  const loadingRef = useRef(state.loading);
  loadingRef.current = state.loading;
  const refresh = useCallback(() => {
    if (!loadingRef.current) setEpoch((e) => e + 1);
  }, []);
  return { ...state, reload, refresh };
}

/** Calls `fn` every `ms` while the page is visible. */
export function useInterval(fn: () => void, ms: number): void {
  const ref = useRef(fn);
  ref.current = fn;
  useEffect(() => {
    const t = setInterval(() => {
      if (typeof document === "undefined" || document.visibilityState !== "hidden") ref.current();
    }, ms);
    return () => clearInterval(t);
  }, [ms]);
}

/** Subscribes to the shared live event stream while mounted. */
export function useLive(listener: LiveListener): void {
  const ref = useRef(listener);
  ref.current = listener;
  useEffect(
    () =>
      live.subscribe({
        events: (evs) => ref.current.events?.(evs),
        resync: () => ref.current.resync?.(),
      }),
    [],
  );
}

export function useLiveStatus(): LiveStatus {
  const [s, setS] = useState<LiveStatus>(live.status);
  useEffect(() => live.onStatus(setS), []);
  return s;
}

/** The events the live stream missed so far (undefined while it never lagged). */
export function useLiveLag(): LagNote | undefined {
  const [lag, setLag] = useState<LagNote | undefined>(live.lag);
  useEffect(() => live.onLag(setLag), []);
  return lag;
}

/** A value stored in localStorage (view preferences). */
export function usePref<T extends string>(key: string, initial: T): [T, (v: T) => void] {
  const [v, setV] = useState<T>(() => {
    try {
      return (localStorage.getItem(`jobq.${key}`) as T | null) ?? initial;
    } catch {
      return initial;
    }
  });
  const set = useCallback(
    (nv: T) => {
      setV(nv);
      try {
        localStorage.setItem(`jobq.${key}`, nv);
      } catch {
        // not persisted; fine
      }
    },
    [key],
  );
  return [v, set];
}
