import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { onLongHidden } from "../src/lib/visibility";

class FakeDocument extends EventTarget {
  visibilityState: "visible" | "hidden" = "visible";
  set(state: "visible" | "hidden") {
    this.visibilityState = state;
    this.dispatchEvent(new Event("visibilitychange"));
  }
}

describe("background tabs", () => {
  let doc: FakeDocument;
  beforeEach(() => {
    vi.useFakeTimers();
    doc = new FakeDocument();
    vi.stubGlobal("document", doc);
  });
  afterEach(() => {
    vi.useRealTimers();
    vi.unstubAllGlobals();
  });

  it("lets go only after the tab has been hidden for the grace period", () => {
    const calls: boolean[] = [];
    const stop = onLongHidden((h) => calls.push(h), 1000);
    doc.set("hidden");
    vi.advanceTimersByTime(999);
    expect(calls).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(calls).toEqual([true]);
    doc.set("visible");
    expect(calls).toEqual([true, false]);
    stop();
  });

  it("ignores a quick look away", () => {
    const calls: boolean[] = [];
    const stop = onLongHidden((h) => calls.push(h), 1000);
    doc.set("hidden");
    vi.advanceTimersByTime(500);
    doc.set("visible");
    vi.advanceTimersByTime(5000);
    expect(calls).toEqual([]);
    stop();
  });
});
