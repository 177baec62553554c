import { describe, expect, it } from "vitest";
import { capLines, INITIAL_FOLLOW, isAtBottom, jumpToLatest, onAppend, onScroll } from "../src/lib/autoscroll";

const at = (scrollTop: number) => ({ scrollTop, clientHeight: 400, scrollHeight: 1000 });

describe("log auto-scroll", () => {
  it("counts as at the bottom within the slack", () => {
    expect(isAtBottom(at(600))).toBe(true);
    expect(isAtBottom(at(580))).toBe(true);
    expect(isAtBottom(at(500))).toBe(false);
  });

  it("follows new lines while at the bottom", () => {
    const r = onAppend(INITIAL_FOLLOW, 3);
    expect(r.scroll).toBe(true);
    expect(r.state).toEqual({ following: true, unseen: 0 });
  });

  it("pauses when the reader scrolls up and counts what arrives", () => {
    let s = onScroll(INITIAL_FOLLOW, at(200));
    expect(s.following).toBe(false);
    let r = onAppend(s, 5);
    expect(r.scroll).toBe(false);
    r = onAppend(r.state, 2);
    expect(r.state.unseen).toBe(7);
    s = onScroll(r.state, at(300));
    expect(s).toEqual({ following: false, unseen: 7 });
  });

  it("resumes when the reader scrolls back down or jumps", () => {
    const paused = { following: false, unseen: 4 };
    expect(onScroll(paused, at(600))).toEqual({ following: true, unseen: 0 });
    expect(jumpToLatest()).toEqual({ following: true, unseen: 0 });
  });

  it("keeps the same state object when nothing changes (no re-render)", () => {
    expect(onScroll(INITIAL_FOLLOW, at(600))).toBe(INITIAL_FOLLOW);
    expect(onAppend(INITIAL_FOLLOW, 0).state).toBe(INITIAL_FOLLOW);
  });

  it("caps the lines kept, oldest first out", () => {
    expect(capLines([1, 2, 3], [4, 5], 4)).toEqual({ lines: [2, 3, 4, 5], dropped: 1 });
    expect(capLines([1], [2], 4)).toEqual({ lines: [1, 2], dropped: 0 });
  });
});
