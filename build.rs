use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc, so a fresh machine needs nothing beyond cargo.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let include = protoc_bin_vendored::include_path()?;

    let root = PathBuf::from("proto");
    let files = [
        "etcd/api/etcdserverpb/rpc.proto",
        "etcd/server/etcdserver/api/v3election/v3electionpb/v3election.proto",
        "etcd/server/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
        "cairn/raftpb.proto",
    ];
    let paths: Vec<PathBuf> = files.iter().map(|f| root.join(f)).collect();
    for path in &paths {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Watch fan-out hands one event to many watchers and ranges move values from
        // storage to the response: `Bytes` makes those copies reference counts.
        .bytes(".mvccpb.KeyValue")
        .compile_protos(&paths, &[root, include])?;
    Ok(())
}
