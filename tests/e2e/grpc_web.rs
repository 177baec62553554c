//! Both server streams through grpc-web, as the dashboard uses them: a real
//! grpc-web client (tonic-web's client layer over hyper's HTTP/1.1 client) on
//! the same port as gRPC, receiving log lines and job events one by one while
//! the job is still under way.

use anyhow::{Context, Result, ensure};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jobq_tests::pb::job_queue_service_client::JobQueueServiceClient;
use jobq_tests::pb::{
    GetJobLogsRequest, JobEventType, JobSpec, JobState, LogStream, WatchJobsRequest,
};
use jobq_tests::{JobqClient, LeasedJobExt, TestServer, spec};
use tonic_web::{GrpcWebCall, GrpcWebClientService};

use crate::logs::{
    all_lines, check_exact_range, entry, log_request, push, read_to_end, read_until,
};
use crate::watch::expect_event;

/// A JobQueueService client that speaks grpc-web: tonic-web's client layer
/// turns each call into an HTTP/1.1 request with content-type
/// `application/grpc-web` and decodes the grpc-web answer (trailers in the body).
type WebClient = JobQueueServiceClient<
    GrpcWebClientService<Client<HttpConnector, GrpcWebCall<tonic::body::Body>>>,
>;

fn web_client(server: &TestServer) -> Result<WebClient> {
    let http = Client::builder(TokioExecutor::new()).build_http();
    let origin = format!("http://{}", server.addr())
        .parse()
        .context("origin URI")?;
    Ok(JobQueueServiceClient::with_origin(
        GrpcWebClientService::new(http),
        origin,
    ))
}

/// Checks that the server answered in grpc-web, not plain gRPC.
fn check_grpc_web_answer(headers: &tonic::metadata::MetadataMap) -> Result<()> {
    let content_type = headers
        .get("content-type")
        .context("the answer has no content-type")?
        .to_str()
        .context("content-type is not text")?;
    ensure!(
        content_type.starts_with("application/grpc-web"),
        "the answer's content-type is {content_type:?}, not grpc-web"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_job_logs_follows_a_job_through_grpc_web() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq: JobqClient = server.client();
    let mut web = web_client(&server)?;
    let job = jobq.enqueue(spec("web-logs")).await?;

    let response = web
        .stream_job_logs(log_request(&job.id, true, 0, &[]))
        .await
        .context("StreamJobLogs over grpc-web")?;
    check_grpc_web_answer(response.metadata())?;
    let mut follower = response.into_inner();
    // Each line arrives before the next step: the HTTP/1.1 response is
    // streamed, not buffered until the job ends.
    let mut seen = read_until(&mut follower, 1).await?;
    let leased = jobq.lease_one("worker-web").await?;
    seen.extend(read_until(&mut follower, 2).await?);
    for batch in 0..3 {
        let pushed = push(
            &jobq,
            &leased,
            vec![vec![
                entry(LogStream::Stdout, format!("web out {batch}")),
                entry(LogStream::Stderr, format!("web err {batch}")),
            ]],
        )
        .await?;
        seen.extend(read_until(&mut follower, pushed.last_position).await?);
    }
    assert_eq!(jobq.get(&job.id).await?.state(), JobState::Running);

    jobq.complete(&leased).await?;
    // The stream ends with an OK status in the grpc-web trailers.
    seen.extend(read_to_end(&mut follower).await?);
    let stored = all_lines(&jobq, &job.id).await?;
    check_exact_range(&seen, 1, 6)?;
    assert_eq!(seen, stored);

    // The unary call works the same way.
    let page = web
        .get_job_logs(GetJobLogsRequest {
            job_id: job.id.clone(),
            streams: vec![LogStream::Stderr.into()],
            ..GetJobLogsRequest::default()
        })
        .await
        .context("GetJobLogs over grpc-web")?
        .into_inner();
    let stderr: Vec<&str> = page
        .lines
        .iter()
        .map(|line| line.message.as_str())
        .collect();
    assert_eq!(stderr, ["web err 0", "web err 1", "web err 2"]);
    assert!(page.end_of_log);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_jobs_streams_events_through_grpc_web() -> Result<()> {
    use JobEventType::{Created, StateChanged};
    use JobState::{Queued, Running, Succeeded, Unspecified};

    let server = TestServer::start().await?;
    let jobq = server.client();
    let mut web = web_client(&server)?;
    let response = web
        .watch_jobs(WatchJobsRequest {
            queues: vec!["web".to_owned()],
            ..WatchJobsRequest::default()
        })
        .await
        .context("WatchJobs over grpc-web")?;
    check_grpc_web_answer(response.metadata())?;
    let mut watch = response.into_inner();

    let job = jobq
        .enqueue(JobSpec {
            queue: "web".to_owned(),
            ..spec("web-watch")
        })
        .await?;
    let id = job.id.as_str();
    // Each event is received before the job takes its next step.
    expect_event(&mut watch, (Created, Unspecified, Queued, id)).await?;
    let leased = jobq
        .lease(jobq_tests::pb::LeaseJobsRequest {
            queues: vec!["web".to_owned()],
            ..jobq_tests::lease_request("worker-web", 1)
        })
        .await?
        .pop()
        .context("no job to lease")?;
    expect_event(&mut watch, (StateChanged, Queued, Running, id)).await?;
    jobq.complete(&leased).await?;
    expect_event(&mut watch, (StateChanged, Running, Succeeded, id)).await?;
    assert_eq!(leased.id(), id);
    server.shutdown().await
}
