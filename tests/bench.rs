//! `cairn bench` end to end: the built binary's put, range, list, watch-fanout and ready
//! workloads against a real `cairn` server, their `--json` summaries, and the keys they wrote
//! read back with etcd-client; `plot` on a results file.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Node;
use etcd_client::GetOptions;

/// Runs `cairn bench ARGS` against `endpoint`; returns (exit status, stdout, stderr).
fn bench(endpoint: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("bench")
        .args(["--endpoints", endpoint])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cairn bench");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for cairn bench") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cairn bench {args:?} did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code(), out.join().unwrap(), err.join().unwrap())
}

/// The first (top-level: nested reports come last) number named `name` in a JSON object.
fn field(json: &str, name: &str) -> f64 {
    let tag = format!("\"{name}\":");
    let at = json.find(&tag).unwrap_or_else(|| panic!("no {name} in {json}")) + tag.len();
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|e| panic!("{name} is not a number in {json}: {e}"))
}

/// Runs a `--json` benchmark and checks its summary: `count` requests, no error, a rate.
fn run_json(endpoint: &str, args: &[&str], count: u64) -> String {
    let (code, out, err) = bench(endpoint, args);
    assert_eq!(
        code,
        Some(0),
        "cairn bench {args:?} failed:\nstdout: {out}\nstderr: {err}"
    );
    let json = out.trim();
    assert!(
        json.starts_with('{') && json.ends_with('}') && json.lines().count() == 1,
        "stdout is not one JSON object: {out}"
    );
    assert_eq!(field(json, "count"), count as f64, "{json}");
    assert_eq!(field(json, "errors"), 0.0, "{json}");
    assert!(field(json, "requests_per_sec") > 0.0, "{json}");
    for f in ["total", "average", "p50", "p90", "p99", "p99_9"] {
        assert!(field(json, f) > 0.0, "{f} in {json}");
    }
    assert!(field(json, "p50") <= field(json, "p99"), "{json}");
    json.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_range_and_list_against_a_real_server() {
    let node = Node::start();
    let ep = node.endpoint();
    let mut client = node.client().await;

    // put: 200 puts, 4 clients over 2 connections, all to etcd's one default key (the
    // varint of 0 in 8 bytes): it ends at version 200.
    let json = run_json(
        &ep,
        &[
            "put",
            "--total",
            "200",
            "--clients",
            "4",
            "--conns",
            "2",
            "--json",
            "--no-progress",
        ],
        200,
    );
    assert!(json.starts_with("{\"benchmark\":\"put\","), "{json}");
    let got = client.get(vec![0u8; 8], None).await.unwrap();
    assert_eq!(got.kvs().len(), 1);
    assert_eq!(got.kvs()[0].version(), 200, "every put was applied");
    assert_eq!(got.kvs()[0].value().len(), 8, "etcd's default --val-size");

    // range: serializable gets of one key.
    client.put("bench-range-key", "v", None).await.unwrap();
    run_json(
        &ep,
        &[
            "range",
            "bench-range-key",
            "--total",
            "100",
            "--consistency",
            "s",
            "--json",
            "--no-progress",
        ],
        100,
    );

    // list: 1200 keys preloaded, then 100 (the default --total) paginated lists.
    let json = run_json(
        &ep,
        &[
            "list",
            "--key-count",
            "1200",
            "--page-size",
            "500",
            "--json",
            "--no-progress",
        ],
        100,
    );
    assert_eq!(field(&json, "keys_per_list"), 1200.0, "{json}");
    assert_eq!(field(&json, "pages_per_list"), 3.0, "{json}");
    let page = &json[json.find("\"page\":").expect("a page report")..];
    assert_eq!(field(page, "count"), 300.0, "{json}");
    let listed = client
        .get(
            "/registry/cairn-bench/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(listed.count(), 1200);

    // The text report is etcd's.
    let (code, out, _) = bench(&ep, &["range", "bench-range-key", "--total", "20", "--no-progress"]);
    assert_eq!(code, Some(0));
    assert!(
        out.starts_with("bench with linearizable range\n\nSummary:\n  Total:\t"),
        "{out}"
    );
    for line in [
        "  Requests/sec:\t",
        "\nResponse time histogram:\n",
        "\nLatency distribution:\n",
        "  50% in ",
    ] {
        assert!(out.contains(line), "{line:?} not in {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_preloads_by_put_or_by_txn() {
    let node = Node::start();
    let ep = node.endpoint();
    let mut client = node.client().await;

    // Preload only (no list), one Put a key and 40 keys a Txn: every key arrives.
    for (prefix, ops) in [("/one/", "1"), ("/txn/", "40")] {
        let (code, out, err) = bench(
            &ep,
            &[
                "--clients",
                "4",
                "--json",
                "--no-progress",
                "list",
                "--key-count",
                "101",
                "--val-size",
                "16",
                "--prefix",
                prefix,
                "--preload-txn-ops",
                ops,
                "--total",
                "0",
            ],
        );
        assert_eq!(code, Some(0), "{out} {err}");
        assert!(field(&out, "preload_seconds") > 0.0, "{out}");
        let got = client
            .get(prefix, Some(GetOptions::new().with_prefix().with_count_only()))
            .await
            .unwrap();
        assert_eq!(got.count(), 101, "{prefix} at {ops} a request");
    }
    // The Put preload made 101 revisions, the Txn one 3 (40 + 40 + 21 keys).
    let status = client.status().await.unwrap();
    assert_eq!(status.header().unwrap().revision(), 1 + 101 + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_fanout_and_ready_against_a_real_server() {
    let node = Node::start();
    let ep = node.endpoint();

    // 2x5 prefix watchers and 3x4 key watchers; each of 24 puts is an event for the 10
    // prefix watchers and for its key's one watcher.
    let json = run_json(
        &ep,
        &[
            "--clients",
            "2",
            "--conns",
            "2",
            "--json",
            "--no-progress",
            "watch-fanout",
            "--prefix-streams",
            "2",
            "--prefix-watchers-per-stream",
            "5",
            "--key-streams",
            "3",
            "--key-watchers-per-stream",
            "4",
            "--put-total",
            "24",
        ],
        24 * 11,
    );
    assert!(json.starts_with("{\"benchmark\":\"watch-fanout\","), "{json}");
    assert_eq!(field(&json, "watchers"), 22.0, "{json}");
    let puts = &json[json.find("\"put\":").expect("a put report")..];
    assert_eq!(field(puts, "count"), 24.0, "{json}");

    // ready: a serving server answers the first attempt.
    let json = run_json(&ep, &["--json", "ready"], 1);
    assert_eq!(field(&json, "attempts"), 1.0, "{json}");
    assert!(field(&json, "ready_seconds") < 5.0, "{json}");
}

#[test]
fn ready_gives_up_without_a_server() {
    // Nothing listens: the attempts fail until --timeout, then exit 1.
    let (code, _, err) = bench("127.0.0.1:1", &["ready", "--timeout", "300ms", "--interval", "10ms"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("127.0.0.1:1 not serving after"), "{err}");
}

#[test]
fn plot_draws_both_servers() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("benchmarks.json");
    std::fs::write(
        &input,
        r#"{"workloads": {"put-1": {"clients": 1}, "put-64": {"clients": 64}},
            "runs": [{"workload": "put-1", "server": "etcd", "status": "ok", "rps": 1000, "p99_ms": 4},
                     {"workload": "put-64", "server": "etcd", "status": "ok", "rps": 7000, "p99_ms": 28},
                     {"workload": "put-1", "server": "cairn", "status": "ok", "rps": 800, "p99_ms": 7},
                     {"workload": "put-64", "server": "cairn", "status": "ok", "rps": 9000, "p99_ms": 20}]}"#,
    )
    .unwrap();
    let (t, p) = (dir.path().join("t.svg"), dir.path().join("p.svg"));
    let (code, out, err) = bench(
        "127.0.0.1:1",
        &[
            "plot",
            "--input",
            input.to_str().unwrap(),
            "--throughput-out",
            t.to_str().unwrap(),
            "--p99-out",
            p.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{out} {err}");
    for svg in [t, p] {
        let svg = std::fs::read_to_string(svg).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("etcd 3.5.16") && svg.contains("Cairn"),
            "{svg}"
        );
    }
}

#[test]
fn usage_errors_exit_2_without_a_server() {
    for args in [
        &["put", "--total", "many"][..],
        &["put", "--key-size", "1", "--key-space-size", "1000"],
        &["range"],
        &[],
    ] {
        let (code, out, err) = bench("127.0.0.1:1", args);
        assert_eq!(code, Some(2), "{args:?}: {out} {err}");
        assert!(err.contains("error:") || err.contains("Usage:"), "{args:?}: {err}");
    }
    // No server: a clear dial error, status 1.
    let (code, _, err) = bench("127.0.0.1:1", &["put", "--total", "1"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("dial error: 127.0.0.1:1"), "{err}");
}
