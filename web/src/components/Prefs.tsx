//! The sidebar's display switches: time zone (local/UTC) and colour theme.
import { zoneName } from "../lib/format";
import { setPrefs, usePrefs, type ThemePref, type ZonePref } from "../lib/prefs";

function Seg<T extends string>({ label, value, options, onPick, testid }: { label: string; value: T; options: [T, string][]; onPick: (v: T) => void; testid: string }) {
  return (
    <div class="pref" role="group" aria-label={label}>
      <span class="pref-label" aria-hidden="true">
        {label}
      </span>
      <div class="seg seg-side">
        {options.map(([v, text]) => (
          <button key={v} type="button" class={`seg-btn ${value === v ? "active" : ""}`} aria-pressed={value === v} onClick={() => onPick(v)} data-testid={`${testid}-${v}`}>
            {text}
          </button>
        ))}
      </div>
    </div>
  );
}

export function DisplayPrefs() {
  const p = usePrefs();
  return (
    <div class="prefs" data-testid="prefs">
      <Seg<ZonePref>
        label="Times"
        value={p.zone}
        options={[
          ["local", `Local (${zoneName(false)})`],
          ["utc", "UTC"],
        ]}
        onPick={(zone) => setPrefs({ zone })}
        testid="zone"
      />
      <Seg<ThemePref>
        label="Theme"
        value={p.theme}
        options={[
          ["system", "System"],
          ["light", "Light"],
          ["dark", "Dark"],
        ]}
        onPick={(theme) => setPrefs({ theme })}
        testid="theme"
      />
    </div>
  );
}
