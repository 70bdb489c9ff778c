use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let proto = root.join("strata/v1/strata.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    tonic_prost_build::configure()
        // Payloads are `bytes::Bytes`: decoding a produce request or a fetched
        // batch slices the receive buffer instead of copying it.
        .bytes(".")
        .file_descriptor_set_path(out_dir.join("strata_v1_descriptor.bin"))
        .compile_protos(&[proto], std::slice::from_ref(&root))?;
    // The internal node-to-node Raft transport: generated apart, and left out
    // of the reflection descriptor (it is not a public API).
    let raft = root.join("strata/internal/v1/raft.proto");
    println!("cargo:rerun-if-changed={}", raft.display());
    tonic_prost_build::configure().bytes(".").compile_protos(&[raft], &[root])?;
    Ok(())
}
