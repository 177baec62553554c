//! The gRPC surface: thin handlers over the domain, and the error mapping.

pub(crate) mod convert;
mod history;
pub mod limits;
mod queue_service;
mod status;
mod streams;
mod watch_lists;
mod worker_service;

pub use queue_service::QueueApi;
pub use streams::WatchPresence;
pub use worker_service::WorkerApi;

/// For the fuzz tests: a page token of any text gives a page request or
/// names `page_token` in its error; a token the server made comes back.
#[cfg(test)]
pub(crate) fn fuzz_page_token(token: &str) -> Result<(), proptest::test_runner::TestCaseError> {
    queue_service::fuzz_page_token(token)
}
