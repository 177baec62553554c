//! How the server is observed from outside: a span and a measurement per
//! RPC ([`rpc`]), spans of each job's life in its trace ([`lifecycle`]),
//! and the Prometheus metrics ([`metrics`]).

pub mod lifecycle;
pub mod metrics;
pub mod rpc;
