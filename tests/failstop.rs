//! Fail-stop under injected faults: a fatal error at log append, at fsync or in apply (an
//! error or a panic) makes the member log it at `fatal` level, report NOT_SERVING, refuse
//! requests and exit with status 1 within a second; a restart then finds every write that
//! was acknowledged before the fault.
//!
//! Needs a binary with failpoints: `cargo test --release --features failpoints --test
//! failstop` (the target is skipped without the feature; `compat-tests/run` runs it).

mod common;

use std::time::{Duration, Instant};

use common::Node;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Puts allowed through before the failpoint fires: start-up's own appends and applies
/// (the membership and leader entries) stay well below it.
const PASSES: u32 = 20;

/// Reads the health service's pushes until the stream ends; every status seen, in order.
async fn health_statuses(endpoint: String) -> Vec<ServingStatus> {
    let channel = tonic::transport::Channel::from_shared(endpoint)
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to health");
    let mut client = HealthClient::new(channel);
    let mut stream = client
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .expect("health watch")
        .into_inner();
    let mut seen = Vec::new();
    while let Ok(Some(resp)) = stream.message().await {
        seen.push(ServingStatus::try_from(resp.status).unwrap_or(ServingStatus::Unknown));
    }
    seen
}

async fn fail_stop_case(failpoint: &str, action: &str) {
    let spec = format!("{failpoint}={PASSES}*off->{action}");
    let mut node = Node::start_with_env(&[("FAILPOINTS", &spec)]);
    let health = tokio::spawn(health_statuses(node.endpoint()));
    let mut c = node.client().await;

    let mut acked = Vec::new();
    let mut failed_at = None;
    for i in 0..(PASSES * 10) {
        let key = format!("k{i:04}");
        match c.put(key.clone(), format!("v{i}"), None).await {
            Ok(_) => acked.push(key),
            Err(e) => {
                eprintln!("{spec}: put {i} failed: {e}");
                failed_at = Some(Instant::now());
                break;
            }
        }
    }
    let failed_at = failed_at.unwrap_or_else(|| panic!("{spec}: no put failed"));
    assert!(!acked.is_empty(), "{spec}: the fault fired before any write");

    // Exits non-zero within a second of the fault.
    let mut child = node.child.take().expect("running");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            failed_at.elapsed() < Duration::from_secs(1),
            "{spec}: still running a second after the fault"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(1), "{spec}: exit status {status:?}");

    let seen = tokio::time::timeout(Duration::from_secs(5), health)
        .await
        .expect("health stream ended")
        .expect("health task");
    assert_eq!(seen.first(), Some(&ServingStatus::Serving), "{spec}: {seen:?}");
    assert_eq!(seen.last(), Some(&ServingStatus::NotServing), "{spec}: {seen:?}");

    let log = std::fs::read_to_string(&node.log).expect("log");
    let fatal = log
        .lines()
        .find(|l| l.contains(r#""level":"fatal""#))
        .unwrap_or_else(|| panic!("{spec}: no fatal line in the log:\n{log}"));
    eprintln!("{spec}: {fatal}");

    // A restart without the fault recovers every acknowledged write.
    node.env.clear();
    node.launch();
    let mut c = node.client().await;
    for key in &acked {
        let r = c.get(key.clone(), None).await.expect("get after restart");
        assert_eq!(r.kvs().len(), 1, "{spec}: acknowledged {key} lost");
    }
    eprintln!("{spec}: {} acknowledged puts recovered", acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_append_error_stops_the_member() {
    fail_stop_case("raft-log-append", "return").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_error_stops_the_member() {
    fail_stop_case("raft-log-fsync", "return").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_error_stops_the_member() {
    fail_stop_case("raft-apply", "return").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_apply_stops_the_member() {
    fail_stop_case("raft-apply", "panic").await;
}
