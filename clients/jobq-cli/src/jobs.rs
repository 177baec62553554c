//! Commands on single jobs: enqueue, get, list, cancel, retry, delete.

use std::io::Read;
use std::time::Duration;

use clap::Args;
use jobq_client::{NewJob, pb};
use serde_json::json;

use crate::output::{JOB_HEADERS, job_json, job_row, job_text, parse_state, state_name, table};
use crate::streams::{WaitOptions, wait_for_jobs};
use crate::{CmdResult, Ctx, Failure, exit, print_json};

/// A job id.
#[derive(Debug, Args)]
pub struct IdArg {
    /// Job id.
    pub id: String,
}

/// `jobq enqueue`.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// Job type, e.g. `channel_download`.
    #[arg(value_name = "TYPE")]
    pub job_type: String,
    /// Payload: JSON text, `@FILE` to read a file, or `-` for stdin. Default `{}`.
    pub payload: Option<String>,
    /// Queue name.
    #[arg(long, short)]
    pub queue: Option<String>,
    /// Priority, -1000..1000; higher runs first.
    #[arg(long, short, allow_hyphen_values = true)]
    pub priority: Option<i32>,
    /// Run no sooner than this from now (e.g. `30s`, `5m`).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "run_at")]
    pub delay: Option<Duration>,
    /// Run no sooner than this time (RFC 3339, e.g. `2026-12-01T08:00:00Z`).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    pub run_at: Option<std::time::SystemTime>,
    /// Attempts before the job is dead-lettered.
    #[arg(long)]
    pub max_attempts: Option<i32>,
    /// Longest run time of one attempt (e.g. `10m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Backoff after the first failed attempt (needs --backoff-max).
    #[arg(long, value_parser = humantime::parse_duration, requires = "backoff_max")]
    pub backoff_base: Option<Duration>,
    /// Longest backoff between attempts (needs --backoff-base).
    #[arg(long, value_parser = humantime::parse_duration, requires = "backoff_base")]
    pub backoff_max: Option<Duration>,
    /// While a job with this key is unfinished, return it instead of a new one.
    #[arg(long)]
    pub unique_key: Option<String>,
    /// Run at most `--concurrency-limit` jobs with this key at once, across
    /// all workers (e.g. `channel:UCxyz`).
    #[arg(long)]
    pub concurrency_key: Option<String>,
    /// Limit of the concurrency key (default 1).
    #[arg(long, requires = "concurrency_key")]
    pub concurrency_limit: Option<i32>,
    /// A job that must succeed first (repeat for more).
    #[arg(long = "depends-on", value_name = "JOB_ID")]
    pub depends_on: Vec<String>,
    /// A tag (repeat for more).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// The job that spawned this one.
    #[arg(long)]
    pub parent: Option<String>,
    /// Then wait until the job is finished (exit 0 succeeded, 7 dead/cancelled, 8 timeout).
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this long.
    #[arg(long = "wait-timeout", value_parser = humantime::parse_duration)]
    pub wait_timeout: Option<Duration>,
}

/// Reads the payload argument: JSON text, `@file`, or `-` (stdin).
pub fn read_payload(argument: Option<&str>) -> Result<serde_json::Value, Failure> {
    let text = match argument {
        None => return Ok(json!({})),
        Some("-") => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|error| Failure::usage(format!("reading stdin: {error}")))?;
            text
        }
        Some(argument) => match argument.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|error| Failure::usage(format!("reading payload file {path}: {error}")))?,
            None => argument.to_owned(),
        },
    };
    serde_json::from_str(&text)
        .map_err(|error| Failure::usage(format!("the payload is not valid JSON: {error}")))
}

/// `jobq enqueue`.
pub async fn enqueue(ctx: &Ctx, args: EnqueueArgs) -> CmdResult {
    let payload = read_payload(args.payload.as_deref())?;
    let mut job = NewJob::new(args.job_type, payload);
    if let Some(queue) = args.queue {
        job = job.queue(queue);
    }
    if let Some(priority) = args.priority {
        job = job.priority(priority);
    }
    if let Some(delay) = args.delay {
        job = job.delay(delay);
    }
    if let Some(run_at) = args.run_at {
        job = job.run_at(run_at);
    }
    if let Some(attempts) = args.max_attempts {
        job = job.max_attempts(attempts);
    }
    if let Some(timeout) = args.timeout {
        job = job.timeout(timeout);
    }
    if let (Some(base), Some(max)) = (args.backoff_base, args.backoff_max) {
        job = job.backoff(base, max);
    }
    // already_exists also answers a retried call (same request_id) that
    // created the job the first time: only a unique key makes it news.
    let has_unique_key = args.unique_key.is_some();
    if let Some(key) = args.unique_key {
        job = job.unique_key(key);
    }
    if let Some(key) = args.concurrency_key {
        job = job.concurrency_key(key, args.concurrency_limit.unwrap_or(1));
    }
    if let Some(parent) = args.parent {
        job = job.parent(parent);
    }
    for id in args.depends_on {
        job = job.depends_on(id);
    }
    for tag in args.tags {
        job = job.tag(tag);
    }
    let client = ctx.client()?;
    let enqueued = client.enqueue(job).await?;
    if ctx.json {
        if !args.wait {
            print_json(
                &json!({ "job": job_json(&enqueued.job), "already_exists": enqueued.already_exists }),
            );
        }
    } else {
        println!("{}", enqueued.job.id);
        let note = if enqueued.already_exists && has_unique_key {
            " (already existed with this unique key)"
        } else {
            ""
        };
        eprintln!(
            "enqueued {} job {} in queue {}: {}{note}",
            enqueued.job.r#type,
            enqueued.job.id,
            enqueued.job.queue,
            state_name(enqueued.job.state)
        );
    }
    if args.wait {
        let options = WaitOptions {
            timeout: args.wait_timeout,
            quiet: !ctx.json,
        };
        return wait_for_jobs(ctx, &client, vec![enqueued.job.id], options).await;
    }
    Ok(exit::OK)
}

/// `jobq get`.
pub async fn get(ctx: &Ctx, args: IdArg) -> CmdResult {
    let job = ctx.client()?.get_job(&args.id).await?;
    if ctx.json {
        print_json(&job_json(&job));
    } else {
        print!("{}", job_text(&job));
    }
    Ok(exit::OK)
}

/// `jobq list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only jobs in this state (repeat for more): scheduled, blocked, queued,
    /// running, retrying, succeeded, cancelled, dead.
    #[arg(long = "state", value_parser = parse_state)]
    pub states: Vec<pb::JobState>,
    /// Only jobs of this type (repeat for more).
    #[arg(long = "type")]
    pub types: Vec<String>,
    /// Only jobs in this queue (repeat for more).
    #[arg(long = "queue")]
    pub queues: Vec<String>,
    /// Only children of this job.
    #[arg(long)]
    pub parent: Option<String>,
    /// Only jobs whose id, type or unique key contains this text.
    #[arg(long)]
    pub search: Option<String>,
    /// Jobs per page (1..500).
    #[arg(long, default_value_t = 50, value_parser = page_size)]
    pub limit: i32,
    /// Continue from a previous page (its next_page_token).
    #[arg(long)]
    pub page_token: Option<String>,
    /// Follow the pages to the end.
    #[arg(long)]
    pub all: bool,
}

/// Most jobs the server returns in one page (ListJobsRequest.page_size).
pub const MAX_PAGE_SIZE: i32 = 500;

/// Parses a page size, 1..500, checked here so that the error names the
/// flag rather than the request field the server would name.
pub fn page_size(text: &str) -> Result<i32, String> {
    let size: i32 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number (1..{MAX_PAGE_SIZE})"))?;
    if (1..=MAX_PAGE_SIZE).contains(&size) {
        Ok(size)
    } else {
        Err(format!("must be 1..{MAX_PAGE_SIZE}, not {size}"))
    }
}

/// `jobq list`: a table, or `{"jobs": [...], "next_page_token": "..."}`.
pub async fn list(ctx: &Ctx, args: ListArgs) -> CmdResult {
    let client = ctx.client()?;
    let mut request = pb::ListJobsRequest {
        states: args.states.iter().map(|state| *state as i32).collect(),
        types: args.types,
        queues: args.queues,
        page_size: args.limit,
        page_token: args.page_token.unwrap_or_default(),
        parent_id: args.parent.unwrap_or_default(),
        search: args.search.unwrap_or_default(),
        view: pb::JobView::Basic as i32,
        ..pb::ListJobsRequest::default()
    };
    let mut jobs = Vec::new();
    let next_page_token = loop {
        let page = client.list_jobs(request.clone()).await?;
        jobs.extend(page.jobs);
        if !args.all || page.next_page_token.is_empty() {
            break page.next_page_token;
        }
        request.page_token = page.next_page_token;
    };
    if ctx.json {
        let jobs: Vec<serde_json::Value> = jobs.iter().map(job_json).collect();
        print_json(&json!({ "jobs": jobs, "next_page_token": next_page_token }));
    } else {
        let rows: Vec<Vec<String>> = jobs.iter().map(job_row).collect();
        print!("{}", table(&JOB_HEADERS, &rows));
        if !next_page_token.is_empty() {
            eprintln!("more jobs: --page-token {next_page_token} (or --all)");
        }
    }
    Ok(exit::OK)
}

/// `jobq cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// Job id.
    pub id: String,
    /// Why (kept as the job's last error).
    #[arg(long, default_value = "")]
    pub reason: String,
}

/// `jobq cancel`.
pub async fn cancel(ctx: &Ctx, args: CancelArgs) -> CmdResult {
    let job = ctx.client()?.cancel_job(&args.id, &args.reason).await?;
    if ctx.json {
        print_json(&job_json(&job));
    } else if job.cancel_requested && job.state() == pb::JobState::Running {
        println!(
            "{}: cancel requested; its worker stops it at the next heartbeat",
            job.id
        );
    } else {
        println!("{}: {}", job.id, state_name(job.state));
    }
    Ok(exit::OK)
}

/// `jobq retry`.
pub async fn retry(ctx: &Ctx, args: IdArg) -> CmdResult {
    let job = ctx.client()?.retry_job(&args.id).await?;
    if ctx.json {
        print_json(&job_json(&job));
    } else {
        println!("{}: {}", job.id, state_name(job.state));
    }
    Ok(exit::OK)
}

/// `jobq delete`.
pub async fn delete(ctx: &Ctx, args: IdArg) -> CmdResult {
    ctx.client()?.delete_job(&args.id).await?;
    if ctx.json {
        print_json(&json!({ "deleted": args.id }));
    } else {
        println!("{}: deleted", args.id);
    }
    Ok(exit::OK)
}
