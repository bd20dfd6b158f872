//! Compiles `sipmba/v1/*.proto` with protox (pure Rust, no system `protoc`) and generates the
//! tonic/prost code into `OUT_DIR`, together with the encoded file descriptor set that the
//! servers hand to gRPC reflection. Every method uses the codec of `src/codec.rs`.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let dir = root.join("sipmba/v1");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "proto"))
        .collect();
    files.sort();
    println!("cargo:rerun-if-changed={}", dir.display());
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("sipmba_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Smaller stream buffers than tonic's default (src/codec.rs).
        .codec_path("crate::codec::SmallBuffers")
        .compile_fds(fds)?;
    Ok(())
}
