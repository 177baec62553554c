import { describe, expect, it } from "vitest";
import { isTyping, keyAction, moveIndex, SHORTCUTS } from "../src/lib/keys";

describe("keyboard shortcuts", () => {
  it("maps the keys", () => {
    expect(keyAction({ key: "/" })).toBe("search");
    expect(keyAction({ key: "j" })).toBe("next");
    expect(keyAction({ key: "k" })).toBe("prev");
    expect(keyAction({ key: "Enter" })).toBe("open");
    expect(keyAction({ key: "?" })).toBe("help");
    expect(keyAction({ key: "Escape" })).toBe("close");
    expect(keyAction({ key: "x" })).toBeUndefined();
  });

  it("leaves keys alone while typing or with a modifier, except Esc", () => {
    expect(keyAction({ key: "j", typing: true })).toBeUndefined();
    expect(keyAction({ key: "/", typing: true })).toBeUndefined();
    expect(keyAction({ key: "k", ctrlKey: true })).toBeUndefined();
    expect(keyAction({ key: "/", metaKey: true })).toBeUndefined();
    expect(keyAction({ key: "j", altKey: true })).toBeUndefined();
    expect(keyAction({ key: "Escape", typing: true })).toBe("close");
  });

  it("knows which elements take typing", () => {
    expect(isTyping({ tagName: "INPUT", type: "search" })).toBe(true);
    expect(isTyping({ tagName: "input" })).toBe(true);
    expect(isTyping({ tagName: "TEXTAREA" })).toBe(true);
    expect(isTyping({ tagName: "SELECT" })).toBe(true);
    expect(isTyping({ tagName: "DIV", isContentEditable: true })).toBe(true);
    expect(isTyping({ tagName: "INPUT", type: "checkbox" })).toBe(false);
    expect(isTyping({ tagName: "BUTTON" })).toBe(false);
    expect(isTyping(null)).toBe(false);
  });

  it("moves through rows without wrapping", () => {
    expect(moveIndex(-1, 1, 3)).toBe(0);
    expect(moveIndex(-1, -1, 3)).toBe(2);
    expect(moveIndex(0, 1, 3)).toBe(1);
    expect(moveIndex(2, 1, 3)).toBe(2);
    expect(moveIndex(0, -1, 3)).toBe(0);
    expect(moveIndex(5, 1, 3)).toBe(0);
    expect(moveIndex(0, 1, 0)).toBe(-1);
  });

  it("lists every shortcut in the help", () => {
    const keys = SHORTCUTS.flatMap((s) => s.keys);
    for (const k of ["/", "j", "k", "Enter", "?", "Esc"]) expect(keys).toContain(k);
  });
});
