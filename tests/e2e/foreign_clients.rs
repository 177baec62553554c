//! Clients in other languages, built only from the published protos: a
//! Python client generated with grpcio-tools (`tests/python/`) runs its
//! producer and worker scenario against a real server.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use jobq_tests::pb::{JobState, ListJobsRequest};
use jobq_tests::{TestServer, bounded, state_name};

/// How long the script may run: stub generation plus about twenty calls.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);
/// How long `pip install -r requirements.txt` may take when the modules are missing.
const PIP_TIMEOUT: Duration = Duration::from_secs(600);
/// What `tests/python/requirements.txt` pins; an installed grpcio of another
/// minor version is replaced by the pinned one.
const GRPCIO_MINOR: &str = "1.85.";

fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python")
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Runs `python ARGS` to its end: exit code, stdout and stderr together.
async fn run_python(args: &[&str], within: Duration, what: &str) -> Result<(i32, String)> {
    let output = bounded(
        within,
        what,
        tokio::process::Command::new(python())
            .args(args)
            .current_dir(python_dir())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .env("PIP_NO_INPUT", "1")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await?
    .with_context(|| format!("running {} for {what}", python()))?;
    let text = format!(
        "--- stdout ---\n{}--- stderr ---\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.code().unwrap_or(-1), text))
}

/// Makes sure grpcio and grpcio-tools of the pinned version are importable,
/// installing `requirements.txt` with pip otherwise (as `.ci/test` installs grpcurl).
async fn ensure_python_grpc() -> Result<()> {
    let probe = format!(
        "import grpc, grpc_tools; raise SystemExit(0 if grpc.__version__.startswith({GRPCIO_MINOR:?}) else 1)"
    );
    let (code, _) = run_python(&["-c", &probe], Duration::from_secs(60), "import grpc").await?;
    if code == 0 {
        return Ok(());
    }
    let (code, output) = run_python(
        &[
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--root-user-action=ignore",
            "-r",
            "requirements.txt",
        ],
        PIP_TIMEOUT,
        "pip install -r tests/python/requirements.txt",
    )
    .await?;
    ensure!(
        code == 0,
        "pip install -r tests/python/requirements.txt failed ({code}):\n{output}"
    );
    let (code, output) =
        run_python(&["-c", &probe], Duration::from_secs(60), "import grpc").await?;
    ensure!(
        code == 0,
        "grpcio {GRPCIO_MINOR}* and grpcio-tools are not importable after pip install:\n{output}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_generated_from_the_protos_works() -> Result<()> {
    ensure_python_grpc().await?;
    let server = TestServer::start().await?;
    let addr = server.addr().to_string();

    let (code, output) = run_python(
        &["jobq_client_check.py", "--server", &addr],
        SCRIPT_TIMEOUT,
        "tests/python/jobq_client_check.py",
    )
    .await?;
    ensure!(
        code == 0 && output.contains("checks passed"),
        "tests/python/jobq_client_check.py --server {addr} exited with {code}:\n{output}"
    );

    // The script's job is on this server, done.
    let listed = server
        .client()
        .queue()
        .list_jobs(ListJobsRequest {
            search: "py_thumbnail_".to_owned(),
            ..ListJobsRequest::default()
        })
        .await
        .context("ListJobs")?
        .into_inner();
    let states: Vec<_> = listed
        .jobs
        .iter()
        .map(|job| state_name(job.state))
        .collect();
    ensure!(
        listed.jobs.len() == 1 && listed.jobs[0].state() == JobState::Succeeded,
        "after the Python client: jobs {states:?}, expected one succeeded py_thumbnail_ job\n{output}"
    );
    server.shutdown().await
}
