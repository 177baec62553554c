//! Hash routing: "#/jobs?state=dead" ⇄ a Route value.

export type View =
  | "overview"
  | "jobs"
  | "job"
  | "dead"
  | "queues"
  | "schedules"
  | "workers"
  | "enqueue"
  | "notfound";

export interface Route {
  view: View;
  /** Job id for the "job" view. */
  id?: string;
  params: URLSearchParams;
}

/** Parses location.hash ("#/jobs/ID?x=y", "#/", "" …). */
export function parseHash(hash: string): Route {
  let rest = hash.startsWith("#") ? hash.slice(1) : hash;
  if (!rest.startsWith("/")) rest = `/${rest}`;
  const q = rest.indexOf("?");
  const path = q >= 0 ? rest.slice(0, q) : rest;
  const params = new URLSearchParams(q >= 0 ? rest.slice(q + 1) : "");
  const parts = path.split("/").filter(Boolean).map(safeDecode);
  if (parts.length === 0) return { view: "overview", params };
  const [head, second] = parts;
  if (head === "jobs" && parts.length === 2 && second) return { view: "job", id: second, params };
  if (parts.length === 1) {
    switch (head) {
      case "overview":
      case "jobs":
      case "dead":
      case "queues":
      case "schedules":
      case "workers":
      case "enqueue":
        return { view: head, params };
    }
  }
  return { view: "notfound", params };
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** "#/jobs?state=dead" from a path and optional params (empty ones dropped). */
export function href(path: string, params?: Record<string, string | undefined> | URLSearchParams): string {
  const search = new URLSearchParams();
  if (params instanceof URLSearchParams) {
    params.forEach((v, k) => {
      if (v) search.append(k, v);
    });
  } else if (params) {
    for (const [k, v] of Object.entries(params)) if (v) search.set(k, v);
  }
  const qs = search.toString();
  return `#${path}${qs ? `?${qs}` : ""}`;
}

export function jobHref(id: string): string {
  return `#/jobs/${encodeURIComponent(id)}`;
}

/** Where a keyset-paged list stands: its page number and the page token that reads it. */
export interface PagePosition {
  /** 1 for the first page. */
  page: number;
  /** The opaque page token ("" on the first page). */
  cursor: string;
}

/** Reads "page=3&cursor=…" from a list's URL; anything unusable means the first page. */
export function pageFromParams(params: URLSearchParams): PagePosition {
  const cursor = params.get("cursor") ?? "";
  const page = Number(params.get("page") ?? "1");
  if (!cursor || !Number.isInteger(page) || page < 2) return { page: 1, cursor: "" };
  return { page, cursor };
}

/** The URL parameters of a page position (none for the first page). */
export function pageToParams(p: PagePosition): Record<string, string | undefined> {
  return p.page > 1 && p.cursor ? { page: String(p.page), cursor: p.cursor } : {};
}
