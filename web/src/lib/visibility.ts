//! "This tab has been in the background for a while": long-lived streams
//! close then, because over HTTP/1.1 each one holds one of the browser's six
//! connections to the server, shared by all its tabs.
import { useEffect, useState } from "preact/hooks";

export const HIDDEN_GRACE_MS = 30_000;

/** Calls `cb(true)` once the page has been hidden for `graceMs`, and `cb(false)` when it shows again. */
export function onLongHidden(cb: (longHidden: boolean) => void, graceMs = HIDDEN_GRACE_MS): () => void {
  if (typeof document === "undefined") return () => undefined;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let fired = false;
  const on = () => {
    clearTimeout(timer);
    if (document.visibilityState === "hidden") {
      timer = setTimeout(() => {
        fired = true;
        cb(true);
      }, graceMs);
    } else if (fired) {
      fired = false;
      cb(false);
    }
  };
  document.addEventListener("visibilitychange", on);
  return () => {
    clearTimeout(timer);
    document.removeEventListener("visibilitychange", on);
  };
}

/** False while the page has been hidden for a while. */
export function usePageActive(): boolean {
  const [active, setActive] = useState(true);
  useEffect(() => onLongHidden((hidden) => setActive(!hidden)), []);
  return active;
}
