//! Harness of the jobq end-to-end tests: boots real servers on `127.0.0.1:0`
//! (in-process through [`jobq_server::App::start`], or as a process of the real
//! binary), hands out connected gRPC clients, and wraps the calls tests make
//! again and again ("enqueue this spec", "lease one job", "wait until the job
//! is queued") so each test reads as the scenario it checks.
//!
//! Waiting is never a bare sleep: a condition is polled with [`eventually`],
//! a long poll is awaited, and every wait has a bound.

mod client;
mod cluster;
mod database;
pub mod media;
mod process;
pub mod scrape;
mod server;
mod specs;
mod status;
pub mod tls;
mod wait;
pub mod worker_process;

pub use client::{JobqClient, LeasedJobExt, ReportResultExt, job_ids};
pub use cluster::Cluster;
pub use database::{Backend, TestDatabase};
pub use process::{ServerCommand, ServerProcess};
pub use server::{TestServer, settings};
pub use specs::{
    attempt_outcomes, duration, json, json_of, lease_request, millis, millis_opt, spec,
    timestamp_after, timestamp_from_millis, unix_millis_now,
};
pub use status::{expect_status, state_name};
pub use wait::{POLL_INTERVAL, bounded, eventually};

/// The generated API, `jobq.v1`.
pub use jobq_proto::v1 as pb;

/// The test OTLP collector.
pub use jobq_telemetry::collector as otlp;
