//! The jobq.v1 gRPC API, generated from `proto/jobq/v1/*.proto`.

#![allow(missing_docs, clippy::all)]

/// Package `jobq.v1`.
pub mod v1 {
    tonic::include_proto!("jobq.v1");
}

/// Encoded `FileDescriptorSet` of the API, for the reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/jobq_descriptor.bin"));
