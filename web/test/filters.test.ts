import { describe, expect, it } from "vitest";
import { JobState, JobView } from "../src/gen/jobq/v1/job_pb";
import { JobOrder, PayloadMatch } from "../src/gen/jobq/v1/queue_service_pb";
import { EMPTY_FILTERS, filtersFromParams, filtersToParams, hasFilters, jobMatches, listRequest, parseSearch, splitList } from "../src/lib/filters";
import { href, parseHash } from "../src/lib/router";
import { job } from "./helpers";

describe("filters", () => {
  it("reads filters from the URL", () => {
    const f = filtersFromParams(new URLSearchParams("state=dead,queued,bogus,dead&type=a, b&queue=media&q=%20abc%20"));
    expect(f).toEqual({ states: [JobState.DEAD, JobState.QUEUED], types: ["a", "b"], queues: ["media"], search: "abc" });
  });

  it("writes them back, leaving empty ones out", () => {
    expect(filtersToParams({ states: [JobState.RUNNING], types: [], queues: ["x", "y"], search: "" })).toEqual({
      state: "running",
      type: undefined,
      queue: "x,y",
      q: undefined,
    });
    expect(href("/jobs", filtersToParams({ ...EMPTY_FILTERS, states: [JobState.DEAD], search: "a b" }))).toBe("#/jobs?state=dead&q=a+b");
  });

  it("maps filters and paging to a ListJobsRequest", () => {
    const r = listRequest({ states: [JobState.DEAD], types: ["cleanup"], queues: ["q1"], search: "0193" }, "tok", 50);
    expect(r.states).toEqual([JobState.DEAD]);
    expect(r.types).toEqual(["cleanup"]);
    expect(r.queues).toEqual(["q1"]);
    expect(r.search).toBe("0193");
    expect(r.pageToken).toBe("tok");
    expect(r.pageSize).toBe(50);
    expect(r.parentId).toBe("");
    // Lists never need payloads or results.
    expect(r.view).toBe(JobView.BASIC);
    expect(listRequest(EMPTY_FILTERS, "", 20, { parentId: "p" }).parentId).toBe("p");
  });

  it("matches live jobs like the server filters", () => {
    const j = job("0193-abc", { type: "cleanup", queue: "", state: JobState.DEAD, uniqueKey: "nightly" });
    expect(jobMatches(j, EMPTY_FILTERS)).toBe(true);
    expect(jobMatches(j, { ...EMPTY_FILTERS, states: [JobState.DEAD, JobState.QUEUED] })).toBe(true);
    expect(jobMatches(j, { ...EMPTY_FILTERS, states: [JobState.QUEUED] })).toBe(false);
    expect(jobMatches(j, { ...EMPTY_FILTERS, queues: ["default"] })).toBe(true);
    expect(jobMatches(j, { ...EMPTY_FILTERS, types: ["other"] })).toBe(false);
    expect(jobMatches(j, { ...EMPTY_FILTERS, search: "night" })).toBe(true);
    expect(jobMatches(j, { ...EMPTY_FILTERS, search: "abc" })).toBe(true);
    expect(jobMatches(j, { ...EMPTY_FILTERS, search: "Night" })).toBe(false);
  });

  it("parses payload and tag terms out of the search box", () => {
    expect(parseSearch("channel = Kurzgesagt")).toEqual({
      text: "",
      tags: [],
      payload: [{ field: "channel", match: PayloadMatch.EQUALS, value: "Kurzgesagt" }],
    });
    expect(parseSearch('url contains LongLong4K AND tag:music meta.title="Why Black Holes" tag:4k 0193')).toEqual({
      text: "0193",
      tags: ["music", "4k"],
      payload: [
        { field: "url", match: PayloadMatch.CONTAINS, value: "LongLong4K" },
        { field: "meta.title", match: PayloadMatch.EQUALS, value: "Why Black Holes" },
      ],
    });
    expect(parseSearch("n-1 CONTAINS x")).toEqual({ text: "", tags: [], payload: [{ field: "n-1", match: PayloadMatch.CONTAINS, value: "x" }] });
    // Anything else stays free text.
    expect(parseSearch("  nightly backup ")).toEqual({ text: "nightly backup", tags: [], payload: [] });
    expect(parseSearch("containsx")).toEqual({ text: "containsx", tags: [], payload: [] });
  });

  it("sends the terms as ListJobs filters", () => {
    const r = listRequest({ ...EMPTY_FILTERS, search: "channel = Kurzgesagt tag:music abc" }, "", 50, { order: JobOrder.FINISHED_DESC });
    expect(r.search).toBe("abc");
    expect(r.tags).toEqual(["music"]);
    expect(r.payloadFilters.map((p) => [p.field, p.match, p.value])).toEqual([["channel", PayloadMatch.EQUALS, "Kurzgesagt"]]);
    expect(r.order).toBe(JobOrder.FINISHED_DESC);
    expect(listRequest(EMPTY_FILTERS).order).toBe(JobOrder.UNSPECIFIED);
  });

  it("matches live jobs by tags; payload terms only for jobs already listed", () => {
    const j = job("0193-abc", { tags: ["music", "4k"] });
    expect(jobMatches(j, { ...EMPTY_FILTERS, search: "tag:music tag:4k" })).toBe(true);
    expect(jobMatches(j, { ...EMPTY_FILTERS, search: "tag:music tag:8k" })).toBe(false);
    // Events carry no payload: a listed job matched already; a new one waits for a reload.
    expect(jobMatches(j, { ...EMPTY_FILTERS, search: "channel = X" }, true)).toBe(true);
    expect(jobMatches(j, { ...EMPTY_FILTERS, search: "channel = X" })).toBe(false);
  });

  it("splits lists and knows when filters are set", () => {
    expect(splitList(" a, b,,a ")).toEqual(["a", "b"]);
    expect(splitList(null)).toEqual([]);
    expect(hasFilters(EMPTY_FILTERS)).toBe(false);
    expect(hasFilters({ ...EMPTY_FILTERS, search: "x" })).toBe(true);
  });
});

describe("router", () => {
  it("parses views, ids and parameters", () => {
    expect(parseHash("").view).toBe("overview");
    expect(parseHash("#/").view).toBe("overview");
    expect(parseHash("#/dead").view).toBe("dead");
    const r = parseHash("#/jobs?state=dead");
    expect(r.view).toBe("jobs");
    expect(r.params.get("state")).toBe("dead");
    expect(parseHash("#/jobs/0193%2Fx")).toMatchObject({ view: "job", id: "0193/x" });
    expect(parseHash("#/nope/x/y").view).toBe("notfound");
  });
});
