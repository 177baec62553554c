//! `jobq bench` runs the bench crate under the `jobq` binary: its worker
//! processes are started as `jobq bench ...` too.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::support::run;

/// Runs `jobq bench --json` with `args`; the run of each of `workloads`,
/// checked to have run some jobs, each exactly once.
async fn clean_runs(args: &[&str], workloads: &[&str]) -> Result<Vec<serde_json::Value>> {
    let output = run(args, Duration::from_secs(300)).await?;
    assert_eq!(output.code, 0, "{output:?}");
    let runs: Vec<serde_json::Value> = output
        .stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("bench --json prints JSON lines")?;
    let mut found = Vec::new();
    for workload in workloads {
        let run = runs
            .iter()
            .find(|run| run["workload"] == *workload && run.get("jobs").is_some())
            .with_context(|| format!("a {workload} run in {runs:?}"))?;
        assert!(run["jobs"].as_u64().is_some_and(|jobs| jobs > 0), "{run}");
        assert_eq!(run["lost"], 0, "{run}");
        assert_eq!(run["duplicated"], 0, "{run}");
        found.push(run.clone());
    }
    Ok(found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_every_job_exactly_once_with_workers_started_as_jobq() -> Result<()> {
    clean_runs(
        &[
            "bench",
            "--in-process",
            "--quick",
            "--json",
            "latency",
            "drain",
        ],
        &["latency", "drain"],
    )
    .await?;
    Ok(())
}

/// Two servers on one PostgreSQL database, calls and worker processes
/// spread over both: still every job exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_spreads_its_load_over_two_replicas_of_one_postgresql_database() -> Result<()> {
    let postgres = std::env::var("JOBQ_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let workloads = ["enqueue", "enqueue-batch", "drain"];
    let runs = clean_runs(
        &[
            "bench",
            "--in-process",
            "--quick",
            "--json",
            "--database-url",
            &postgres,
            "--replicas",
            "2",
            "--workers",
            "2",
            "enqueue",
            "enqueue-batch",
            "drain",
        ],
        &workloads,
    )
    .await?;
    for run in runs {
        assert_eq!(run["backend"], "postgresql, 2 replicas", "{run}");
        assert_eq!(
            run["extra"]["replicas"], 2,
            "servers actually started: {run}"
        );
    }
    Ok(())
}
