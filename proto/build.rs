fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        return Err(
            "PROTOC is not set: run tests/setup.sh, which puts protoc in tools/protoc".into(),
        );
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Snapshot chunks are shared by every agent's stream without copying.
        .bytes(".quorate.agent.v1.SnapshotChunk.data")
        .compile_protos(&["proto/quorate/agent/v1/agent.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
