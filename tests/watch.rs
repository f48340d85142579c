//! Watch end to end: a real `cairn` process and the `etcd-client` crate.

mod common;

use std::time::Duration;

use common::Node;
use etcd_client::{EventType, GetOptions, WatchFilterType, WatchOptions, WatchResponse};
use tokio::time::timeout;

/// The next response after the `created` one.
async fn next(stream: &mut etcd_client::WatchStream) -> WatchResponse {
    loop {
        let r = timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("watch response in time")
            .expect("stream open")
            .expect("a response");
        if !r.created() {
            return r;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_history_prev_kv_and_filters() {
    let node = Node::start();
    let mut c = node.client().await;
    c.put("w/a", "1", None).await.unwrap(); // 2
    c.put("w/a", "2", None).await.unwrap(); // 3
    c.delete("w/a", None).await.unwrap(); // 4

    // History from revision 2 with previous versions.
    let mut s = c
        .watch(
            "w/",
            Some(WatchOptions::new().with_prefix().with_start_revision(2).with_prev_key()),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let r = next(&mut s).await;
        seen.extend(r.events().iter().cloned());
    }
    assert_eq!(seen[0].event_type(), EventType::Put);
    assert!(seen[0].prev_kv().is_none(), "a create has no previous version");
    assert_eq!(seen[1].prev_kv().unwrap().value(), b"1");
    assert_eq!(seen[2].event_type(), EventType::Delete);
    let deleted = seen[2].kv().unwrap();
    assert_eq!(
        (deleted.mod_revision(), deleted.value()),
        (4, &b""[..]),
        "a delete carries key and revision only"
    );
    assert_eq!(seen[2].prev_kv().unwrap().value(), b"2");

    // Live, with NOPUT.
    let mut s2 = c
        .watch(
            "w/",
            Some(WatchOptions::new().with_prefix().with_filters([WatchFilterType::NoPut])),
        )
        .await
        .unwrap();
    c.put("w/b", "x", None).await.unwrap(); // 5
    c.delete("w/b", None).await.unwrap(); // 6
    let r = next(&mut s2).await;
    assert_eq!(r.events().len(), 1);
    assert_eq!(r.events()[0].event_type(), EventType::Delete);
    assert_eq!(r.header().unwrap().revision(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_revision_is_one_response_and_compaction_cancels() {
    let node = Node::start();
    let mut c = node.client().await;
    let mut s = c.watch("k", Some(WatchOptions::new().with_prefix())).await.unwrap();
    let txn = etcd_client::Txn::new().and_then(
        (0..5)
            .map(|i| etcd_client::TxnOp::put(format!("k{i}"), "v", None))
            .collect::<Vec<_>>(),
    );
    c.txn(txn).await.unwrap();
    let r = next(&mut s).await;
    assert_eq!(r.events().len(), 5, "a txn's events arrive together");
    assert!(r.events().iter().all(|e| e.kv().unwrap().mod_revision() == 2));

    for i in 0..5 {
        c.put("k0", format!("{i}"), None).await.unwrap();
    }
    c.compact(5, None).await.unwrap();
    let mut s = c
        .watch("k", Some(WatchOptions::new().with_prefix().with_start_revision(3)))
        .await
        .unwrap();
    let r = next(&mut s).await;
    assert!(r.canceled());
    assert_eq!(r.compact_revision(), 5);
    // Exactly at the compacted revision is still allowed.
    let mut s = c
        .watch("k0", Some(WatchOptions::new().with_start_revision(5)))
        .await
        .unwrap();
    let r = next(&mut s).await;
    assert_eq!(r.events()[0].kv().unwrap().mod_revision(), 5);
}

/// A progress request sent while a watcher of the stream is still replaying history.
///
/// DELIBERATE DIFFERENCE FROM ETCD: etcd 3.5 answers a `WatchProgressRequest` only if every
/// watcher of the stream is synced at that moment and otherwise drops it (clients ask again;
/// the go suite's `request-progress` check repeats its request for that reason). Cairn
/// queues the request and answers it as soon as every watcher of the stream is synced. So
/// the first assertion below (the one request is answered at all) holds for Cairn only;
/// against etcd this request could go unanswered.
///
/// Everything else asserted here is etcd's own guarantee, the one a client relies on: a
/// progress response at revision R means every watcher of the stream has been sent all of
/// its events up to R, so none of them arrives after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_request_reports_a_delivered_revision() {
    let node = Node::start();
    let mut c = node.client().await;
    // (revision, key) of every write; revisions 2..=11 before the watchers exist.
    let mut writes: Vec<(i64, String)> = Vec::new();
    for i in 0..10 {
        let key = format!("p{i}");
        let r = c.put(key.clone(), "v", None).await.unwrap();
        writes.push((r.header().unwrap().revision(), key));
    }
    assert_eq!(writes.last().unwrap().0, 11);

    // One stream, two watchers: `p` replays from revision 1 (catching up when the request
    // arrives), `q` starts at revision 12 (whether created before or after the writes below).
    let mut s = c
        .watch("p", Some(WatchOptions::new().with_prefix().with_start_revision(1)))
        .await
        .unwrap();
    s.watch("q", Some(WatchOptions::new().with_prefix().with_start_revision(12)))
        .await
        .unwrap();
    s.request_progress().await.unwrap();
    // More writes to both ranges while the request is pending (another connection).
    let mut w = node.client().await;
    for i in 0..5 {
        for prefix in ["p", "q"] {
            let key = format!("{prefix}x{i}");
            let r = w.put(key.clone(), "v", None).await.unwrap();
            writes.push((r.header().unwrap().revision(), key));
        }
    }
    let expected = |prefix: &str| -> Vec<i64> {
        writes
            .iter()
            .filter(|(_, k)| k.starts_with(prefix))
            .map(|(r, _)| *r)
            .collect()
    };
    let (want_p, want_q) = (expected("p"), expected("q"));

    // watch_id -> the prefix it watches, from the created responses (ids 0 and 1, in order).
    let mut ids: Vec<i64> = Vec::new();
    let mut got: std::collections::HashMap<i64, Vec<i64>> = Default::default();
    let mut progress_rev = None;
    while progress_rev.is_none() || got.values().map(Vec::len).sum::<usize>() < want_p.len() + want_q.len() {
        let r = timeout(Duration::from_secs(10), s.message())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no response in 10 s (progress answered: {progress_rev:?}; events so far: {got:?}); \
                     cairn must answer the queued progress request"
                )
            })
            .expect("stream open")
            .expect("a response");
        if r.created() {
            ids.push(r.watch_id());
            continue;
        }
        assert!(!r.canceled(), "unexpected cancel: {r:?}");
        if r.events().is_empty() {
            assert_eq!(r.watch_id(), -1, "a requested progress response has watch_id -1");
            assert!(progress_rev.is_none(), "one request, one progress response");
            let rev = r.header().unwrap().revision();
            // The replay had been caught up to at least the revision current at the request.
            assert!(rev >= 11, "progress at {rev}, below the revision at the request");
            // etcd's guarantee: every watcher was sent all its events <= rev before this.
            for (i, want) in [&want_p, &want_q].into_iter().enumerate() {
                let id = *ids.get(i).expect("both watchers created before a progress response");
                let sent: Vec<i64> = got.get(&id).cloned().unwrap_or_default();
                let due: Vec<i64> = want.iter().copied().filter(|r| *r <= rev).collect();
                assert_eq!(
                    sent.iter().copied().filter(|r| *r <= rev).collect::<Vec<_>>(),
                    due,
                    "progress at {rev} before watcher {id} was sent all its events up to it"
                );
            }
            progress_rev = Some(rev);
            continue;
        }
        for e in r.events() {
            let rev = e.kv().unwrap().mod_revision();
            if let Some(p) = progress_rev {
                assert!(rev > p, "event at {rev} arrived after a progress response at {p}");
            }
            got.entry(r.watch_id()).or_default().push(rev);
        }
    }
    assert_eq!(ids.len(), 2);
    assert_eq!(got[&ids[0]], want_p, "watcher p: every event once, in order");
    assert_eq!(got[&ids[1]], want_q, "watcher q: every event once, in order");
}

async fn write_events(c: &mut etcd_client::Client, txns: i64, per_txn: i64, value: &str) {
    for _ in 0..txns {
        let ops: Vec<etcd_client::TxnOp> = (0..per_txn)
            .map(|i| etcd_client::TxnOp::put(format!("slow/{:03}", i), value.to_string(), None))
            .collect();
        c.txn(etcd_client::Txn::new().and_then(ops)).await.unwrap();
    }
}

/// One watcher stops reading while 200,000 events are written: the server's memory stays
/// bounded (the watcher falls back to reading history), and when the client reads again
/// every event arrives, in order, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_bounded_and_loses_nothing() {
    const EVENTS: i64 = 200_000;
    const PER_TXN: i64 = 100;
    const VALUE_BYTES: usize = 1000;
    let node = Node::start();
    let mut c = node.client().await;
    let value = "x".repeat(VALUE_BYTES);
    // Warm-up with nobody watching: RocksDB's memtables and caches reach their budgets, so
    // what grows afterwards is what the stalled watcher costs.
    write_events(&mut c, EVENTS / PER_TXN, PER_TXN, &value).await;
    let base_rev = 1 + EVENTS / PER_TXN;
    let rss_before = rss_kib(&node);

    // Its own connection, as a separate client process would have.
    let mut watcher_client = node.client().await;
    let mut s = watcher_client
        .watch("slow/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let mut peak = rss_before;
    let started = std::time::Instant::now();
    // RSS growth after each twentieth of the stalled phase.
    let mut series = Vec::new();
    for _ in 0..20 {
        write_events(&mut c, EVENTS / PER_TXN / 20, PER_TXN, &value).await;
        let rss = rss_kib(&node);
        series.push(rss - rss_before);
        peak = peak.max(rss);
    }
    let written = started.elapsed();
    // Unread, the events are ~190 MiB of values; a queue per stream would hold all of it.
    // What the server may hold instead: the stream's hub queue (64 revisions, ~13 MiB here
    // with previous versions), 16 buffered responses, HTTP/2 windows, and RocksDB within its
    // budgets (32 MiB of memtables, 32 MiB of block cache). A heap profile (valgrind
    // massif) of this scenario shows Rust allocations flat at ~10 MiB; the rest of the RSS
    // growth is RocksDB and allocator fragmentation.
    let growth_kib = peak - rss_before;
    eprintln!(
        "slow consumer: server RSS {rss_before} KiB after warm-up, peak {peak} KiB (+{growth_kib} KiB) while \
         {EVENTS} unread events ({} MiB of values) were written in {written:?}",
        (EVENTS as usize * VALUE_BYTES) >> 20
    );
    eprintln!("slow consumer: RSS growth per twentieth (KiB): {series:?}");
    assert!(growth_kib < 96 * 1024, "server grew by {growth_kib} KiB");
    // And it does not scale with what is unread: the last three quarters of the stall
    // (~140 MiB more unread) add little once the budgets above are filled.
    let late = series[series.len() - 1] - series[series.len() / 4 - 1];
    assert!(
        late < 48 * 1024,
        "server kept growing: +{late} KiB over the last 150,000 events"
    );

    let started = std::time::Instant::now();
    let mut got = 0i64;
    while got < EVENTS {
        let r = next(&mut s).await;
        for e in r.events() {
            let kv = e.kv().unwrap();
            assert_eq!(
                kv.mod_revision(),
                base_rev + 1 + got / PER_TXN,
                "event {got} out of order"
            );
            assert_eq!(kv.key(), format!("slow/{:03}", got % PER_TXN).as_bytes());
            got += 1;
        }
    }
    let read = started.elapsed();
    eprintln!(
        "slow consumer: read back {EVENTS} events in {read:?} ({:.0} events/s)",
        EVENTS as f64 / read.as_secs_f64()
    );
    let all = c
        .get("slow/", Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .unwrap();
    assert_eq!(all.header().unwrap().revision(), base_rev + EVENTS / PER_TXN);
}

fn rss_kib(node: &Node) -> i64 {
    let pid = node.child.as_ref().expect("running").id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A revision too large for the hub's queues (256 KiB a slot) reaches live watchers through
/// storage, exactly as etcd sends it live: all its events in one response, with previous
/// versions and its own revision in the header, in order with the revisions around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_too_large_to_queue_is_delivered_whole() {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let node = Node::start();
    let mut c = node.client().await;
    c.put("big/a", "old", None).await.unwrap(); // 2
    let mut s = c
        .watch("big/", Some(WatchOptions::new().with_prefix().with_prev_key()))
        .await
        .unwrap();
    let value = vec![b'v'; 400 << 10];
    let ops: Vec<TxnOp> = ["big/a", "big/b", "big/c"]
        .iter()
        .map(|k| TxnOp::put(*k, value.clone(), None))
        .collect();
    let txn = Txn::new()
        .when([Compare::version("big/a", CompareOp::Greater, 0)])
        .and_then(ops);
    c.txn(txn).await.unwrap(); // 3: 1.2 MiB of events
    c.put("big/d", "small", None).await.unwrap(); // 4

    let r = next(&mut s).await;
    let keys: Vec<(&[u8], i64, usize)> = r
        .events()
        .iter()
        .map(|e| {
            let kv = e.kv().unwrap();
            (kv.key(), kv.mod_revision(), kv.value().len())
        })
        .collect();
    assert_eq!(
        keys,
        vec![
            (&b"big/a"[..], 3, value.len()),
            (&b"big/b"[..], 3, value.len()),
            (&b"big/c"[..], 3, value.len())
        ]
    );
    assert_eq!(r.events()[0].prev_kv().unwrap().value(), b"old");
    // As etcd sends it live: the header names the revision itself, not a later one.
    assert_eq!(r.header().unwrap().revision(), 3);
    let r = next(&mut s).await;
    assert_eq!(r.events().len(), 1);
    assert_eq!(r.events()[0].kv().unwrap().mod_revision(), 4);
}
