//! The binary's command line: etcd's flags, clear errors, `--version`.

use std::process::Command;

fn cairn(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .output()
        .expect("run cairn")
}

#[test]
fn version_names_cairn_and_etcd_api() {
    let out = cairn(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cairn Version:"), "{text}");
    assert!(text.contains("etcd Version: 3.6"), "{text}");
    assert!(cairn(&["-version"]).status.success());
}

#[test]
fn bad_flags_fail_clearly() {
    for args in [
        &["--no-such-flag"][..],
        &["--heartbeat-interval", "often"],
        &["--initial-cluster-state", "maybe"],
        &["--listen-client-urls", "localhost:2379"],
    ] {
        let out = cairn(args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.is_empty() && !err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn env_vars_are_read() {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .env("ETCD_INITIAL_CLUSTER_STATE", "sideways")
        .output()
        .expect("run cairn");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sideways"));
}
