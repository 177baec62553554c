//! The page shell: navigation, live status, routing, token prompt.
import { useEffect, useState } from "preact/hooks";
import { JobState } from "./gen/jobq/v1/job_pb";
import { getToken, onAuthRequired, setToken } from "./lib/api";
import { formatCompact, formatCount } from "./lib/format";
import { useLiveLag, useLiveStatus, useNow } from "./lib/hooks";
import { useQueueStats } from "./lib/stats";
import { live } from "./lib/live";
import { dashboard } from "./lib/dashboard";
import { parseHash, type Route, type View } from "./lib/router";
import { ConfirmHost, ToastHost, TokenPrompt } from "./components/overlay";
import { DisplayPrefs } from "./components/Prefs";
import { KeyboardHost } from "./components/Keyboard";
import { usePrefs } from "./lib/prefs";
import { Empty } from "./components/ui";
import { DeadLetter } from "./views/DeadLetter";
import { Enqueue } from "./views/Enqueue";
import { JobDetail } from "./views/JobDetail";
import { Jobs } from "./views/Jobs";
import { Overview } from "./views/Overview";
import { Queues } from "./views/Queues";
import { Schedules } from "./views/Schedules";
import { Workers } from "./views/Workers";

const NAV: { view: View; label: string; href: string; also?: View[] }[] = [
  { view: "overview", label: "Overview", href: "#/" },
  { view: "jobs", label: "Jobs", href: "#/jobs", also: ["job"] },
  { view: "dead", label: "Dead letter", href: "#/dead" },
  { view: "queues", label: "Queues", href: "#/queues" },
  { view: "schedules", label: "Schedules", href: "#/schedules" },
  { view: "workers", label: "Workers", href: "#/workers" },
];

function useRoute(): Route {
  const [route, setRoute] = useState(() => parseHash(location.hash));
  useEffect(() => {
    const on = () => setRoute(parseHash(location.hash));
    window.addEventListener("hashchange", on);
    return () => window.removeEventListener("hashchange", on);
  }, []);
  return route;
}

export function App() {
  const route = useRoute();
  // Absolute times are formatted at render: a zone change re-renders the page.
  const { zone } = usePrefs();
  const [authEpoch, setAuthEpoch] = useState(0);
  const [prompt, setPrompt] = useState(false);
  const [menuOpen, setMenuOpen] = useState(false);
  useEffect(() => onAuthRequired(() => setPrompt(true)), []);
  useEffect(() => setMenuOpen(false), [route]);
  useEffect(() => {
    const titles: Partial<Record<View, string>> = { job: "Job", dead: "Dead letter" };
    const name = titles[route.view] ?? route.view.charAt(0).toUpperCase() + route.view.slice(1);
    document.title = `${name} · jobq`;
    window.scrollTo(0, 0);
  }, [route.view, route.id]);

  const saveToken = (token: string) => {
    setToken(token);
    setPrompt(false);
    setAuthEpoch((e) => e + 1);
    live.restart();
    dashboard.reopen();
  };

  return (
    <div class={`shell ${menuOpen ? "menu-open" : ""}`}>
      <aside class="sidebar">
        <div class="brand-row">
          <a class="brand" href="#/">
            <span class="logo" aria-hidden="true">
              <svg viewBox="0 0 32 32" width="26" height="26">
                <rect width="32" height="32" rx="8" fill="currentColor" />
                <path d="M9 10h14M9 16h14M9 22h9" stroke="#111827" stroke-width="3" stroke-linecap="round" />
              </svg>
            </span>
            jobq
          </a>
          <button class="menu-btn" aria-label="Menu" onClick={() => setMenuOpen(!menuOpen)}>
            ☰
          </button>
        </div>
        <nav class="nav" key={authEpoch}>
          {NAV.map((n) => (
            <a
              key={n.view}
              href={n.href}
              class={`nav-link ${route.view === n.view || n.also?.includes(route.view) ? "active" : ""}`}
              data-testid={`nav-${n.view}`}
            >
              {n.label}
              {n.view === "dead" ? <DeadCount /> : null}
            </a>
          ))}
          <a href="#/enqueue" class={`nav-enqueue ${route.view === "enqueue" ? "active" : ""}`} data-testid="nav-enqueue">
            + Enqueue job
          </a>
        </nav>
        <div class="sidebar-foot">
          <LiveIndicator />
          <DisplayPrefs />
          {getToken() ? (
            <button
              class="link small"
              onClick={() => {
                setToken("");
                setAuthEpoch((e) => e + 1);
                live.restart();
                dashboard.reopen();
              }}
            >
              Forget token
            </button>
          ) : (
            <button class="link small" onClick={() => setPrompt(true)}>
              Set token
            </button>
          )}
        </div>
      </aside>
      <main class="main" key={`${authEpoch}-${zone}`}>
        <ConnectionBanner />
        <RouteView route={route} />
      </main>
      {prompt ? <TokenPrompt hadToken={!!getToken()} onSave={saveToken} onClose={() => setPrompt(false)} /> : null}
      <ConfirmHost />
      <ToastHost />
      <KeyboardHost />
    </div>
  );
}

function RouteView({ route }: { route: Route }) {
  switch (route.view) {
    case "overview":
      return <Overview />;
    case "jobs":
      return <Jobs params={route.params} />;
    case "job":
      return <JobDetail key={route.id} id={route.id ?? ""} />;
    case "dead":
      // A page token belongs to its filter: another queue starts afresh.
      return <DeadLetter key={route.params.get("queue") ?? ""} params={route.params} />;
    case "queues":
      return <Queues />;
    case "schedules":
      return <Schedules />;
    case "workers":
      return <Workers />;
    case "enqueue":
      return <Enqueue />;
    default:
      return (
        <Empty title="Page not found">
          <a href="#/">Back to the overview</a>
        </Empty>
      );
  }
}

function DeadCount() {
  const stats = useQueueStats();
  const n = stats.data?.totals.find((c) => c.state === JobState.DEAD)?.count ?? 0n;
  if (n === 0n) return null;
  return <span class="nav-count">{formatCompact(Number(n))}</span>;
}

/**
 * A lost connection is said at the top of every view, not only in the
 * sidebar: what the page shows may be out of date until it is back (lists,
 * counts and log tails then catch up by themselves).
 */
function ConnectionBanner() {
  const s = useLiveStatus();
  const [wasLive, setWasLive] = useState(false);
  useEffect(() => {
    if (s === "live") setWasLive(true);
  }, [s]);
  const lost = (s === "reconnecting" && wasLive) || s === "unavailable";
  if (!lost) return null;
  return (
    <div class="banner banner-error" role="alert" data-testid="connection-banner">
      <strong>Connection to the server lost.</strong>{" "}
      {s === "unavailable" ? "This server does not stream live updates." : "Reconnecting… what you see may be out of date until it is back; the page catches up by itself."}
    </div>
  );
}

/** How long the sidebar says that live updates missed events. */
const LAG_NOTE_MS = 30_000;

function LiveIndicator() {
  const s = useLiveStatus();
  const lag = useLiveLag();
  const now = useNow(5000);
  const text = {
    connecting: "Connecting…",
    live: "Live",
    reconnecting: "Reconnecting…",
    unavailable: "Live updates unavailable",
    paused: "Paused in background",
  }[s];
  return (
    <div
      class="live"
      data-testid="live-status"
      data-status={s}
      title={lag ? `The server dropped ${formatCount(lag.droppedEvents)} events for this page so far; the views read their data again each time.` : undefined}
    >
      <span class={`live-dot ${s === "live" ? "on" : s === "unavailable" || s === "paused" ? "off" : "warn"}`} />
      {text}
      {lag && now - lag.lastAt < LAG_NOTE_MS ? (
        <span class="muted small" data-testid="live-lag">
          {formatCount(lag.droppedEvents)} missed, reloaded
        </span>
      ) : null}
    </div>
  );
}
