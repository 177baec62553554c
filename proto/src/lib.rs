//! The jobq.v1 gRPC API, generated from `proto/jobq/v1/*.proto`.

#![allow(missing_docs, clippy::all)]

pub mod codec;

/// Package `jobq.v1`.
pub mod v1 {
    tonic::include_proto!("jobq.v1");
}

/// The standard `google.rpc` messages jobq sends (Status, ErrorInfo, ...).
pub use tonic_types::pb as rpc;

/// Encoded `FileDescriptorSet` of the API (with the `google.rpc` files its
/// errors use), for the reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/jobq_descriptor.bin"));
