//! Compiles proto/jobq/v1/*.proto with protox (no system protoc) and writes the
//! descriptor set next to the generated code, for the reflection service.
//! google/rpc/*.proto are served by reflection too (so grpcurl can print error
//! details), but their Rust types come from tonic-types.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "jobq/v1/job.proto",
        "jobq/v1/queue_service.proto",
        "jobq/v1/worker_service.proto",
        "jobq/v1/admin.proto",
        "jobq/v1/event.proto",
        "jobq/v1/log.proto",
        "google/rpc/status.proto",
        "google/rpc/error_details.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("jobq_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .extern_path(".google.rpc", "::tonic_types::pb")
        .codec_path("crate::codec::JobqCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
