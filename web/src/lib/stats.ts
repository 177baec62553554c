//! The job counts every view shows (the sidebar's dead-letter count, the
//! overview, the jobs filter chips), from the page's one dashboard stream:
//! the server pushes them when they change, so nothing here polls.
import { useEffect, useState } from "preact/hooks";
import type { GetQueueStatsResponse } from "../gen/jobq/v1/queue_service_pb";
import { useDashboard, useDashboardPart } from "./dashboard";
import { durationMillis } from "./format";

export interface StatsState {
  data?: GetQueueStatsResponse;
  error?: string;
}

/**
 * The stats `grown` ms after they arrived: a queue's oldest ready job keeps
 * waiting after the server counted (no message comes while nothing
 * changes), so its age grows. Measured by this page's clock, so a server
 * clock ahead or behind does not show.
 */
export function agedStats(stats: GetQueueStatsResponse, grown: number): GetQueueStatsResponse {
  if (grown <= 0) return stats;
  return {
    ...stats,
    queues: stats.queues.map((q) => {
      const age = durationMillis(q.oldestReadyAge) ?? 0;
      if (age <= 0 || !q.oldestReadyAge) return q;
      const ms = age + grown;
      return { ...q, oldestReadyAge: { ...q.oldestReadyAge, seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1_000_000 } };
    }),
  };
}

/** The shared queue stats, kept fresh while the component is mounted. */
export function useQueueStats(): StatsState & { reload: () => void } {
  const { data, error, reload } = useDashboardPart("stats");
  const receivedAt = useDashboard().statsReceivedAt ?? 0;
  const waiting = data?.queues.some((q) => (durationMillis(q.oldestReadyAge) ?? 0) > 0) ?? false;
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    if (!waiting) return;
    const t = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(t);
  }, [waiting]);
  const grown = Math.max(now, Date.now()) - receivedAt;
  return { data: data && waiting ? agedStats(data, grown) : data, error, reload };
}
