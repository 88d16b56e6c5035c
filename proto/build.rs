//! Compiles `stackpin/v1/*.proto` with the vendored protoc, so a build needs
//! no system protoc.
//!
//! Two passes: the messages and the server, whose codec turns undecodable
//! requests into INVALID_ARGUMENT (`src/codec.rs`), then the client alone,
//! on tonic's own codec and the first pass's messages.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [PathBuf::from("stackpin/v1/registry.proto")];
    let includes = [PathBuf::from("."), well_known];
    println!("cargo:rerun-if-changed=stackpin");

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(&protoc);
    // Artifact chunks travel as `Bytes`, sliced without copying.
    config.bytes(["."]);
    tonic_prost_build::configure()
        .build_client(false)
        .codec_path("crate::codec::RequestCodec")
        .file_descriptor_set_path(out_dir.join("stackpin_descriptor.bin"))
        .compile_with_config(config, &protos, &includes)?;

    let client_dir = out_dir.join("client");
    std::fs::create_dir_all(&client_dir)?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(&protoc);
    tonic_prost_build::configure()
        .build_server(false)
        .out_dir(&client_dir)
        .extern_path(".stackpin.v1", "crate::v1")
        .compile_with_config(config, &protos, &includes)?;
    Ok(())
}
