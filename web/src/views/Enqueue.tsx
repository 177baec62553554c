//! The enqueue form for the built-in job types (and any custom type).
import { useRef, useState } from "preact/hooks";
import { api, errorMessage } from "../lib/api";
import { createEnqueuer, enqueuedMessage, isAmbiguous } from "../lib/enqueue";
import { buildSpec, DEFAULT_FORM, FORMATS, JOB_TYPES, type EnqueueForm, type FormType } from "../lib/jobtypes";
import { zoneName } from "../lib/format";
import { prefs } from "../lib/prefs";
import { jobHref } from "../lib/router";
import { toast } from "../components/overlay";
import { Card, PageHeader } from "../components/ui";

export function Enqueue() {
  const [f, setF] = useState<EnqueueForm>(DEFAULT_FORM);
  const [submitted, setSubmitted] = useState(false);
  const [saving, setSaving] = useState(false);
  const [advanced, setAdvanced] = useState(false);
  // Gives each submission its request id, and keeps it for automatic tries
  // and for a press again after a failure that left it unknown.
  const [enqueuer] = useState(() => createEnqueuer({ client: api() }));
  // Set at once (state updates only show on the next render): a second
  // press or Enter while a submission is under way does nothing.
  const busy = useRef(false);
  const built = buildSpec(f, prefs().zone === "utc");
  const errors = submitted ? built.errors : {};

  const set = <K extends keyof EnqueueForm>(k: K, v: EnqueueForm[K]) => setF({ ...f, [k]: v });
  const text = (k: keyof EnqueueForm, extra: Record<string, unknown> = {}) => ({
    value: f[k] as string,
    onInput: (e: Event) => set(k, (e.currentTarget as HTMLInputElement).value as never),
    class: `input ${errors[k] ? "invalid" : ""}`,
    name: k,
    ...extra,
  });
  const err = (k: keyof EnqueueForm) => (errors[k] ? <div class="field-error">{errors[k]}</div> : null);
  const check = (k: "fanOut" | "dryRun", label: string, hint: string) => (
    <label class="check-field">
      <input type="checkbox" name={k} checked={f[k]} onChange={(e) => set(k, e.currentTarget.checked)} />
      <span>
        <b>{label}</b>
        <small class="muted">{hint}</small>
      </span>
    </label>
  );

  const submit = async (e: Event) => {
    e.preventDefault();
    setSubmitted(true);
    const spec = built.spec;
    if (!spec || busy.current) return;
    busy.current = true;
    setSaving(true);
    try {
      const res = await enqueuer.submit(spec);
      toast(enqueuedMessage(spec, res));
      location.hash = jobHref(res.job?.id ?? "");
    } catch (err) {
      // The job may exist; the same form sent again keeps the request id.
      const again = isAmbiguous(err) ? " Sending it again will not make a second job." : "";
      toast(errorMessage(err) + again, "error");
    } finally {
      busy.current = false;
      setSaving(false);
    }
  };

  const typeInfo = JOB_TYPES.find((t) => t.type === f.type);
  return (
    <div>
      <PageHeader title="Enqueue a job" sub="Pick a job type, fill in what it needs, and send it to a queue." />
      <form class="enqueue" onSubmit={submit} noValidate>
        <div class="type-picker" role="radiogroup" aria-label="Job type">
          {JOB_TYPES.map((t) => (
            <label key={t.type} class={`type-option ${f.type === t.type ? "active" : ""}`}>
              <input type="radio" name="type" value={t.type} checked={f.type === t.type} onChange={() => set("type", t.type as FormType)} />
              <b>{t.label}</b>
              <small>{t.hint}</small>
            </label>
          ))}
        </div>
        <div class="grid-detail">
          <Card title={typeInfo?.label}>
            <div class="form-grid">
              {f.type === "channel_download" || f.type === "playlist_download" ? (
                <>
                  <label class="field span-2">
                    <span>{f.type === "channel_download" ? "Channel URL" : "Playlist URL"}</span>
                    <input
                      {...text("url")}
                      type="url"
                      placeholder={f.type === "channel_download" ? "https://www.youtube.com/@channel" : "https://www.youtube.com/playlist?list=…"}
                      autofocus
                    />
                    {err("url")}
                  </label>
                  <label class="field">
                    <span>Format</span>
                    <select class="input" name="format" value={f.format} onChange={(e) => set("format", e.currentTarget.value)}>
                      {FORMATS.map((o) => (
                        <option key={o.value} value={o.value}>
                          {o.label}
                        </option>
                      ))}
                    </select>
                  </label>
                  <label class="field">
                    <span>Output template</span>
                    <input {...text("outputTemplate")} class="input mono" placeholder="%(uploader)s/%(title)s.%(ext)s" />
                  </label>
                  <label class="field">
                    <span>Only the first entries</span>
                    <input {...text("maxEntries")} inputMode="numeric" placeholder="all" />
                    {err("maxEntries")}
                  </label>
                  <span />
                  {check(
                    "fanOut",
                    "Enumerate entries",
                    "List the entries first and enqueue one child job per video, so each can retry on its own.",
                  )}
                </>
              ) : null}
              {f.type === "metadata_extraction" ? (
                <>
                  <div class="field span-2">
                    <span>Source</span>
                    <div class="seg">
                      <button type="button" class={`seg-btn ${f.source === "url" ? "active" : ""}`} onClick={() => set("source", "url")}>
                        URL
                      </button>
                      <button type="button" class={`seg-btn ${f.source === "path" ? "active" : ""}`} onClick={() => set("source", "path")}>
                        File path
                      </button>
                    </div>
                  </div>
                  {f.source === "url" ? (
                    <label class="field span-2">
                      <span>URL</span>
                      <input {...text("url")} type="url" placeholder="https://www.youtube.com/watch?v=…" />
                      {err("url")}
                    </label>
                  ) : (
                    <label class="field span-2">
                      <span>Path on the worker</span>
                      <input {...text("path")} class={`input mono ${errors.path ? "invalid" : ""}`} placeholder="/media/videos/clip.mp4" />
                      {err("path")}
                    </label>
                  )}
                </>
              ) : null}
              {f.type === "cleanup" ? (
                <>
                  <label class="field span-2">
                    <span>Directory</span>
                    <input {...text("cleanupPath")} class="input mono" placeholder="the worker's cleanup root" />
                    <small class="muted">Inside one of the worker's cleanup roots (relative paths start at the first one).</small>
                  </label>
                  <label class="field">
                    <span>Older than (days)</span>
                    <input {...text("olderThanDays")} inputMode="numeric" />
                    {err("olderThanDays")}
                  </label>
                  <label class="field">
                    <span>Keep at most (total size)</span>
                    <input {...text("maxTotalBytes")} placeholder="e.g. 500G (optional)" />
                    {err("maxTotalBytes")}
                  </label>
                  {check("dryRun", "Dry run", "Only list what would be deleted.")}
                </>
              ) : null}
              {f.type === "noop" ? (
                <>
                  <label class="field">
                    <span>Run for (seconds)</span>
                    <input {...text("sleepSeconds")} inputMode="decimal" />
                    {err("sleepSeconds")}
                  </label>
                  <label class="field">
                    <span>Log lines to write</span>
                    <input {...text("logLines")} inputMode="numeric" />
                    {err("logLines")}
                  </label>
                  <label class="field">
                    <span>Outcome</span>
                    <select class="input" name="fail" value={f.fail} onChange={(e) => set("fail", e.currentTarget.value as EnqueueForm["fail"])}>
                      <option value="">Succeed</option>
                      <option value="retryable">Fail (retryable)</option>
                      <option value="fatal">Fail (fatal, dead-letter at once)</option>
                    </select>
                  </label>
                </>
              ) : null}
              {f.type === "custom" ? (
                <>
                  <label class="field span-2">
                    <span>Job type</span>
                    <input {...text("customType")} class={`input mono ${errors.customType ? "invalid" : ""}`} placeholder="send_email" />
                    {err("customType")}
                  </label>
                  <label class="field span-2">
                    <span>Payload (JSON object)</span>
                    <textarea {...text("customPayload")} class={`input mono ${errors.customPayload ? "invalid" : ""}`} rows={6} />
                    {err("customPayload")}
                  </label>
                </>
              ) : null}
            </div>
            <button type="button" class="link small disclosure" onClick={() => setAdvanced(!advanced)} aria-expanded={advanced}>
              {advanced ? "▾" : "▸"} Job options (queue, priority, attempts, run time, timeout…)
            </button>
            {advanced ? (
              <div class="form-grid">
                <label class="field">
                  <span>Queue</span>
                  <input {...text("queue")} placeholder="default" />
                  {err("queue")}
                </label>
                <label class="field">
                  <span>Priority</span>
                  <input {...text("priority")} inputMode="numeric" />
                  <small class="muted">−1000…1000, higher runs first</small>
                  {err("priority")}
                </label>
                <label class="field">
                  <span>Max attempts</span>
                  <input {...text("maxAttempts")} inputMode="numeric" placeholder="server default" />
                  {err("maxAttempts")}
                </label>
                <label class="field">
                  <span>Delay (seconds)</span>
                  <input {...text("delaySeconds")} inputMode="numeric" placeholder="0" />
                  {err("delaySeconds")}
                </label>
                <label class="field">
                  <span>Run at ({zoneName()})</span>
                  <input {...text("runAt")} type="datetime-local" step={1} data-testid="run-at-input" />
                  <small class="muted">Instead of a delay; empty runs now</small>
                  {err("runAt")}
                </label>
                <label class="field">
                  <span>Timeout (seconds)</span>
                  <input {...text("timeoutSeconds")} inputMode="numeric" placeholder="server default" data-testid="timeout-input" />
                  <small class="muted">Longest one attempt may run</small>
                  {err("timeoutSeconds")}
                </label>
                <label class="field">
                  <span>Unique key</span>
                  <input {...text("uniqueKey")} placeholder="optional" />
                </label>
                <label class="field">
                  <span>Concurrency key</span>
                  <input {...text("concurrencyKey")} placeholder="e.g. channel:UCxyz" data-testid="concurrency-key-input" />
                  {err("concurrencyKey")}
                </label>
                <label class="field">
                  <span>Key limit</span>
                  <input {...text("concurrencyLimit")} inputMode="numeric" placeholder="1" />
                  {err("concurrencyLimit")}
                </label>
                <label class="field">
                  <span>Tags</span>
                  <input {...text("tags")} placeholder="comma, separated" />
                </label>
              </div>
            ) : null}
            <div class="form-actions">
              <button type="submit" class="btn btn-primary" disabled={saving} data-testid="enqueue-submit">
                {saving ? "Enqueuing…" : "Enqueue job"}
              </button>
            </div>
          </Card>
          <Card title="Payload preview">
            <pre class="code" data-testid="payload-preview">
              {JSON.stringify(built.payload ?? {}, null, 2)}
            </pre>
            <div class="muted small">
              Type <code>{f.type === "custom" ? f.customType || "…" : f.type}</code> in queue <code>{f.queue.trim() || "default"}</code>
            </div>
          </Card>
        </div>
      </form>
    </div>
  );
}
