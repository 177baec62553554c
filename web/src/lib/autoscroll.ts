//! Log tail auto-scroll: follow new lines while the reader is at the
//! bottom; pause (and count what arrives) once they scroll up.

/** How close to the bottom (px) still counts as "at the bottom". */
export const BOTTOM_SLACK_PX = 32;

export interface ScrollMetrics {
  scrollTop: number;
  clientHeight: number;
  scrollHeight: number;
}

export function isAtBottom(m: ScrollMetrics, slack = BOTTOM_SLACK_PX): boolean {
  return m.scrollHeight - m.scrollTop - m.clientHeight <= slack;
}

export interface FollowState {
  /** New lines scroll the view to the bottom. */
  following: boolean;
  /** Lines that arrived while paused. */
  unseen: number;
}

export const INITIAL_FOLLOW: FollowState = { following: true, unseen: 0 };

/** After the reader (or the browser) scrolled. */
export function onScroll(state: FollowState, m: ScrollMetrics): FollowState {
  const following = isAtBottom(m);
  if (following === state.following && (!following || state.unseen === 0)) return state;
  return { following, unseen: following ? 0 : state.unseen };
}

/** After `count` lines were appended: the new state and whether to scroll down. */
export function onAppend(state: FollowState, count: number): { state: FollowState; scroll: boolean } {
  if (count <= 0) return { state, scroll: false };
  if (state.following) return { state, scroll: true };
  return { state: { following: false, unseen: state.unseen + count }, scroll: false };
}

/** The "jump to latest" button. */
export function jumpToLatest(): FollowState {
  return { following: true, unseen: 0 };
}

/**
 * Keeps at most `max` lines in memory and in the DOM: the oldest are
 * dropped, and the count of dropped ones is kept for a notice.
 */
export function capLines<T>(lines: T[], incoming: T[], max: number): { lines: T[]; dropped: number } {
  const all = lines.concat(incoming);
  if (all.length <= max) return { lines: all, dropped: 0 };
  const dropped = all.length - max;
  return { lines: all.slice(dropped), dropped };
}
