//! Commands over many jobs and the server's setup: stats, the dead-letter
//! queue, queues, workers and schedules.

use clap::{Args, Subcommand};
use jobq_client::{NewJob, pb};
use serde_json::json;

use crate::jobs::{page_size, read_payload};
use crate::output::{
    JOB_HEADERS, ago, duration_json, job_json, job_row, state_name, table, time_json, time_text,
    value_json, worker_status_name,
};
use crate::{CmdResult, Ctx, Failure, exit, print_json};

/// `jobq stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Only this queue (repeat for more).
    #[arg(long = "queue")]
    pub queues: Vec<String>,
}

/// States in lifecycle order, for the stats table's columns.
const STATES: [pb::JobState; 8] = [
    pb::JobState::Scheduled,
    pb::JobState::Blocked,
    pb::JobState::Queued,
    pb::JobState::Running,
    pb::JobState::Retrying,
    pb::JobState::Succeeded,
    pb::JobState::Cancelled,
    pb::JobState::Dead,
];

fn count_of(counts: &[pb::StateCount], state: pb::JobState) -> i64 {
    counts
        .iter()
        .filter(|count| count.state() == state)
        .map(|count| count.count)
        .sum()
}

/// `jobq stats`: one row per queue, one column per state.
pub async fn stats(ctx: &Ctx, args: StatsArgs) -> CmdResult {
    let stats = ctx.client()?.queue_stats(args.queues).await?;
    let counts_json = |counts: &[pb::StateCount]| -> serde_json::Value {
        STATES
            .iter()
            .map(|state| (state_name(*state as i32), json!(count_of(counts, *state))))
            .collect()
    };
    if ctx.json {
        let queues: Vec<serde_json::Value> = stats
            .queues
            .iter()
            .map(|queue| {
                json!({
                    "queue": queue.queue,
                    "counts": counts_json(&queue.counts),
                    "oldest_ready_age": duration_json(queue.oldest_ready_age.as_ref()),
                })
            })
            .collect();
        print_json(
            &json!({ "queues": queues, "totals": counts_json(&stats.totals), "as_of": time_json(stats.as_of.as_ref()) }),
        );
        return Ok(exit::OK);
    }
    let mut headers = vec!["QUEUE".to_owned()];
    headers.extend(
        STATES
            .iter()
            .map(|state| state_name(*state as i32).to_uppercase()),
    );
    headers.push("OLDEST READY".to_owned());
    let row = |name: &str, counts: &[pb::StateCount], oldest: String| -> Vec<String> {
        let mut row = vec![name.to_owned()];
        row.extend(
            STATES
                .iter()
                .map(|state| count_of(counts, *state).to_string()),
        );
        row.push(oldest);
        row
    };
    let mut rows: Vec<Vec<String>> = stats
        .queues
        .iter()
        .map(|queue| {
            let oldest = duration_json(queue.oldest_ready_age.as_ref())
                .as_str()
                .unwrap_or("-")
                .to_owned();
            row(&queue.queue, &queue.counts, oldest)
        })
        .collect();
    rows.push(row("(total)", &stats.totals, String::new()));
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    print!("{}", table(&headers, &rows));
    Ok(exit::OK)
}

/// `jobq dead-letter ...`.
#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// List dead jobs, newest first.
    List(DeadFilter),
    /// Queue dead jobs again, attempts reset: the ids given, or with --all every match.
    Requeue(DeadSelection),
    /// Delete dead jobs: the ids given, or with --all every match.
    Purge(DeadSelection),
}

/// Which dead jobs.
#[derive(Debug, Args)]
pub struct DeadFilter {
    /// Only this queue (repeat for more).
    #[arg(long = "queue")]
    pub queues: Vec<String>,
    /// Only this type (repeat for more).
    #[arg(long = "type")]
    pub types: Vec<String>,
    /// At most this many (1..500).
    #[arg(long, default_value_t = 50, value_parser = page_size)]
    pub limit: i32,
}

/// Dead jobs to act on.
#[derive(Debug, Args)]
pub struct DeadSelection {
    /// Job ids; or use --all.
    pub ids: Vec<String>,
    /// Every dead job matching the filters (at most --limit).
    #[arg(long, conflicts_with = "ids")]
    pub all: bool,
    /// Only this queue (repeat for more; with --all).
    #[arg(long = "queue", requires = "all")]
    pub queues: Vec<String>,
    /// Only this type (repeat for more; with --all).
    #[arg(long = "type", requires = "all")]
    pub types: Vec<String>,
    /// At most this many (with --all; 1..10000).
    #[arg(long, default_value_t = 1000, requires = "all", value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub limit: i32,
}

impl DeadSelection {
    fn selector(self) -> Result<pb::JobSelector, Failure> {
        if self.ids.is_empty() && !self.all {
            return Err(Failure::usage(
                "name the jobs, or pass --all for every dead job",
            ));
        }
        Ok(pb::JobSelector {
            job_ids: self.ids,
            states: vec![pb::JobState::Dead as i32],
            queues: self.queues,
            types: self.types,
            limit: if self.all { self.limit } else { 0 },
        })
    }
}

/// `jobq dead-letter ...`.
pub async fn dead_letter(ctx: &Ctx, command: DeadLetterCommand) -> CmdResult {
    let client = ctx.client()?;
    match command {
        DeadLetterCommand::List(filter) => {
            let request = pb::ListJobsRequest {
                states: vec![pb::JobState::Dead as i32],
                types: filter.types,
                queues: filter.queues,
                page_size: filter.limit,
                view: pb::JobView::Basic as i32,
                ..pb::ListJobsRequest::default()
            };
            let page = client.list_jobs(request).await?;
            if ctx.json {
                let jobs: Vec<serde_json::Value> = page.jobs.iter().map(job_json).collect();
                print_json(&json!({ "jobs": jobs, "next_page_token": page.next_page_token }));
            } else {
                let rows: Vec<Vec<String>> = page.jobs.iter().map(job_row).collect();
                print!("{}", table(&JOB_HEADERS, &rows));
            }
        }
        DeadLetterCommand::Requeue(selection) => {
            let ids = client.retry_jobs(selection.selector()?).await?;
            report_ids(ctx, "requeued", &ids);
        }
        DeadLetterCommand::Purge(selection) => {
            let ids = client.delete_jobs(selection.selector()?).await?;
            report_ids(ctx, "deleted", &ids);
        }
    }
    Ok(exit::OK)
}

fn report_ids(ctx: &Ctx, verb: &str, ids: &[String]) {
    if ctx.json {
        print_json(&json!({ verb: ids }));
    } else {
        for id in ids {
            println!("{id}");
        }
        eprintln!("{verb} {} jobs", ids.len());
    }
}

/// `jobq queues ...`.
#[derive(Debug, Subcommand)]
pub enum QueuesCommand {
    /// Every queue with its controls.
    List,
    /// Stop handing out a queue's jobs.
    Pause {
        /// Queue name.
        name: String,
    },
    /// Hand out a paused queue's jobs again.
    Resume {
        /// Queue name.
        name: String,
    },
    /// Set a queue's limits.
    Set {
        /// Queue name.
        name: String,
        /// Most jobs running at once (0 = no limit).
        #[arg(long)]
        concurrency: Option<i32>,
        /// Most jobs started per second (0 = no limit).
        #[arg(long)]
        rate: Option<f64>,
        /// Most jobs the rate lets start at once after a quiet spell (0 = the
        /// rate rounded up).
        #[arg(long)]
        burst: Option<f64>,
        /// Pause the queue too.
        #[arg(long, conflicts_with = "resume")]
        pause: bool,
        /// Resume the queue too.
        #[arg(long)]
        resume: bool,
    },
}

fn queue_json(queue: &pb::Queue) -> serde_json::Value {
    json!({
        "name": queue.name,
        "paused": queue.paused,
        "concurrency_limit": queue.concurrency_limit,
        "rate_limit_per_second": queue.rate_limit_per_second,
        "rate_burst": queue.rate_burst,
    })
}

/// `jobq queues ...`.
pub async fn queues(ctx: &Ctx, command: QueuesCommand) -> CmdResult {
    let client = ctx.client()?;
    let update = |name: String| pb::UpdateQueueRequest {
        name,
        ..pb::UpdateQueueRequest::default()
    };
    let queues = match command {
        QueuesCommand::List => client.list_queues().await?,
        QueuesCommand::Pause { name } => vec![
            client
                .update_queue(pb::UpdateQueueRequest {
                    paused: Some(true),
                    ..update(name)
                })
                .await?,
        ],
        QueuesCommand::Resume { name } => {
            vec![
                client
                    .update_queue(pb::UpdateQueueRequest {
                        paused: Some(false),
                        ..update(name)
                    })
                    .await?,
            ]
        }
        QueuesCommand::Set {
            name,
            concurrency,
            rate,
            burst,
            pause,
            resume,
        } => {
            let paused = (pause || resume).then_some(pause);
            if concurrency.is_none() && rate.is_none() && burst.is_none() && paused.is_none() {
                return Err(Failure::usage(
                    "nothing to set: pass --concurrency, --rate, --burst, --pause or --resume",
                ));
            }
            let request = pb::UpdateQueueRequest {
                paused,
                concurrency_limit: concurrency,
                rate_limit_per_second: rate,
                rate_burst: burst,
                ..update(name)
            };
            vec![client.update_queue(request).await?]
        }
    };
    if ctx.json {
        print_json(&json!(queues.iter().map(queue_json).collect::<Vec<_>>()));
    } else {
        let limit = |value: String| if value == "0" { "-".to_owned() } else { value };
        let rows: Vec<Vec<String>> = queues
            .iter()
            .map(|queue| {
                vec![
                    queue.name.clone(),
                    if queue.paused { "paused" } else { "active" }.to_owned(),
                    limit(queue.concurrency_limit.to_string()),
                    limit(queue.rate_limit_per_second.to_string()),
                    if queue.rate_limit_per_second > 0.0 {
                        limit(queue.rate_burst.to_string())
                    } else {
                        "-".to_owned()
                    },
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &["QUEUE", "STATUS", "CONCURRENCY", "RATE/S", "BURST"],
                &rows
            )
        );
    }
    Ok(exit::OK)
}

/// `jobq workers`.
#[derive(Debug, Args)]
pub struct WorkersArgs {
    /// Include workers lost more than an hour ago.
    #[arg(long)]
    pub all: bool,
}

/// `jobq workers`.
pub async fn workers(ctx: &Ctx, args: WorkersArgs) -> CmdResult {
    let workers = ctx.client()?.list_workers(args.all).await?;
    let status = |worker: &pb::Worker| worker_status_name(worker.status);
    if ctx.json {
        let workers: Vec<serde_json::Value> = workers
            .iter()
            .map(|worker| {
                json!({
                    "worker_id": worker.worker_id,
                    "hostname": worker.hostname,
                    "version": worker.version,
                    "status": status(worker),
                    "queues": worker.queues,
                    "types": worker.types,
                    "running_job_ids": worker.running_job_ids,
                    "first_seen_at": time_json(worker.first_seen_at.as_ref()),
                    "last_seen_at": time_json(worker.last_seen_at.as_ref()),
                })
            })
            .collect();
        print_json(&json!(workers));
    } else {
        let rows: Vec<Vec<String>> = workers
            .iter()
            .map(|worker| {
                vec![
                    worker.worker_id.clone(),
                    status(worker),
                    worker.hostname.clone(),
                    worker.version.clone(),
                    worker.queues.join(","),
                    worker.running_job_ids.len().to_string(),
                    ago(worker.last_seen_at.as_ref()),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &[
                    "WORKER",
                    "STATUS",
                    "HOST",
                    "VERSION",
                    "QUEUES",
                    "RUNNING",
                    "LAST SEEN"
                ],
                &rows
            )
        );
    }
    Ok(exit::OK)
}

/// `jobq schedules put --missed-ticks`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum MissedTicksArg {
    /// One job for all the ticks missed.
    RunOnce,
    /// No job for missed ticks.
    Skip,
}

fn missed_ticks_name(raw: i32) -> &'static str {
    match pb::MissedTicks::try_from(raw) {
        Ok(pb::MissedTicks::Skip) => "skip",
        _ => "run-once",
    }
}

/// `jobq schedules ...`.
#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// Every schedule.
    List,
    /// Create or replace a schedule.
    Put {
        /// Schedule name.
        name: String,
        /// Cron expression, e.g. `0 */15 * * * *` (seconds first) or `*/15 * * * *`.
        cron: String,
        /// Job type to enqueue on each tick.
        #[arg(value_name = "TYPE")]
        job_type: String,
        /// Payload: JSON text, `@FILE`, or `-` for stdin.
        payload: Option<String>,
        /// IANA time zone of the expression (default UTC).
        #[arg(long)]
        time_zone: Option<String>,
        /// Queue of the jobs.
        #[arg(long)]
        queue: Option<String>,
        /// Create it paused.
        #[arg(long)]
        paused: bool,
        /// What ticks missed while no server ran do: one job for them all,
        /// or none.
        #[arg(long, value_enum, default_value_t = MissedTicksArg::RunOnce)]
        missed_ticks: MissedTicksArg,
    },
    /// Stop a schedule from enqueuing.
    Pause {
        /// Schedule name.
        name: String,
    },
    /// Let a paused schedule enqueue again.
    Resume {
        /// Schedule name.
        name: String,
    },
    /// Delete a schedule (its jobs stay).
    Delete {
        /// Schedule name.
        name: String,
    },
}

fn schedule_json(schedule: &pb::Schedule) -> serde_json::Value {
    json!({
        "name": schedule.name,
        "cron": schedule.cron,
        "time_zone": schedule.time_zone,
        "paused": schedule.paused,
        "missed_ticks": missed_ticks_name(schedule.missed_ticks),
        "job": schedule.job.as_ref().map(|job| json!({
            "type": job.r#type,
            "queue": job.queue,
            "payload": value_json(job.payload.as_ref()),
        })),
        "next_run_at": time_json(schedule.next_run_at.as_ref()),
        "last_run_at": time_json(schedule.last_run_at.as_ref()),
        "last_job_id": schedule.last_job_id,
    })
}

/// `jobq schedules ...`.
pub async fn schedules(ctx: &Ctx, command: SchedulesCommand) -> CmdResult {
    let client = ctx.client()?;
    let schedules = match command {
        SchedulesCommand::List => client.list_schedules().await?,
        SchedulesCommand::Put {
            name,
            cron,
            job_type,
            payload,
            time_zone,
            queue,
            paused,
            missed_ticks,
        } => {
            let mut job = NewJob::new(job_type, read_payload(payload.as_deref())?);
            if let Some(queue) = queue {
                job = job.queue(queue);
            }
            let schedule = pb::Schedule {
                name,
                cron,
                time_zone: time_zone.unwrap_or_default(),
                job: Some(job.into_spec()),
                paused,
                missed_ticks: match missed_ticks {
                    MissedTicksArg::RunOnce => pb::MissedTicks::RunOnce,
                    MissedTicksArg::Skip => pb::MissedTicks::Skip,
                }
                .into(),
                ..pb::Schedule::default()
            };
            vec![client.put_schedule(schedule).await?]
        }
        SchedulesCommand::Pause { name } => vec![client.set_schedule_paused(&name, true).await?],
        SchedulesCommand::Resume { name } => vec![client.set_schedule_paused(&name, false).await?],
        SchedulesCommand::Delete { name } => {
            client.delete_schedule(&name).await?;
            if ctx.json {
                print_json(&json!({ "deleted": name }));
            } else {
                println!("{name}: deleted");
            }
            return Ok(exit::OK);
        }
    };
    if ctx.json {
        print_json(&json!(
            schedules.iter().map(schedule_json).collect::<Vec<_>>()
        ));
    } else {
        let rows: Vec<Vec<String>> = schedules
            .iter()
            .map(|schedule| {
                vec![
                    schedule.name.clone(),
                    schedule.cron.clone(),
                    if schedule.time_zone.is_empty() {
                        "UTC".to_owned()
                    } else {
                        schedule.time_zone.clone()
                    },
                    schedule
                        .job
                        .as_ref()
                        .map(|job| job.r#type.clone())
                        .unwrap_or_default(),
                    if schedule.paused { "paused" } else { "active" }.to_owned(),
                    missed_ticks_name(schedule.missed_ticks).to_owned(),
                    time_text(schedule.next_run_at.as_ref()),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &[
                    "NAME",
                    "CRON",
                    "TIME ZONE",
                    "TYPE",
                    "STATUS",
                    "MISSED TICKS",
                    "NEXT RUN"
                ],
                &rows
            )
        );
    }
    Ok(exit::OK)
}
