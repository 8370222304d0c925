//! Compiles every `.proto` under `proto/prexor/` with the vendored `protoc`, so building needs no
//! system package.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    // The directory too, so that a new .proto file triggers a rebuild.
    println!(
        "cargo:rerun-if-changed={}",
        root.join("prexor/v1").display()
    );
    let mut protos = Vec::new();
    for entry in std::fs::read_dir(root.join("prexor/v1"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "proto") {
            println!("cargo:rerun-if-changed={}", path.display());
            protos.push(path);
        }
    }
    protos.sort();

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(config, &protos, &[root])?;
    Ok(())
}
