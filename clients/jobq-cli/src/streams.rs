//! Commands that follow the server over time: watch (job events), logs
//! (a job's log, optionally followed), wait (until jobs finish).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io::Write;
use std::time::Duration;

use clap::Args;
use jobq_client::{Client, json_object, pb};
use serde_json::json;
use tokio::time::Instant;

use crate::output::{
    clock_text, event_name, job_json, parse_state, parse_stream, state_name, stream_name, time_json,
};
use crate::{CmdResult, Ctx, Failure, exit, print_json, status_detail};

/// How often `wait` re-reads the jobs besides listening for events.
const WAIT_POLL: Duration = Duration::from_millis(500);

fn is_terminal(state: pb::JobState) -> bool {
    matches!(
        state,
        pb::JobState::Succeeded | pb::JobState::Cancelled | pb::JobState::Dead
    )
}

/// How long `logs` and `watch` keep trying to reconnect to a server that
/// went away before they give up (exit 5).
const RECONNECT_FOR: Duration = Duration::from_secs(300);
/// First and longest pause between reconnects.
const RECONNECT_PAUSE: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));

/// Whether a stream that ended with `status` is worth opening again: the
/// server is shutting down or unreachable (UNAVAILABLE and the other codes
/// the SDK calls transient), or the connection broke under the call (the
/// status was made on this side, from a transport error).
fn stream_broke(status: &tonic::Status) -> bool {
    jobq_client::is_transient(status.code()) || std::error::Error::source(status).is_some()
}

/// `Unavailable: the server is shutting down`.
fn status_text(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status_detail(status))
}

/// Opens a broken stream again, with a growing pause, for at most
/// [`RECONNECT_FOR`] in a row.
#[derive(Debug)]
struct Reconnect {
    pause: Duration,
}

impl Reconnect {
    fn new() -> Self {
        Self {
            pause: RECONNECT_PAUSE.0,
        }
    }

    /// Calls `open` until it succeeds, pausing before each try (also the
    /// first: a server that ends streams at once is not hammered). Gives up
    /// with the last error once the server has been away for
    /// [`RECONNECT_FOR`], or at once on an error that is not about reaching
    /// the server (a deleted job, a revoked token...).
    async fn reopen<T, F, Fut>(&mut self, mut open: F) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, jobq_client::ClientError>>,
    {
        let outage_since = Instant::now();
        loop {
            tokio::time::sleep(self.pause).await;
            match open().await {
                Ok(stream) => {
                    self.pause = RECONNECT_PAUSE.0;
                    return Ok(stream);
                }
                Err(error) if error.is_unavailable() => {
                    if outage_since.elapsed() >= RECONNECT_FOR {
                        eprintln!(
                            "jobq: gave up reconnecting after {}",
                            humantime::format_duration(RECONNECT_FOR)
                        );
                        return Err(error.into());
                    }
                    self.pause = (self.pause * 2).min(RECONNECT_PAUSE.1);
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
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

/// `--until-done`: the named jobs not finished yet.
#[derive(Debug, Default)]
struct Unfinished {
    ids: HashSet<String>,
}

/// What a job that is not found means to `--until-done`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deleted {
    /// At the start: a wrong id (exit 3).
    IsAnError,
    /// After a reconnect: deleted meanwhile, so done (as a DELETED event says).
    IsDone,
}

impl Unfinished {
    /// Re-reads the jobs (events of jobs that finished before the watch, or
    /// while it was reconnecting, were never seen).
    async fn refresh(&mut self, client: &Client, deleted: Deleted) -> Result<(), Failure> {
        for id in self.ids.clone() {
            match client.get_job(&id).await {
                Ok(job) if is_terminal(job.state()) => {
                    self.ids.remove(&id);
                }
                Ok(_) => {}
                Err(error) if error.is_not_found() && deleted == Deleted::IsDone => {
                    self.ids.remove(&id);
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }

    fn saw(&mut self, event: &pb::JobEvent) {
        if let Some(job) = &event.job
            && (is_terminal(job.state()) || event.r#type() == pb::JobEventType::Deleted)
        {
            self.ids.remove(&job.id);
        }
    }

    fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// What one message of the watch stream means.
#[derive(Debug, PartialEq)]
enum WatchMessage {
    /// An event to print.
    Event(Box<pb::JobEvent>),
    /// The server dropped this many events; the stream goes on.
    Lagged(u64),
    /// Nothing (neither an event nor a lag).
    Empty,
}

fn read_watch_message(message: pb::WatchJobsResponse) -> WatchMessage {
    if message.lagged {
        return WatchMessage::Lagged(message.dropped_events);
    }
    message.event.map_or(WatchMessage::Empty, |event| {
        WatchMessage::Event(Box::new(event))
    })
}

/// `jobq watch`: one line per event (JSON lines with --json) until
/// interrupted. When the server goes away (UNAVAILABLE, e.g. it shuts down)
/// the watch reconnects, for up to [`RECONNECT_FOR`]; events in between are
/// not replayed, and a notice on stderr says so.
pub async fn watch(ctx: &Ctx, args: WatchArgs) -> CmdResult {
    let client = ctx.client()?;
    let request = pb::WatchJobsRequest {
        queues: args.queues,
        types: args.types,
        states: args.states.iter().map(|state| *state as i32).collect(),
        job_ids: args.job_ids.clone(),
        view: pb::JobView::Basic as i32,
    };
    let mut unfinished = Unfinished::default();
    if args.until_done {
        unfinished.ids = args.job_ids.iter().cloned().collect();
        unfinished.refresh(&client, Deleted::IsAnError).await?;
        if unfinished.is_empty() {
            return Ok(exit::OK);
        }
    }
    // The first call fails at once when the server cannot be reached; only
    // a watch that was open reconnects.
    let mut stream = client.watch_jobs(request.clone()).await?;
    let mut reconnect = Reconnect::new();
    loop {
        let ended = loop {
            match stream.message().await {
                Ok(Some(message)) => match read_watch_message(message) {
                    WatchMessage::Event(event) => {
                        print_event(ctx.json, &event);
                        if args.until_done {
                            unfinished.saw(&event);
                            if unfinished.is_empty() {
                                return Ok(exit::OK);
                            }
                        }
                    }
                    WatchMessage::Lagged(dropped) => eprintln!(
                        "jobq: the watch fell behind: the server dropped {dropped} events; watching on"
                    ),
                    WatchMessage::Empty => {}
                },
                // The server ended the watch without an error: open it again.
                Ok(None) => break None,
                Err(status) if stream_broke(&status) => break Some(status),
                Err(status) => return Err(jobq_client::ClientError::from(status).into()),
            }
        };
        let why = ended.map_or_else(
            || "the server ended it".to_owned(),
            |status| status_text(&status),
        );
        eprintln!("jobq: lost the watch ({why}); reconnecting (events in between are missed)");
        stream = reconnect
            .reopen(|| client.watch_jobs(request.clone()))
            .await?;
        eprintln!("jobq: watching again");
        if args.until_done {
            unfinished.refresh(&client, Deleted::IsDone).await?;
            if unfinished.is_empty() {
                return Ok(exit::OK);
            }
        }
    }
}

fn print_event(as_json: bool, event: &pb::JobEvent) {
    let line = event_line(as_json, event);
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// One event as a line: JSON, or `TIME EVENT ID TYPE STATE (was ...)`.
fn event_line(as_json: bool, event: &pb::JobEvent) -> String {
    if as_json {
        json!({
            "event": event_name(event.r#type),
            "time": time_json(event.time.as_ref()),
            "previous_state": (event.previous_state != 0).then(|| state_name(event.previous_state)),
            "error": event.error,
            "job": event.job.as_ref().map(job_json),
        })
        .to_string()
    } else {
        let job = event.job.clone().unwrap_or_default();
        let mut line = format!(
            "{} {:<14} {} {} {}",
            clock_text(event.time.as_ref()),
            event_name(event.r#type),
            if job.id.is_empty() { "-" } else { &job.id },
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
    }
}

/// `jobq logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Job id.
    pub id: String,
    /// Keep following new lines until the job is finished. When the server
    /// goes away meanwhile, reconnect (for up to 5 minutes) and go on after
    /// the last line printed.
    #[arg(long, short)]
    pub follow: bool,
    /// Only this stream (repeat for more): stdout, stderr, progress, system.
    #[arg(long = "stream", value_parser = parse_stream)]
    pub streams: Vec<pb::LogStream>,
    /// Start after this line position (a position printed by --json).
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// Print only the text of each line.
    #[arg(long)]
    pub raw: bool,
}

/// How `logs` prints a line.
#[derive(Debug, Clone, Copy)]
enum LineFormat {
    Json,
    Raw,
    Text,
}

fn log_line_text(format: LineFormat, line: &pb::LogLine) -> String {
    match format {
        LineFormat::Json => json!({
            "position": line.position,
            "attempt": line.attempt,
            "stream": stream_name(line.stream),
            "time": time_json(line.time.as_ref()),
            "message": line.message,
            "fields": line.fields.as_ref().map_or(serde_json::Value::Null, json_object),
        })
        .to_string(),
        LineFormat::Raw => line.message.clone(),
        LineFormat::Text => format!(
            "{} {:<8} {}",
            clock_text(line.time.as_ref()),
            stream_name(line.stream),
            line.message
        ),
    }
}

/// `jobq logs`: `TIME STREAM TEXT` per line (or the text alone with --raw,
/// or JSON lines with --json). A stream that ends normally has sent the
/// whole log (with -f: the job is finished). One that breaks (the server
/// shuts down: UNAVAILABLE, or the connection drops) is opened again after
/// the last position printed, so no line is lost or printed twice.
pub async fn logs(ctx: &Ctx, args: LogsArgs) -> CmdResult {
    let client = ctx.client()?;
    let format = if ctx.json {
        LineFormat::Json
    } else if args.raw {
        LineFormat::Raw
    } else {
        LineFormat::Text
    };
    let request = |after_position: u64| pb::StreamJobLogsRequest {
        job_id: args.id.clone(),
        follow: args.follow,
        after_position,
        streams: args.streams.iter().map(|stream| *stream as i32).collect(),
    };
    let mut after = args.after;
    // The first call fails at once when the server cannot be reached; only
    // a stream that was open reconnects.
    let mut stream = client.stream_job_logs(request(after)).await?;
    let mut reconnect = Reconnect::new();
    loop {
        let status = loop {
            let message = match stream.message().await {
                Ok(Some(message)) => message,
                Ok(None) => return Ok(exit::OK),
                Err(status) if stream_broke(&status) => break status,
                Err(status) => return Err(jobq_client::ClientError::from(status).into()),
            };
            let mut stdout = std::io::stdout().lock();
            for line in &message.lines {
                // Positions only grow; a line at or before the last one
                // printed would be a repeat.
                if line.position <= after && after > 0 {
                    continue;
                }
                after = line.position;
                let _ = writeln!(stdout, "{}", log_line_text(format, line));
            }
            let _ = stdout.flush();
        };
        let why = status_text(&status);
        eprintln!(
            "jobq: lost the log stream ({why}); reconnecting to go on after position {after}"
        );
        stream = reconnect
            .reopen(|| client.stream_job_logs(request(after)))
            .await?;
        eprintln!("jobq: following the log again");
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
    // A job named twice is waited for once (and reported once).
    let mut seen = HashSet::new();
    let ids: Vec<String> = ids
        .into_iter()
        .filter(|id| seen.insert(id.clone()))
        .collect();
    let deadline = options.timeout.map(|timeout| Instant::now() + timeout);
    let request = pb::WatchJobsRequest {
        job_ids: ids.clone(),
        view: pb::JobView::Basic as i32,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lag_is_a_notice_and_the_watch_goes_on() {
        let lagged = pb::WatchJobsResponse {
            event: None,
            lagged: true,
            dropped_events: 17,
        };
        assert_eq!(read_watch_message(lagged), WatchMessage::Lagged(17));
        let event = pb::JobEvent {
            r#type: pb::JobEventType::Created as i32,
            ..pb::JobEvent::default()
        };
        let message = pb::WatchJobsResponse {
            event: Some(event.clone()),
            ..pb::WatchJobsResponse::default()
        };
        assert_eq!(
            read_watch_message(message),
            WatchMessage::Event(Box::new(event))
        );
        assert_eq!(
            read_watch_message(pb::WatchJobsResponse::default()),
            WatchMessage::Empty
        );
    }

    #[test]
    fn events_without_a_job_or_with_odd_values_still_print() {
        let event = pb::JobEvent {
            r#type: 77,
            job: None,
            previous_state: -4,
            time: Some(prost_types::Timestamp {
                seconds: i64::MIN,
                nanos: -5,
            }),
            error: String::new(),
        };
        let json: serde_json::Value =
            serde_json::from_str(&event_line(true, &event)).unwrap_or_default();
        assert_eq!(json["event"], json!("unknown(77)"));
        assert_eq!(json["job"], serde_json::Value::Null);
        assert_eq!(json["previous_state"], json!("unknown(-4)"));
        let text = event_line(false, &event);
        assert!(
            text.contains("unknown(77)") && text.contains(" - "),
            "{text}"
        );
    }

    #[test]
    fn log_lines_carry_their_fields_as_json() {
        let mut fields = serde_json::Map::new();
        fields.insert("url".into(), json!("https://example.com"));
        fields.insert("bytes".into(), json!(12));
        let line = pb::LogLine {
            position: (3 << 32) | 2,
            attempt: 3,
            stream: pb::LogStream::Stdout as i32,
            time: None,
            message: "hello".into(),
            fields: Some(jobq_client::proto_struct(fields)),
        };
        let json: serde_json::Value =
            serde_json::from_str(&log_line_text(LineFormat::Json, &line)).unwrap_or_default();
        assert_eq!(json["position"], json!(12_884_901_890_u64));
        assert_eq!(
            json["fields"],
            json!({"url": "https://example.com", "bytes": 12})
        );
        assert_eq!(json["time"], serde_json::Value::Null);
        assert_eq!(log_line_text(LineFormat::Raw, &line), "hello");
        let odd = pb::LogLine {
            stream: 9,
            ..pb::LogLine::default()
        };
        assert!(log_line_text(LineFormat::Text, &odd).starts_with("- unknown(9)"));
    }

    #[test]
    fn broken_streams_are_told_from_refusals() {
        assert!(stream_broke(&tonic::Status::unavailable("shutting down")));
        assert!(stream_broke(&tonic::Status::unknown(
            "error reading a body"
        )));
        assert!(!stream_broke(&tonic::Status::not_found("no job x")));
        assert!(!stream_broke(&tonic::Status::permission_denied("role")));
        let transport = tonic::Status::from_error(Box::new(std::io::Error::other("reset")));
        assert!(stream_broke(&transport));
    }
}
