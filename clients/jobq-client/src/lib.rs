//! Rust SDK of jobq.
//!
//! Two halves over one connection:
//!
//! - [`Client`]: the producer and admin side, one typed method per
//!   `jobq.v1.JobQueueService` RPC, plus [`NewJob`] to build job specs.
//! - [`worker`]: the worker runtime. Register a [`Handler`] per job type, and
//!   [`Worker::run`] leases jobs (taking a concurrency slot *before* it leases),
//!   keeps every lease alive with one batched heartbeat loop, streams each
//!   job's log, reports results, survives panics and server outages, and shuts
//!   down gracefully.
//!
//! ```no_run
//! use jobq_client::{Client, ClientConfig, JobContext, JobResult, Shutdown, Worker, WorkerConfig, handler_fn};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::connect(ClientConfig::builder("http://127.0.0.1:50051").build()?)?;
//! let worker = Worker::new(client, WorkerConfig::builder().concurrency(4).build()?)
//!     .handler("greet", handler_fn(|ctx: JobContext| async move {
//!         let name: String = ctx.payload_field("name")?;
//!         ctx.log().stdout(format!("hello, {name}"));
//!         JobResult::Ok(serde_json::json!({ "greeted": name }))
//!     }));
//! worker.run(Shutdown::on_signals()?).await?;
//! # Ok(())
//! # }
//! ```
//!
//! The SDK reads no environment variables: everything comes through
//! [`ClientConfig`] and [`WorkerConfig`].

mod client;
mod config;
mod convert;
mod error;
mod spec;
pub mod worker;

pub use async_trait::async_trait;
pub use client::{Client, Enqueued};
pub use config::{ClientConfig, ClientConfigBuilder, DEFAULT_ENDPOINT, DEFAULT_MAX_MESSAGE_BYTES};
pub use convert::{
    json_object, json_value, proto_duration, proto_struct, proto_timestamp, proto_value,
    system_time,
};
pub use error::{ClientError, is_transient};
pub use spec::NewJob;
pub use worker::{
    Handler, JobContext, JobError, JobLogger, JobResult, ResultExt, Shutdown, StopCause, Worker,
    WorkerConfig, WorkerConfigBuilder, WorkerError, handler_fn,
};

/// The generated API, `jobq.v1`: request, response and message types.
pub use jobq_proto::v1 as pb;
