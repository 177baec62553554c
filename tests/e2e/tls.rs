//! TLS on the server's port: gRPC, grpc-web and the dashboard over one TLS
//! listener; the SDK and the worker binary over https; client certificates
//! (mutual TLS); the certificate swapped while serving (SIGHUP, file change).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use jobq_tests::pb::JobState;
use jobq_tests::tls::{PemFiles, PemPair, TestCa, http1_over_tls};
use jobq_tests::worker_process::WorkerProcess;
use jobq_tests::{
    Backend, JobqClient, ServerCommand, TestDatabase, TestServer, bounded, eventually, spec,
};
use serde_json::json;

use crate::server_binary;

/// Bound of every wait here: the machine may be loaded.
const WITHIN: Duration = Duration::from_secs(60);

fn worker_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_jobq-test-worker"))
}

/// A CA, a server pair of it in files, and those files.
struct Pki {
    ca: TestCa,
    files: PemFiles,
}

impl Pki {
    fn new() -> Result<Self> {
        let ca = TestCa::new("jobq test CA")?;
        let files = PemFiles::new()?;
        let server = ca.server_pair()?;
        files.write("server.pem", &server.cert)?;
        files.write("server.key", &server.key)?;
        files.write("ca.pem", &ca.pem())?;
        Ok(Self { ca, files })
    }

    /// Points `config` at the server pair.
    fn serve_with(&self, config: &mut jobq_server::Config) {
        config.tls_cert = Some(self.files.path("server.pem"));
        config.tls_key = Some(self.files.path("server.key"));
    }
}

/// Enqueues one job through `client`.
async fn enqueue_one(client: &JobqClient) -> Result<String> {
    Ok(client.enqueue(spec("tls-check")).await?.id)
}

/// A connection and a call over it; `None` when either fails.
async fn works(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    identity: Option<&PemPair>,
) -> Option<JobqClient> {
    let client = JobqClient::connect_tls(addr, ca_pem, identity).await.ok()?;
    client.try_enqueue(spec("tls-check")).await.ok()?;
    Some(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_grpc_web_and_the_dashboard_share_the_tls_port() -> Result<()> {
    let pki = Pki::new()?;
    let server = TestServer::start_with(|config| pki.serve_with(config)).await?;
    let addr = server.addr();

    // A client that connects and never starts its handshake holds up nobody:
    // the next one gets in well before the stalled one's handshake deadline.
    let _stalled = tokio::net::TcpStream::connect(addr).await?;
    let jobq = bounded(
        jobq_server::tls::HANDSHAKE_TIMEOUT - Duration::from_secs(2),
        "a TLS connection beside a stalled handshake",
        JobqClient::connect_tls(addr, &pki.ca.pem(), None),
    )
    .await??;
    let id = enqueue_one(&jobq).await?;
    assert_eq!(jobq.get(&id).await?.state(), JobState::Queued);

    // The dashboard over HTTP/1.1 (ALPN http/1.1).
    let (page, alpn) = bounded(
        WITHIN,
        "the dashboard over TLS",
        http1_over_tls(
            addr,
            &pki.ca.pem(),
            b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        ),
    )
    .await??;
    let page = String::from_utf8_lossy(&page);
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    ensure!(page.starts_with("HTTP/1.1 200"), "dashboard: {page:.300}");
    ensure!(
        page.to_lowercase().contains("<html"),
        "dashboard: {page:.300}"
    );

    // A grpc-web unary call (health check, empty request) over HTTP/1.1.
    let mut request = b"POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: localhost\r\n\
        Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\nContent-Length: 5\r\n\
        Connection: close\r\n\r\n"
        .to_vec();
    request.extend_from_slice(&[0, 0, 0, 0, 0]);
    let (answer, _) = bounded(
        WITHIN,
        "grpc-web over TLS",
        http1_over_tls(addr, &pki.ca.pem(), &request),
    )
    .await??;
    let answer = String::from_utf8_lossy(&answer);
    ensure!(
        answer.starts_with("HTTP/1.1 200"),
        "grpc-web: {answer:.400}"
    );
    ensure!(
        answer.contains("grpc-status:0"),
        "grpc-web without grpc-status 0: {answer:.400}"
    );

    // A plaintext client gets an error, not a hang, and TLS still serves.
    let plain = bounded(WITHIN, "a plaintext client", async {
        let client = JobqClient::connect(addr).await?;
        client.try_enqueue(spec("tls-check")).await?;
        anyhow::Ok(())
    })
    .await?;
    ensure!(plain.is_err(), "a plaintext call succeeded on the TLS port");
    enqueue_one(&jobq).await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_and_the_worker_binary_connect_over_https() -> Result<()> {
    let pki = Pki::new()?;
    let server = TestServer::start_with(|config| pki.serve_with(config)).await?;
    let addr = server.addr();
    let url = format!("https://{addr}");

    let sdk = jobq_client::Client::connect(
        jobq_client::ClientConfig::builder(url.clone())
            .tls_ca_pem(pki.ca.pem())
            .build()?,
    )?;
    let enqueued = sdk
        .enqueue(jobq_client::NewJob::new("noop", json!({})))
        .await?;

    // Without the CA (system roots only) the server is not trusted.
    let untrusting =
        jobq_client::Client::connect(jobq_client::ClientConfig::builder(url.clone()).build()?)?;
    let refused = untrusting
        .enqueue(jobq_client::NewJob::new("noop", json!({})))
        .await;
    ensure!(
        refused.as_ref().is_err_and(|error| error.is_unavailable()),
        "an untrusted server answered or failed oddly: {refused:?}"
    );

    let media = tempfile::tempdir()?;
    let media_path = media.path().display().to_string();
    let ca_path = pki.files.path("ca.pem").display().to_string();
    let worker = WorkerProcess::spawn_at(
        worker_binary(),
        &url,
        &[
            "--worker-id",
            "tls-worker",
            "--types",
            "noop",
            "--media-root",
            &media_path,
            "--poll-wait",
            "2s",
            "--tls-ca",
            &ca_path,
        ],
    )?;
    let jobq = JobqClient::connect_tls(addr, &pki.ca.pem(), None).await?;
    let done = jobq
        .wait_for_state(&enqueued.job.id, JobState::Succeeded, WITHIN)
        .await
        .with_context(|| worker.stderr_tail())?;
    assert_eq!(done.state(), JobState::Succeeded);
    worker.kill_9().await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_certificates_of_the_client_ca() -> Result<()> {
    let pki = Pki::new()?;
    let clients_ca = TestCa::new("jobq workers CA")?;
    let client_ca_path = pki.files.write("clients-ca.pem", &clients_ca.pem())?;
    let server = TestServer::start_with(|config| {
        pki.serve_with(config);
        config.tls_client_ca = Some(client_ca_path.clone());
    })
    .await?;
    let addr = server.addr();

    let machine = clients_ca.client_pair("worker-7.example")?;
    let admitted = JobqClient::connect_tls(addr, &pki.ca.pem(), Some(&machine)).await?;
    enqueue_one(&admitted).await?;

    // No certificate, or one of another CA: the server refuses the
    // handshake. Under TLS 1.3 the client has finished its side by then, so
    // it learns of it as a closed connection: the connect fails, or the
    // first call ends UNAVAILABLE, UNKNOWN or CANCELLED (a transport error,
    // never an answer of the server).
    let stranger = TestCa::new("someone else")?.client_pair("worker-7.example")?;
    for (what, identity) in [("no certificate", None), ("a stranger's", Some(&stranger))] {
        let outcome = bounded(WITHIN, what, async {
            let client = JobqClient::connect_tls(addr, &pki.ca.pem(), identity).await?;
            client.try_enqueue(spec("tls-check")).await?;
            anyhow::Ok(())
        })
        .await?;
        let error = match outcome {
            Ok(()) => anyhow::bail!("a client with {what} was served"),
            Err(error) => error,
        };
        if let Some(status) = error.downcast_ref::<tonic::Status>() {
            ensure!(
                matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                ) && std::error::Error::source(status).is_some(),
                "{what}: {status:?}"
            );
        }
    }
    enqueue_one(&admitted).await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_certificate_is_taken_on_sighup_and_open_connections_stay() -> Result<()> {
    let pki = Pki::new()?;
    let data_dir = tempfile::Builder::new().prefix("jobq-e2e-").tempdir()?;
    let database = TestDatabase::provision(Backend::from_env()?, data_dir.path()).await?;
    let server = ServerCommand::fast(server_binary(), data_dir.path(), &database)
        .arg("--tls-cert")
        .arg(pki.files.path("server.pem"))
        .arg("--tls-key")
        .arg(pki.files.path("server.key"))
        // Only the signal reloads in this test.
        .arg("--tls-reload-interval")
        .arg("1h")
        .spawn()
        .await?;
    let addr = server.addr();
    let open = JobqClient::connect_tls(addr, &pki.ca.pem(), None).await?;
    enqueue_one(&open).await?;

    let next_ca = TestCa::new("jobq next CA")?;
    let next = next_ca.server_pair()?;
    pki.files.replace("server.key", &next.key)?;
    pki.files.replace("server.pem", &next.cert)?;
    let status = tokio::process::Command::new("kill")
        .arg("-HUP")
        .arg(server.pid().to_string())
        .status()
        .await?;
    ensure!(status.success(), "kill -HUP failed: {status}");

    eventually(WITHIN, "a client of the new CA to get in", || async {
        Ok(works(addr, &next_ca.pem(), None).await)
    })
    .await
    .with_context(|| server.stderr_tail())?;
    // New connections trusting only the old CA are refused now...
    ensure!(
        works(addr, &pki.ca.pem(), None).await.is_none(),
        "a client of the old CA still got in after the reload"
    );
    // ...while the connection opened before the reload still serves.
    enqueue_one(&open).await?;
    server.sigterm().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_files_are_picked_up_and_a_bad_pair_is_ignored() -> Result<()> {
    let pki = Pki::new()?;
    let server = TestServer::start_with(|config| {
        pki.serve_with(config);
        config.tls_reload_interval = Duration::from_millis(200);
    })
    .await?;
    let addr = server.addr();
    let open = JobqClient::connect_tls(addr, &pki.ca.pem(), None).await?;

    // A key that does not go with the certificate: the old pair stays.
    let next_ca = TestCa::new("jobq next CA")?;
    let next = next_ca.server_pair()?;
    let other = next_ca.server_pair()?;
    pki.files.replace("server.pem", &next.cert)?;
    pki.files.replace("server.key", &other.key)?;
    ensure!(
        works(addr, &pki.ca.pem(), None).await.is_some(),
        "the server stopped serving its old certificate after a bad pair"
    );

    pki.files.replace("server.key", &next.key)?;
    eventually(WITHIN, "the changed files to be served", || async {
        Ok(works(addr, &next_ca.pem(), None).await)
    })
    .await?;
    enqueue_one(&open).await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_certificate_names_the_machine_and_the_token_still_authorizes() -> Result<()> {
    let pki = Pki::new()?;
    let clients_ca = TestCa::new("jobq workers CA")?;
    let client_ca_path = pki.files.write("clients-ca.pem", &clients_ca.pem())?;
    let data_dir = tempfile::Builder::new().prefix("jobq-e2e-").tempdir()?;
    let database = TestDatabase::provision(Backend::from_env()?, data_dir.path()).await?;
    let server = ServerCommand::fast(server_binary(), data_dir.path(), &database)
        .arg("--tls-cert")
        .arg(pki.files.path("server.pem"))
        .arg("--tls-key")
        .arg(pki.files.path("server.key"))
        .arg("--tls-client-ca")
        .arg(&client_ca_path)
        .arg("--auth-token")
        .arg("admin:admin-token-0123456789")
        .env("JOBQ_LOG", "info,jobq_server::auth=debug")
        .spawn()
        .await?;
    let machine = clients_ca.client_pair("worker-7.example")?;
    let jobq = JobqClient::connect_tls(server.addr(), &pki.ca.pem(), Some(&machine)).await?;

    // An authenticated machine without a token is still not authorized...
    let refused = jobq.try_enqueue(spec("tls-check")).await;
    ensure!(
        refused
            .as_ref()
            .is_err_and(|status| status.code() == tonic::Code::Unauthenticated),
        "a call without a token: {refused:?}"
    );
    // ...and the server's log names it by its certificate.
    eventually(
        WITHIN,
        "the refusal to name the client certificate",
        || async {
            Ok(server
                .stderr_all()
                .lines()
                .any(|line| line.contains("call refused") && line.contains("worker-7.example"))
                .then_some(()))
        },
    )
    .await
    .with_context(|| server.stderr_tail())?;

    let sdk = jobq_client::Client::connect(
        jobq_client::ClientConfig::builder(format!("https://{}", server.addr()))
            .tls_ca_file(pki.files.path("ca.pem"))
            .tls_client_identity_pem(machine.cert.clone(), machine.key.clone())
            .token("admin-token-0123456789")
            .build()?,
    )?;
    sdk.enqueue(jobq_client::NewJob::new("noop", json!({})))
        .await?;
    server.sigterm().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobq_up_serves_tls_and_its_local_worker_and_the_cli_get_in() -> Result<()> {
    let files = PemFiles::new()?;
    let pair = jobq_tests::tls::self_signed_server_pair()?;
    let cert = files.write("server.pem", &pair.cert)?.display().to_string();
    let key = files.write("server.key", &pair.key)?.display().to_string();
    let data_dir = files.dir().join("data").display().to_string();
    let cli_binary = Path::new(env!("CARGO_BIN_EXE_jobq-test-cli"));
    let placeholder = jobq_tests::worker_process::Cli::new(cli_binary, "127.0.0.1:9".parse()?);
    // No --tls-ca: the local worker trusts the self-signed certificate itself.
    let mut up = placeholder.spawn_streaming(&[
        "up",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data_dir,
        "--types",
        "noop",
        "--metrics-listen",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ])?;
    let line = up
        .line_matching(WITHIN, |line| line.starts_with("listening on "))
        .await?;
    let addr: std::net::SocketAddr = line.trim_start_matches("listening on ").trim().parse()?;
    let cli = jobq_tests::worker_process::Cli::at(cli_binary, &format!("https://{addr}"));
    let done = cli
        .run(
            &[
                "--json", "enqueue", "noop", "{}", "--wait", "--tls-ca", &cert,
            ],
            WITHIN,
        )
        .await?;
    let done = done.expect_code(0)?.json()?;
    assert_eq!(done[0]["state"], json!("succeeded"));
    // Without the CA the CLI cannot trust the server: exit code 5.
    cli.run(&["list"], WITHIN).await?.expect_code(5)?;
    up.sigterm().await?;
    let (code, _) = up.finish(WITHIN).await?;
    assert_eq!(code, 0, "jobq up stops cleanly on SIGTERM");
    Ok(())
}
