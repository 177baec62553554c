//! Connections that cannot be held hostage: stalled ones are closed within
//! their timeouts while other clients keep getting answers, and a server
//! out of file descriptors says so and recovers by itself.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use jobq_tests::{Backend, ServerCommand, ServerProcess, TestDatabase, eventually, settings, spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::server_binary;

const LONG: Duration = Duration::from_secs(90);

/// The HTTP/2 connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A HEADERS frame (stream 1, END_HEADERS, no END_STREAM) of a gRPC call
/// whose body never comes; the header block in HPACK literals.
fn headers_without_body() -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
    let path = b"/jobq.v1.JobQueueService/GetJob";
    block.push(0x44); // :path, literal with indexing
    block.push(path.len() as u8);
    block.extend_from_slice(path);
    let content_type = b"application/grpc";
    block.push(0x5f); // content-type, literal with indexing
    block.push(content_type.len() as u8);
    block.extend_from_slice(content_type);
    let mut frame = Vec::new();
    frame.extend_from_slice(&(block.len() as u32).to_be_bytes()[1..]);
    frame.push(0x1); // HEADERS
    frame.push(0x4); // END_HEADERS
    frame.extend_from_slice(&1u32.to_be_bytes());
    frame.extend_from_slice(&block);
    frame
}

/// An empty SETTINGS frame.
const SETTINGS: &[u8] = &[0, 0, 0, 0x4, 0, 0, 0, 0, 0];

async fn server_with(
    extra: &[&str],
    open_files: Option<u32>,
) -> Result<(ServerProcess, tempfile::TempDir, TestDatabase)> {
    let data_dir = tempfile::Builder::new().prefix("jobq-e2e-").tempdir()?;
    let database = TestDatabase::provision(Backend::from_env()?, data_dir.path()).await?;
    let mut command = match open_files {
        // The limit through the shell, then the server in its place.
        Some(limit) => ServerCommand::new("/bin/sh")
            .arg("-c")
            .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
            .arg(server_binary()),
        None => ServerCommand::new(server_binary()),
    }
    .arg("--listen")
    .arg("127.0.0.1:0")
    .arg("--data-dir")
    .arg(data_dir.path());
    if let Some(url) = database.url() {
        command = command.arg("--database-url").arg(url);
    }
    for flag in settings::flags()
        .into_iter()
        .chain(extra.iter().map(|flag| (*flag).to_owned()))
    {
        command = command.arg(flag);
    }
    Ok((command.spawn().await?, data_dir, database))
}

/// Reads until the server closes the connection (EOF or an error).
async fn closed_by_server(mut stream: TcpStream) -> Result<()> {
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_are_closed_while_other_clients_get_answers() -> Result<()> {
    let (server, _dir, _database) = server_with(
        &[
            "--first-request-timeout",
            "2s",
            "--http2-keepalive-interval",
            "2s",
            "--http2-keepalive-timeout",
            "2s",
        ],
        None,
    )
    .await?;
    let jobq = server.client().await?;
    jobq.enqueue(spec("before")).await?;

    const STALLED: usize = 500;
    let mut stalled = Vec::with_capacity(STALLED);
    for n in 0..STALLED {
        let mut stream = TcpStream::connect(server.addr()).await?;
        match n % 3 {
            0 => {}                                       // nothing at all
            1 => stream.write_all(&PREFACE[..12]).await?, // half a preface
            _ => {
                // A call whose body never comes, from a peer that never answers pings.
                stream.write_all(PREFACE).await?;
                stream.write_all(SETTINGS).await?;
                stream.write_all(&headers_without_body()).await?;
            }
        }
        stalled.push(stream);
    }
    // The client connected before keeps getting answers, and a new one gets in.
    for _ in 0..5 {
        jobq.enqueue(spec("during")).await?;
    }
    let newcomer = server.client().await?;
    newcomer.enqueue(spec("newcomer")).await?;

    let closing = stalled
        .into_iter()
        .map(|stream| tokio::spawn(closed_by_server(stream)));
    let all_closed = async {
        for closed in closing {
            closed.await??;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(LONG, all_closed)
        .await
        .context("stalled connections still open")??;
    jobq.enqueue(spec("after")).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_out_of_file_descriptors_says_so_and_recovers() -> Result<()> {
    // The connection limit set above the open-file limit: descriptors run out first.
    let (server, _dir, _database) = server_with(
        &[
            "--max-connections",
            "10000",
            "--first-request-timeout",
            "3s",
        ],
        Some(200),
    )
    .await?;
    let jobq = server.client().await?;
    jobq.enqueue(spec("before")).await?;
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(server.addr()).await?);
    }
    eventually(
        LONG,
        "the server to say it is out of descriptors",
        || async {
            Ok(server
                .stderr_all()
                .contains("out of file descriptors")
                .then_some(()))
        },
    )
    .await?;
    // An open connection keeps working meanwhile.
    jobq.enqueue(spec("during")).await?;
    drop(idle);
    // And once the idle ones are gone, new clients get in again.
    let recovered = eventually(LONG, "a new client to get an answer", || async {
        let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(5), server.client()).await
        else {
            return Ok(None);
        };
        Ok(
            tokio::time::timeout(Duration::from_secs(5), client.enqueue(spec("after")))
                .await
                .ok()
                .and_then(Result::ok),
        )
    })
    .await?;
    ensure!(recovered.r#type == "after");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_at_once() -> Result<()> {
    let (server, _dir, _database) = server_with(
        &[
            "--max-connections-per-peer",
            "20",
            "--first-request-timeout",
            "30s",
        ],
        None,
    )
    .await?;
    let jobq = server.client().await?;
    let mut held = Vec::new();
    for _ in 0..19 {
        held.push(TcpStream::connect(server.addr()).await?);
    }
    // The 21st connection from this address is closed without a word.
    let over = TcpStream::connect(server.addr()).await?;
    tokio::time::timeout(LONG, closed_by_server(over))
        .await
        .context("the connection over the limit stayed open")??;
    ensure!(
        server.stderr_all().contains("connection limit reached"),
        "no log line: {}",
        server.stderr_tail()
    );
    // Those already in keep working.
    jobq.enqueue(spec("inside")).await?;
    drop(held);
    Ok(())
}
