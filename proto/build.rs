//! Compiles `stackpin/v1/*.proto` with the vendored protoc, so a build needs
//! no system protoc.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=stackpin");

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // Artifact chunks travel as `Bytes`, sliced without copying.
    config.bytes(["."]);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("stackpin_descriptor.bin"))
        .compile_with_config(
            config,
            &[PathBuf::from("stackpin/v1/registry.proto")],
            &[PathBuf::from("."), well_known],
        )?;
    Ok(())
}
