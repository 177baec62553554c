//! `jobq-server`: see `jobq_server::run_cli`.

/// mimalloc: the writer thread and the request handlers allocate and free
/// many small values per job (rows, statement values, protobuf messages);
/// mimalloc does that for 12–17 % less server CPU per job than glibc's
/// allocator (BENCHMARKS.md, the fifth round).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    jobq_server::run_cli()
}
