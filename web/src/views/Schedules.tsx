//! Cron schedules: list, pause/resume, delete, create or replace.
import { fromJson, type JsonObject } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { useState } from "preact/hooks";
import { MissedTicks, type Schedule } from "../gen/jobq/v1/admin_pb";
import { api, errorMessage } from "../lib/api";
import { prettyValue, tsMillis } from "../lib/format";
import { useDashboardPart } from "../lib/dashboard";
import { useNow } from "../lib/hooks";
import { jobHref, href } from "../lib/router";
import { confirmAction, toast } from "../components/overlay";
import { Badge, Card, Empty, ErrorBox, PageHeader, Spinner, Time } from "../components/ui";

export interface ScheduleForm {
  name: string;
  cron: string;
  timeZone: string;
  type: string;
  queue: string;
  payload: string;
  /** "run_once" or "skip". */
  missedTicks: string;
}

const EMPTY: ScheduleForm = { name: "", cron: "0 0 * * * *", timeZone: "", type: "", queue: "", payload: "{}", missedTicks: "run_once" };

/** The form as a PutSchedule request body, or errors by field. */
export function scheduleFromForm(f: ScheduleForm): { schedule?: Parameters<ReturnType<typeof api>["putSchedule"]>[0]["schedule"]; errors: Partial<Record<keyof ScheduleForm, string>> } {
  const errors: Partial<Record<keyof ScheduleForm, string>> = {};
  const name = f.name.trim();
  if (!/^[A-Za-z0-9_.:-]{1,128}$/.test(name)) errors.name = "1–128 of letters, digits and _ . : -";
  const fields = f.cron.trim().split(/\s+/).filter(Boolean);
  if (fields.length !== 5 && fields.length !== 6) errors.cron = "5 fields (min hour day month weekday) or 6 with seconds first";
  if (!f.type.trim()) errors.type = "Enter the job type";
  let payload: JsonObject = {};
  try {
    const v: unknown = JSON.parse(f.payload.trim() || "{}");
    if (v === null || typeof v !== "object" || Array.isArray(v)) errors.payload = "Must be a JSON object";
    else payload = v as JsonObject;
  } catch (e) {
    errors.payload = `Not valid JSON: ${(e as Error).message}`;
  }
  if (Object.keys(errors).length) return { errors };
  return {
    errors,
    schedule: {
      name,
      cron: fields.join(" "),
      timeZone: f.timeZone.trim(),
      job: { type: f.type.trim(), queue: f.queue.trim(), payload: fromJson(ValueSchema, payload) },
      missedTicks: f.missedTicks === "skip" ? MissedTicks.SKIP : MissedTicks.RUN_ONCE,
    },
  };
}

export function Schedules() {
  // Pushed by the server, changes made here included.
  const list = useDashboardPart("schedules");
  const now = useNow(1000);
  const [form, setForm] = useState<ScheduleForm | undefined>();

  const setPaused = async (s: Schedule, paused: boolean) => {
    try {
      await api().setSchedulePaused({ name: s.name, paused });
      toast(paused ? `Schedule ${s.name} paused` : `Schedule ${s.name} resumed`);
    } catch (err) {
      toast(errorMessage(err), "error");
    }
  };
  const remove = async (s: Schedule) => {
    const ok = await confirmAction({
      title: `Delete schedule ${s.name}?`,
      body: "It stops enqueuing jobs. Jobs it already enqueued stay.",
      action: "Delete",
      danger: true,
    });
    if (!ok) return;
    try {
      await api().deleteSchedule({ name: s.name });
      toast(`Schedule ${s.name} deleted`);
    } catch (err) {
      toast(errorMessage(err), "error");
    }
  };
  const edit = (s: Schedule) =>
    setForm({
      name: s.name,
      cron: s.cron,
      timeZone: s.timeZone,
      type: s.job?.type ?? "",
      queue: s.job?.queue ?? "",
      payload: prettyValue(s.job?.payload) || "{}",
      missedTicks: s.missedTicks === MissedTicks.SKIP ? "skip" : "run_once",
    });

  const schedules = list.data?.schedules ?? [];
  return (
    <div>
      <PageHeader title="Schedules" sub="Cron schedules enqueue one job per tick, exactly once across server replicas.">
        <button class="btn btn-primary" onClick={() => setForm({ ...EMPTY })}>
          New schedule
        </button>
      </PageHeader>
      {form ? <ScheduleEditor initial={form} onClose={() => setForm(undefined)} /> : null}
      {list.error ? <ErrorBox message={list.error} onRetry={list.reload} /> : null}
      <Card>
        {!list.data && list.loading ? (
          <Spinner />
        ) : schedules.length === 0 ? (
          <Empty title="No schedules">Create one to enqueue a job on a cron expression.</Empty>
        ) : (
          <div class="table-wrap">
            <table class="table cards" data-testid="schedules-table">
              <thead>
                <tr>
                  <th>Name</th>
                  <th>Cron</th>
                  <th>Job</th>
                  <th>Status</th>
                  <th>Next run</th>
                  <th>Last run</th>
                  <th />
                </tr>
              </thead>
              <tbody>
                {schedules.map((s) => (
                  <tr key={s.name}>
                    <td data-label="Name">
                      <b>{s.name}</b>
                    </td>
                    <td data-label="Cron">
                      <code>{s.cron}</code>
                      <div class="muted small">
                        {s.timeZone || "UTC"}
                        {s.missedTicks === MissedTicks.SKIP ? " · skips missed ticks" : ""}
                      </div>
                    </td>
                    <td data-label="Job">
                      <a href={href("/jobs", { type: s.job?.type })}>
                        <span class="type">{s.job?.type}</span>
                      </a>
                      <div class="muted small">{s.job?.queue || "default"}</div>
                    </td>
                    <td data-label="Status">{s.paused ? <Badge tone="amber">Paused</Badge> : <Badge tone="green">Active</Badge>}</td>
                    <td data-label="Next run">{s.paused ? <span class="muted">—</span> : <Time ms={tsMillis(s.nextRunAt)} now={now} />}</td>
                    <td data-label="Last run">
                      <Time ms={tsMillis(s.lastRunAt)} now={now} />
                      {s.lastJobId ? (
                        <div class="small">
                          <a href={jobHref(s.lastJobId)}>last job</a>
                        </div>
                      ) : null}
                    </td>
                    <td class="actions">
                      <button class="btn btn-sm" onClick={() => setPaused(s, !s.paused)}>
                        {s.paused ? "Resume" : "Pause"}
                      </button>
                      <button class="btn btn-sm btn-ghost" onClick={() => edit(s)}>
                        Edit
                      </button>
                      <button class="btn btn-sm btn-danger-outline" onClick={() => remove(s)}>
                        Delete
                      </button>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </Card>
    </div>
  );
}

function ScheduleEditor({ initial, onClose }: { initial: ScheduleForm; onClose: () => void }) {
  const [f, setF] = useState(initial);
  const [submitted, setSubmitted] = useState(false);
  const [saving, setSaving] = useState(false);
  const { schedule, errors } = scheduleFromForm(f);
  const err = (k: keyof ScheduleForm) => (submitted && errors[k] ? <div class="field-error">{errors[k]}</div> : null);
  const field = (k: keyof ScheduleForm) => ({
    value: f[k],
    onInput: (e: Event) => setF({ ...f, [k]: (e.currentTarget as HTMLInputElement).value }),
    class: `input ${submitted && errors[k] ? "invalid" : ""}`,
  });
  return (
    <Card title={initial.name ? `Schedule ${initial.name}` : "New schedule"}>
      <form
        class="form-grid"
        onSubmit={async (e) => {
          e.preventDefault();
          setSubmitted(true);
          if (!schedule) return;
          setSaving(true);
          try {
            await api().putSchedule({ schedule });
            toast(`Schedule ${schedule.name} saved`);
            onClose();
          } catch (error) {
            toast(errorMessage(error), "error");
          } finally {
            setSaving(false);
          }
        }}
      >
        <label class="field">
          <span>Name</span>
          <input {...field("name")} placeholder="nightly-cleanup" />
          {err("name")}
        </label>
        <label class="field">
          <span>Cron</span>
          <input {...field("cron")} class={`${field("cron").class} mono`} placeholder="0 */15 * * * *" />
          <small class="muted">sec min hour day month weekday (seconds optional)</small>
          {err("cron")}
        </label>
        <label class="field">
          <span>Time zone</span>
          <input {...field("timeZone")} placeholder="UTC" />
        </label>
        <label class="field">
          <span>Missed ticks</span>
          <select {...field("missedTicks")} data-testid="missed-ticks">
            <option value="run_once">Run once for all missed</option>
            <option value="skip">Skip</option>
          </select>
          <small class="muted">Ticks that passed while no server ran</small>
        </label>
        <label class="field">
          <span>Job type</span>
          <input {...field("type")} list="schedule-types" placeholder="cleanup" />
          <datalist id="schedule-types">
            <option value="channel_download" />
            <option value="playlist_download" />
            <option value="metadata_extraction" />
            <option value="cleanup" />
          </datalist>
          {err("type")}
        </label>
        <label class="field">
          <span>Queue</span>
          <input {...field("queue")} placeholder="default" />
        </label>
        <label class="field span-2">
          <span>Payload (JSON)</span>
          <textarea {...field("payload")} class={`${field("payload").class} mono`} rows={4} />
          {err("payload")}
        </label>
        <div class="form-actions span-2">
          <button type="button" class="btn" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" class="btn btn-primary" disabled={saving}>
            Save schedule
          </button>
        </div>
      </form>
    </Card>
  );
}
