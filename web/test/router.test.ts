import { describe, expect, it } from "vitest";
import { href, pageFromParams, pageToParams, parseHash } from "../src/lib/router";

describe("page position in the URL", () => {
  it("round-trips a deeper page next to the filters", () => {
    const url = href("/jobs", { state: "dead", ...pageToParams({ page: 3, cursor: "abc=" }) });
    const route = parseHash(url);
    expect(route.view).toBe("jobs");
    expect(route.params.get("state")).toBe("dead");
    expect(pageFromParams(route.params)).toEqual({ page: 3, cursor: "abc=" });
  });

  it("leaves the first page out of the URL", () => {
    expect(pageToParams({ page: 1, cursor: "" })).toEqual({});
    expect(href("/jobs", pageToParams({ page: 1, cursor: "" }))).toBe("#/jobs");
  });

  it("reads a missing or broken position as the first page", () => {
    for (const qs of ["", "page=2", "page=x&cursor=t", "page=0&cursor=t", "page=1.5&cursor=t", "cursor=t"]) {
      expect(pageFromParams(new URLSearchParams(qs))).toEqual({ page: 1, cursor: "" });
    }
  });
});
