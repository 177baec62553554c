//! The reader's display preferences (time zone, colour theme), kept in
//! localStorage so they survive a reload, with a hook to re-render on change.
import { useEffect, useState } from "preact/hooks";
import { setDisplayUtc } from "./format";

export type ZonePref = "local" | "utc";
export type ThemePref = "system" | "light" | "dark";

export interface Prefs {
  zone: ZonePref;
  theme: ThemePref;
}

const KEY = "jobq.prefs";
const DEFAULTS: Prefs = { zone: "local", theme: "system" };

/** Parses stored preferences; anything unknown falls back to the default. */
export function parsePrefs(text: string | null | undefined): Prefs {
  let raw: unknown;
  try {
    raw = text ? JSON.parse(text) : undefined;
  } catch {
    raw = undefined;
  }
  const o = raw && typeof raw === "object" ? (raw as Record<string, unknown>) : {};
  return {
    zone: o.zone === "utc" || o.zone === "local" ? o.zone : DEFAULTS.zone,
    theme: o.theme === "light" || o.theme === "dark" || o.theme === "system" ? o.theme : DEFAULTS.theme,
  };
}

function readStored(): Prefs {
  try {
    return parsePrefs(globalThis.localStorage?.getItem(KEY));
  } catch {
    // Storage can be off (privacy settings): the defaults still work.
    return { ...DEFAULTS };
  }
}

let current: Prefs = readStored();
const listeners = new Set<(p: Prefs) => void>();

/** Puts the preferences into effect: the formatter's zone and the page's theme. */
function apply(p: Prefs): void {
  setDisplayUtc(p.zone === "utc");
  const root = globalThis.document?.documentElement;
  // No attribute: the CSS follows prefers-color-scheme.
  if (root) {
    if (p.theme === "system") delete root.dataset.theme;
    else root.dataset.theme = p.theme;
  }
}
apply(current);

export function prefs(): Prefs {
  return current;
}

export function setPrefs(change: Partial<Prefs>): void {
  current = { ...current, ...change };
  try {
    globalThis.localStorage?.setItem(KEY, JSON.stringify(current));
  } catch {
    // Not remembered, but applied for this page.
  }
  apply(current);
  for (const l of listeners) l(current);
}

export function usePrefs(): Prefs {
  const [p, setP] = useState(current);
  useEffect(() => {
    listeners.add(setP);
    return () => void listeners.delete(setP);
  }, []);
  return p;
}
