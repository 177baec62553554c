//! Keyboard shortcuts of the dashboard: which key does what, and when keys
//! are left alone (while typing, or with a modifier held).

export type KeyAction = "search" | "next" | "prev" | "open" | "help" | "close";

/** The shortcuts, for the help dialog (one list, so the two cannot drift). */
export const SHORTCUTS: { keys: string[]; what: string }[] = [
  { keys: ["/"], what: "Search the list" },
  { keys: ["j"], what: "Next row" },
  { keys: ["k"], what: "Previous row" },
  { keys: ["Enter"], what: "Open the highlighted row" },
  { keys: ["?"], what: "Show these shortcuts" },
  { keys: ["Esc"], what: "Close a dialog" },
];

/** The parts of a KeyboardEvent the mapping reads (so tests need no DOM). */
export interface KeyInput {
  key: string;
  ctrlKey?: boolean;
  metaKey?: boolean;
  altKey?: boolean;
  /** The event's target is a text field, a select or editable content. */
  typing?: boolean;
}

/** What a key press asks for, or undefined when the page should ignore it. */
export function keyAction(e: KeyInput): KeyAction | undefined {
  // Esc still closes while typing (it never types a character).
  if (e.key === "Escape") return "close";
  if (e.typing || e.ctrlKey || e.metaKey || e.altKey) return undefined;
  switch (e.key) {
    case "/":
      return "search";
    case "j":
      return "next";
    case "k":
      return "prev";
    case "Enter":
      return "open";
    case "?":
      return "help";
    default:
      return undefined;
  }
}

/** Input types that take no typed text: shortcuts keep working on them. */
const NON_TEXT_INPUTS = new Set(["checkbox", "radio", "button", "submit", "reset", "range", "color", "file", "image"]);

/** Whether keys pressed on this element are typing into it. */
export function isTyping(el: { tagName?: string; type?: string; isContentEditable?: boolean } | null | undefined): boolean {
  if (!el?.tagName) return false;
  if (el.isContentEditable) return true;
  const tag = el.tagName.toUpperCase();
  if (tag === "TEXTAREA" || tag === "SELECT") return true;
  return tag === "INPUT" && !NON_TEXT_INPUTS.has((el.type ?? "text").toLowerCase());
}

/**
 * The row to highlight after moving `delta` from `current` in a list of
 * `count` rows: the first (or last) when none is highlighted yet, and it
 * stays at the ends instead of wrapping.
 */
export function moveIndex(current: number, delta: number, count: number): number {
  if (count <= 0) return -1;
  if (current < 0 || current >= count) return delta > 0 ? 0 : count - 1;
  return Math.max(0, Math.min(count - 1, current + delta));
}
