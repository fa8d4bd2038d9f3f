//! Compiles the protobuf API with protox (pure Rust, so no system protoc is needed) and
//! writes the descriptor set the reflection service serves.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "flotilla/v1/common.proto",
        "flotilla/v1/produce.proto",
        "flotilla/v1/fetch.proto",
        "flotilla/v1/admin.proto",
        "flotilla/v1/cluster.proto",
        "flotilla/v1/group.proto",
        "raft/v1/raft.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("flotilla_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    Ok(())
}
