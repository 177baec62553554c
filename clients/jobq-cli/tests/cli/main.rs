//! The `jobq` binary and the built-in job types against a real server in
//! this process: one test binary, one module per subject.

mod bench;
mod logs;
mod support;
mod unreachable;
mod up;
mod watch;
mod worker_types;
