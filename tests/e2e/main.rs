//! End-to-end tests of jobq: real servers on 127.0.0.1:0, driven through the
//! public gRPC API only. One test binary, one module per area.

mod auth;
mod cancellation;
mod cli;
mod connections;
mod contract;
mod dashboard_streams;
mod disk;
mod foreign_clients;
mod grpc_web;
mod history;
mod leasing;
mod lifecycle;
mod limits;
mod listing;
mod logs;
mod media;
mod observability;
mod pg_restart;
mod process;
mod query_plans;
mod readme_examples;
mod replicas;
mod reports;
mod retries;
mod search;
mod search_perf;
mod surfaces;
mod throughput;
mod tls;
mod validation;
mod watch;
mod worker;
mod worker_metrics;
mod worker_processes;

use std::path::Path;

/// The real server binary, built by cargo for this test run.
fn server_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_jobq-test-server"))
}
