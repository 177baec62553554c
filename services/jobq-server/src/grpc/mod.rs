//! The gRPC surface: thin handlers over the domain, and the error mapping.

mod convert;
pub mod limits;
mod queue_service;
mod status;
mod streams;
mod worker_service;

pub use queue_service::QueueApi;
pub use streams::WatchPresence;
pub use worker_service::WorkerApi;
