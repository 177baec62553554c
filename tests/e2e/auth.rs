//! Roles from outside: every RPC of both jobq services, called with each
//! role's token, none and an unknown one; what a role may do is derived
//! from the protos here (reads are the methods named Get…, List…,
//! Stream…, Watch…), not taken from the server's own table. And tokens
//! never echoed, duplicates refused, an open server warned about.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use jobq_tests::{ServerCommand, TestServer};
use prost::Message;
use tonic::Code;
use tonic::transport::Endpoint;

use crate::server_binary;

const ADMIN: &str = "admin-token-0123456789";
const PRODUCER: &str = "producer-token-0123456789";
const WORKER: &str = "worker-token-0123456789";
const READONLY: &str = "readonly-token-0123456789";

/// Every method of the jobq services, as `(service, method)`.
fn jobq_methods() -> Result<Vec<(String, String)>> {
    let set = prost_types::FileDescriptorSet::decode(jobq_proto::FILE_DESCRIPTOR_SET)?;
    let mut methods = Vec::new();
    for file in set.file {
        let package = file.package().to_owned();
        if package != "jobq.v1" {
            continue;
        }
        for service in &file.service {
            for method in &service.method {
                methods.push((
                    format!("{package}.{}", service.name()),
                    method.name().to_owned(),
                ));
            }
        }
    }
    ensure!(
        methods.len() >= 20,
        "only {} jobq methods found",
        methods.len()
    );
    Ok(methods)
}

fn is_read(method: &str) -> bool {
    ["Get", "List", "Stream", "Watch"]
        .iter()
        .any(|prefix| method.starts_with(prefix))
}

/// Whether `role` should get past authorization on the method.
fn expected(role: &str, service: &str, method: &str) -> bool {
    let queue = service == "jobq.v1.JobQueueService";
    match role {
        "admin" => true,
        "readonly" => queue && is_read(method),
        "producer" => queue && (is_read(method) || method.starts_with("Enqueue")),
        "worker" => !queue || matches!(method, "EnqueueJob" | "EnqueueJobs" | "GetJob"),
        _ => false,
    }
}

/// Calls the method with an empty message and `token`; the status code if
/// the call was refused before any answer, else `None`.
async fn refusal(
    channel: &tonic::transport::Channel,
    path: &str,
    token: Option<&str>,
) -> Result<Option<Code>> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.context("the channel is not ready")?;
    let mut request = tonic::Request::new(());
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
    }
    let path: tonic::codegen::http::uri::PathAndQuery = path.parse()?;
    // A server stream for every kind of method: its answer starts with the
    // headers, which is where a refusal comes, and nothing waits for more.
    let answer = grpc
        .server_streaming(request, path, tonic_prost::ProstCodec::<(), ()>::default())
        .await;
    Ok(answer.err().map(|status| status.code()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_lets_in_exactly_the_roles_that_may_call_it() -> Result<()> {
    let server = TestServer::start_with(|config| {
        config.auth_tokens = vec![
            format!("admin:{ADMIN}"),
            format!("producer:{PRODUCER}"),
            format!("worker:{WORKER}"),
            format!("readonly:{READONLY}"),
        ];
    })
    .await?;
    let channel = Endpoint::from_shared(format!("http://{}", server.addr()))?
        .timeout(Duration::from_secs(45))
        .connect()
        .await?;
    let roles = [
        ("admin", ADMIN),
        ("producer", PRODUCER),
        ("worker", WORKER),
        ("readonly", READONLY),
    ];
    let mut checked = 0;
    for (service, method) in jobq_methods()? {
        let path = format!("/{service}/{method}");
        for (role, token) in roles {
            let refused = refusal(&channel, &path, Some(token)).await?;
            let let_in = !matches!(
                refused,
                Some(Code::PermissionDenied | Code::Unauthenticated)
            );
            ensure!(
                let_in == expected(role, &service, &method),
                "{role} on {path}: refused with {refused:?}"
            );
            if !let_in {
                ensure!(
                    refused == Some(Code::PermissionDenied),
                    "{role} on {path}: {refused:?}"
                );
            }
            checked += 1;
        }
        for token in [None, Some("not-a-known-token-0000")] {
            let refused = refusal(&channel, &path, token).await?;
            ensure!(
                refused == Some(Code::Unauthenticated),
                "{token:?} on {path}: {refused:?}"
            );
        }
    }
    ensure!(checked >= 80, "only {checked} calls checked");
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_settings_are_refused_at_start_without_echoing_the_token() -> Result<()> {
    let secret = "do-not-echo-this-secret";
    for entries in [
        vec![format!("root:{secret}")],
        vec![format!("admin{secret}")],
        vec![format!("admin:{}", &secret[..10])],
        vec![format!("admin:{secret}"), format!("readonly:{secret}")],
        vec![format!("admin:sha256:{secret}")],
    ] {
        let data_dir = tempfile::Builder::new().prefix("jobq-e2e-").tempdir()?;
        let mut command = ServerCommand::new(server_binary())
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir.path());
        for entry in &entries {
            command = command.arg("--auth-token").arg(entry);
        }
        let (status, stderr) = command.run_to_exit(Duration::from_secs(30)).await?;
        ensure!(!status.success(), "{entries:?} started ({status})");
        ensure!(
            stderr.contains("--auth-token entr"),
            "{entries:?}: {stderr}"
        );
        ensure!(
            !stderr.contains(&secret[..10]),
            "{entries:?} echoed: {stderr}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_without_auth_on_an_open_address_is_warned_about() -> Result<()> {
    let data_dir = tempfile::Builder::new().prefix("jobq-e2e-").tempdir()?;
    let server = ServerCommand::new(server_binary())
        .arg("--listen")
        .arg("0.0.0.0:0")
        .arg("--insecure")
        .arg("--data-dir")
        .arg(data_dir.path())
        .spawn()
        .await?;
    let warned = jobq_tests::eventually(Duration::from_secs(30), "the warning", || async {
        Ok(server
            .stderr_all()
            .contains("SERVING WITHOUT AUTHENTICATION")
            .then_some(()))
    })
    .await;
    ensure!(warned.is_ok(), "no warning: {}", server.stderr_all());
    server.kill_9().await?;
    Ok(())
}
