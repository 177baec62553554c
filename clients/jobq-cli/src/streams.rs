//! Commands that follow the server over time: watch (job events), logs
//! (a job's log, optionally followed), wait (until jobs finish).

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use clap::Args;
use jobq_client::{Client, pb};
use serde_json::json;
use tokio::time::Instant;

use crate::output::{
    clock_text, event_name, job_json, parse_state, parse_stream, state_name, stream_name, time_json,
};
use crate::{CmdResult, Ctx, Failure, exit, print_json};

/// How often `wait` re-reads the jobs besides listening for events.
const WAIT_POLL: Duration = Duration::from_millis(500);

fn is_terminal(state: pb::JobState) -> bool {
    matches!(
        state,
        pb::JobState::Succeeded | pb::JobState::Cancelled | pb::JobState::Dead
    )
}

/// `jobq watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Only jobs in this queue (repeat for more).
    #[arg(long = "queue")]
    pub queues: Vec<String>,
    /// Only jobs of this type (repeat for more).
    #[arg(long = "type")]
    pub types: Vec<String>,
    /// Only events whose job is now in this state (repeat for more).
    #[arg(long = "state", value_parser = parse_state)]
    pub states: Vec<pb::JobState>,
    /// Only this job (repeat for more).
    #[arg(long = "job")]
    pub job_ids: Vec<String>,
    /// With --job: stop once every named job is finished.
    #[arg(long, requires = "job_ids")]
    pub until_done: bool,
}

/// `jobq watch`: one line per event (JSON lines with --json) until interrupted.
pub async fn watch(ctx: &Ctx, args: WatchArgs) -> CmdResult {
    let client = ctx.client()?;
    let request = pb::WatchJobsRequest {
        queues: args.queues,
        types: args.types,
        states: args.states.iter().map(|state| *state as i32).collect(),
        job_ids: args.job_ids.clone(),
    };
    let mut open: HashMap<String, bool> =
        args.job_ids.iter().map(|id| (id.clone(), true)).collect();
    if args.until_done {
        // Jobs already finished before the watch started never send an event.
        for id in &args.job_ids {
            let job = client.get_job(id).await?;
            if is_terminal(job.state()) {
                open.insert(id.clone(), false);
            }
        }
        if !open.values().any(|open| *open) {
            return Ok(exit::OK);
        }
    }
    loop {
        let mut stream = client.watch_jobs(request.clone()).await?;
        loop {
            let message = match stream.message().await {
                Ok(Some(message)) => message,
                Ok(None) => {
                    return Err(Failure::new(
                        exit::UNAVAILABLE,
                        "the server ended the watch",
                    ));
                }
                Err(status) => return Err(jobq_client::ClientError::from(status).into()),
            };
            if message.lagged {
                eprintln!("jobq: the watch fell behind and events were dropped; watching again");
                break;
            }
            let Some(event) = message.event else { continue };
            print_event(ctx.json, &event);
            if args.until_done {
                if let Some(job) = &event.job
                    && (is_terminal(job.state()) || event.r#type() == pb::JobEventType::Deleted)
                {
                    open.insert(job.id.clone(), false);
                }
                if !open.values().any(|open| *open) {
                    return Ok(exit::OK);
                }
            }
        }
    }
}

fn print_event(as_json: bool, event: &pb::JobEvent) {
    let job = event.job.clone().unwrap_or_default();
    let line = if as_json {
        json!({
            "event": event_name(event.r#type),
            "time": time_json(event.time.as_ref()),
            "previous_state": (event.previous_state != 0).then(|| state_name(event.previous_state)),
            "error": event.error,
            "job": job_json(&job),
        })
        .to_string()
    } else {
        let mut line = format!(
            "{} {:<14} {} {} {}",
            clock_text(event.time.as_ref()),
            event_name(event.r#type),
            job.id,
            job.r#type,
            state_name(job.state)
        );
        if event.previous_state != 0 && event.previous_state != job.state {
            line.push_str(&format!(" (was {})", state_name(event.previous_state)));
        }
        if event.r#type() == pb::JobEventType::Progress {
            line.push_str(&format!(
                " {}% {}",
                job.progress_percent, job.progress_message
            ));
        }
        if !event.error.is_empty() {
            line.push_str(&format!(": {}", event.error));
        }
        line
    };
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// `jobq logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Job id.
    pub id: String,
    /// Keep following new lines until the job is finished.
    #[arg(long, short)]
    pub follow: bool,
    /// Only this stream (repeat for more): stdout, stderr, progress, system.
    #[arg(long = "stream", value_parser = parse_stream)]
    pub streams: Vec<pb::LogStream>,
    /// Start after this line position.
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// Print only the text of each line.
    #[arg(long)]
    pub raw: bool,
}

/// `jobq logs`: `TIME STREAM TEXT` per line (or the text alone with --raw,
/// or JSON lines with --json).
pub async fn logs(ctx: &Ctx, args: LogsArgs) -> CmdResult {
    let client = ctx.client()?;
    let mut after = args.after;
    loop {
        let request = pb::StreamJobLogsRequest {
            job_id: args.id.clone(),
            follow: args.follow,
            after_position: after,
            streams: args.streams.iter().map(|stream| *stream as i32).collect(),
        };
        let mut stream = client.stream_job_logs(request).await?;
        let mut lagged = false;
        loop {
            let message = match stream.message().await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(status) => return Err(jobq_client::ClientError::from(status).into()),
            };
            let mut stdout = std::io::stdout().lock();
            for line in &message.lines {
                after = after.max(line.position);
                let text = if ctx.json {
                    json!({
                        "position": line.position,
                        "attempt": line.attempt,
                        "stream": stream_name(line.stream),
                        "time": time_json(line.time.as_ref()),
                        "message": line.message,
                        "fields": if line.fields.is_empty() { serde_json::Value::Null } else {
                            serde_json::from_str(&line.fields).unwrap_or(json!(line.fields))
                        },
                    })
                    .to_string()
                } else if args.raw {
                    line.message.clone()
                } else {
                    format!(
                        "{} {:<8} {}",
                        clock_text(line.time.as_ref()),
                        stream_name(line.stream),
                        line.message
                    )
                };
                let _ = writeln!(stdout, "{text}");
            }
            let _ = stdout.flush();
            if message.lagged {
                after = after.max(message.resume_after_position);
                eprintln!("jobq: fell behind the log; resuming after line {after}");
                lagged = true;
                break;
            }
        }
        if !lagged {
            return Ok(exit::OK);
        }
    }
}

/// `jobq wait`.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Job ids.
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// Give up after this long (exit 8).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
}

/// How `wait` behaves.
#[derive(Debug, Clone, Copy)]
pub struct WaitOptions {
    /// Give up after this long.
    pub timeout: Option<Duration>,
    /// Print `ID: state` lines (human mode) instead of JSON.
    pub quiet: bool,
}

/// `jobq wait`.
pub async fn wait(ctx: &Ctx, args: WaitArgs) -> CmdResult {
    let client = ctx.client()?;
    wait_for_jobs(
        ctx,
        &client,
        args.ids,
        WaitOptions {
            timeout: args.timeout,
            quiet: !ctx.json,
        },
    )
    .await
}

/// Waits until every job is finished, listening to WatchJobs and re-reading
/// the jobs now and then (events can be missed across reconnects). Exit 0 if
/// all succeeded, 7 if one ended dead or cancelled, 8 on timeout.
pub async fn wait_for_jobs(
    ctx: &Ctx,
    client: &Client,
    ids: Vec<String>,
    options: WaitOptions,
) -> CmdResult {
    let deadline = options.timeout.map(|timeout| Instant::now() + timeout);
    let request = pb::WatchJobsRequest {
        job_ids: ids.clone(),
        ..pb::WatchJobsRequest::default()
    };
    // Watching is an optimisation: without it, polling still gets there.
    let mut events = client.watch_jobs(request).await.ok();
    let mut finished: HashMap<String, pb::Job> = HashMap::new();
    loop {
        for id in &ids {
            if finished.contains_key(id) {
                continue;
            }
            let job = client.get_job(id).await?;
            if is_terminal(job.state()) {
                finished.insert(id.clone(), job);
            }
        }
        if finished.len() == ids.len() {
            break;
        }
        let next_poll = Instant::now() + WAIT_POLL;
        let wake = deadline.map_or(next_poll, |deadline| deadline.min(next_poll));
        match events.as_mut() {
            Some(stream) => {
                tokio::select! {
                    message = stream.message() => {
                        if !matches!(message, Ok(Some(_))) {
                            events = None;
                        }
                    }
                    () = tokio::time::sleep_until(wake) => {}
                }
            }
            None => tokio::time::sleep_until(wake).await,
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            let pending: Vec<&String> = ids
                .iter()
                .filter(|id| !finished.contains_key(*id))
                .collect();
            return Err(Failure::new(
                exit::TIMEOUT,
                format!("timed out waiting for {pending:?}"),
            ));
        }
    }
    let jobs: Vec<&pb::Job> = ids.iter().filter_map(|id| finished.get(id)).collect();
    if ctx.json {
        print_json(&json!(
            jobs.iter().map(|job| job_json(job)).collect::<Vec<_>>()
        ));
    } else if options.quiet {
        for job in &jobs {
            let detail = if job.last_error.is_empty() {
                String::new()
            } else {
                format!(": {}", job.last_error)
            };
            eprintln!("{}: {}{detail}", job.id, state_name(job.state));
        }
    }
    let all_succeeded = jobs
        .iter()
        .all(|job| job.state() == pb::JobState::Succeeded);
    Ok(if all_succeeded {
        exit::OK
    } else {
        exit::JOB_FAILED
    })
}
