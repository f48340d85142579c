//! kill -9 under a write load: every acknowledged put survives, with its revision.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Node;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_puts_survive_kill_9() {
    let mut node = Node::start();
    let acked: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut c = node.client().await;
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            // Bounded: stops at the first error (the kill) or after 100,000 puts.
            for i in 0..100_000 {
                let key = format!("w{w}/{i:06}");
                match c.put(key.clone(), format!("value-{i}"), None).await {
                    Ok(resp) => {
                        let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
                        acked.lock().unwrap().push((key, rev));
                    }
                    Err(_) => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.kill9();
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 50, "too few writes before the kill: {}", acked.len());

    node.launch();
    let mut c = node.client().await;
    for (key, rev) in &acked {
        let r = c.get(key.clone(), None).await.unwrap();
        let kv = r.kvs().first().unwrap_or_else(|| panic!("acknowledged {key} lost"));
        assert_eq!(kv.mod_revision(), *rev, "{key} has another revision");
    }
    // Revisions stay dense: nothing applied twice, nothing skipped.
    let all = c
        .get(
            "w",
            Some(etcd_client::GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    let current = all.header().unwrap().revision();
    assert_eq!(current - 1, all.count(), "every revision is one put");
    eprintln!(
        "{} acknowledged puts survived kill -9; {} applied in all",
        acked.len(),
        all.count()
    );
}
