//! How long a put waits while a large compaction runs (issue 17, item 3): a benchmark, not
//! part of the test run. Run it with
//!
//! ```text
//! cargo test --release --test compaction_stall -- --ignored --nocapture
//! ETCD_BIN=/path/to/etcd cargo test --release --test compaction_stall -- --ignored --nocapture
//! ```
//!
//! It writes 1,000,000 versions (10,000 keys, 100 versions each, in 1,000 txns of 1,000
//! puts), then keeps one client putting in a loop while another compacts everything but the
//! newest versions with `physical=true`, and reports the longest put and the p99 before and
//! during the compaction. With `ETCD_BIN` it measures that etcd too, with the same flags.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, Node};
use etcd_client::{Client, CompactionOptions, Txn, TxnOp};

const KEYS: usize = 10_000;
const VERSIONS: usize = 100;
const TXN_OPS: usize = 1_000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn measure(endpoint: String, name: &str) {
    let mut c = Client::connect([endpoint.clone()], None).await.expect("connect");
    let value = vec![b'v'; 32];
    let t0 = Instant::now();
    for round in 0..(KEYS * VERSIONS / TXN_OPS) {
        let base = (round * TXN_OPS) % KEYS;
        let ops: Vec<TxnOp> = (base..base + TXN_OPS)
            .map(|k| TxnOp::put(format!("stall/{k:05}"), value.clone(), None))
            .collect();
        c.txn(Txn::new().and_then(ops)).await.expect("txn");
    }
    let current = c
        .get("stall/", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();
    eprintln!(
        "{name}: wrote {} versions in {:?}; revision {current}",
        KEYS * VERSIONS,
        t0.elapsed()
    );

    let mut writer = Client::connect([endpoint], None).await.expect("connect");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let puts = tokio::spawn(async move {
        let mut lat = Vec::new();
        let mut i = 0u64;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) && i < 1_000_000 {
            let t = Instant::now();
            writer.put(format!("load/{}", i % 100), "x", None).await.expect("put");
            lat.push((Instant::now(), t.elapsed()));
            i += 1;
        }
        lat
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    c.compact(current, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let lat = puts.await.expect("put loop");
    let (mut before, mut during): (Vec<Duration>, Vec<Duration>) = (Vec::new(), Vec::new());
    for (at, d) in lat {
        if at < started {
            before.push(d);
        } else if at <= started + took {
            during.push(d);
        }
    }
    before.sort();
    during.sort();
    eprintln!(
        "{name}: compaction of {} versions took {took:?}; puts before: n={} p99={:?} max={:?}; during: n={} p99={:?} max={:?}",
        KEYS * (VERSIONS - 1),
        before.len(),
        percentile(&before, 0.99),
        before.last().copied().unwrap_or_default(),
        during.len(),
        percentile(&during, 0.99),
        during.last().copied().unwrap_or_default(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: minutes of writes"]
async fn put_latency_while_compacting_a_million_versions() {
    let node = Node::start_with(&["--max-txn-ops", "1000"]);
    measure(node.endpoint(), "cairn").await;
    drop(node);

    if let Ok(etcd) = std::env::var("ETCD_BIN") {
        let dir = tempfile::tempdir().expect("temp dir");
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{client}");
        let mut child: Child = Command::new(etcd)
            .args(["--data-dir", &dir.path().join("etcd").display().to_string()])
            .args(["--listen-client-urls", &endpoint, "--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-cluster", &format!("default=http://127.0.0.1:{peer}")])
            .args(["--max-txn-ops", "1000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcd");
        tokio::time::sleep(Duration::from_secs(2)).await;
        measure(endpoint, "etcd").await;
        let _ = child.kill();
        let _ = child.wait();
    }
}
