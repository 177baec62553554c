//! The jobq queue server: the `jobq.v1` gRPC API over a job store, with the
//! lifecycle rules in `domain`, storage in `store`, handlers in `grpc`.

mod app;
mod auth;
mod background;
mod cli;
pub mod config;
mod dashboard;
pub mod domain;
#[cfg(test)]
mod fuzz;
mod grpc;
mod logs;
mod net;
mod store;
mod telemetry;
#[cfg(test)]
mod testkit;
pub mod tls;

pub use app::{App, RunningServer};
pub use cli::run_cli;
pub use config::Config;
pub use store::{DatabaseKind, hot_queries};
