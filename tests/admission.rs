//! Memory stays bounded under a greedy client (issue 17, item 4): a real `cairn` process,
//! its resident set read from `/proc/<pid>/status` while one client opens 10,000 watches,
//! or sends 1 GiB of puts as fast as it can.
//!
//! The bounds are stated in each test's comment, with the figures measured when they were
//! chosen.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Node;
use etcd_client::EventType;

/// The server's resident set in KiB (0 once it is gone).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Samples a process's RSS every 100 ms on its own thread, keeping the peak.
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(u64, usize)>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut peak, mut samples) = (0, 0);
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                samples += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            (peak.max(rss_kib(pid)), samples + 1)
        });
        RssSampler {
            stop,
            thread: Some(thread),
        }
    }

    /// The peak RSS in KiB and how many samples it is the maximum of.
    fn finish(mut self) -> (u64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("sampler running")
            .join()
            .expect("sampler thread")
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn server_pid(node: &Node) -> u32 {
    node.child.as_ref().expect("server running").id()
}

/// 10,000 watches, 2,500 on each of four streams of one connection, each on its own key;
/// then one put to every 50th key, whose events must each arrive once, on the stream and
/// for the key watched.
///
/// Bounds: the server's RSS stays under 96 MiB at every 100 ms sample, and the 10,000
/// watches add under 32 MiB to the idle server's. Measured when chosen (5 runs, 2 cores):
/// idle 29–32 MiB, +4–8 MiB once all are created (under 1 KiB per watch), peak 37–40 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_watches_stay_bounded() {
    const STREAMS: usize = 4;
    const PER_STREAM: usize = 2_500;
    const EVERY: usize = 50;
    const BOUND_KIB: u64 = 96 * 1024;
    const GROWTH_KIB: u64 = 32 * 1024;
    let node = Node::start();
    let pid = server_pid(&node);
    let client = node.client().await;
    let idle = rss_kib(pid);
    let sampler = RssSampler::start(pid);
    let started = Instant::now();

    let key = |s: usize, i: usize| format!("adm-watch/{s}/{i:05}");
    let created = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    let mut readers = Vec::new();
    for s in 0..STREAMS {
        let mut c = client.clone();
        let (sender, mut responses) = c.watch(key(s, 0), None).await.expect("watch stream").split();
        senders.push(sender);
        let created = created.clone();
        // Read as the watches are created: unread responses would stop the server reading
        // requests, and the client's request queue would fill.
        readers.push(tokio::spawn(async move {
            let mut events = Vec::new();
            while events.len() < PER_STREAM / EVERY {
                let r = tokio::time::timeout(Duration::from_secs(30), responses.message())
                    .await
                    .expect("a watch response in time")
                    .expect("watch stream open")
                    .expect("a watch response");
                if r.created() {
                    created.fetch_add(1, Ordering::Relaxed);
                }
                assert!(!r.canceled(), "watch {} canceled: {}", r.watch_id(), r.cancel_reason());
                for e in r.events() {
                    assert_eq!(e.event_type(), EventType::Put);
                    let kv = e.kv().expect("event with a key");
                    events.push(String::from_utf8_lossy(kv.key()).into_owned());
                }
            }
            events
        }));
    }
    for (s, sender) in senders.iter_mut().enumerate() {
        for i in 1..PER_STREAM {
            sender.watch(key(s, i), None).await.expect("create watch");
        }
    }
    while created.load(Ordering::Relaxed) < STREAMS * PER_STREAM {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "only {} of {} watches created",
            created.load(Ordering::Relaxed),
            STREAMS * PER_STREAM
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let watching = rss_kib(pid);
    let creation = started.elapsed();

    let mut writer = node.client().await;
    let mut expected: Vec<BTreeSet<String>> = vec![BTreeSet::new(); STREAMS];
    for (s, keys) in expected.iter_mut().enumerate() {
        for i in (0..PER_STREAM).step_by(EVERY) {
            writer.put(key(s, i), "v", None).await.expect("put to a watched key");
            keys.insert(key(s, i));
        }
    }
    for (s, reader) in readers.into_iter().enumerate() {
        let events = reader.await.expect("watch reader");
        let got: BTreeSet<String> = events.iter().cloned().collect();
        assert_eq!(got.len(), events.len(), "stream {s} got an event twice");
        assert_eq!(got, expected[s], "stream {s} got other events than its puts");
    }
    let (peak, samples) = sampler.finish();
    eprintln!(
        "10,000 watches: RSS idle {idle} KiB, {watching} KiB with all created ({creation:?}), \
         peak {peak} KiB over {samples} samples; {} events delivered",
        STREAMS * PER_STREAM / EVERY
    );
    assert!(
        peak < BOUND_KIB,
        "server RSS peaked at {peak} KiB with 10,000 watches (bound {BOUND_KIB} KiB)"
    );
    assert!(
        watching.saturating_sub(idle) < GROWTH_KIB,
        "10,000 watches took the server from {idle} KiB to {watching} KiB (growth bound {GROWTH_KIB} KiB)"
    );
    // Open until here: the watches exist for every measurement above.
    drop(senders);
}

/// 4,096 puts of 256 KiB values (1 GiB), 64 in flight at once on four connections, as fast
/// as the server answers; RSS sampled every 100 ms.
///
/// Bound: peak RSS under 320 MiB. Measured when chosen (5 runs, 2 cores, 39–86 MiB/s):
/// idle 29–32 MiB, peak 144–163 MiB, 121–159 MiB after. What the server may hold: 64
/// requests in flight (16 MiB of values), each in several copies (request, raft entry,
/// apply batch, RocksDB's write buffers), RocksDB's 32 MiB of memtables and 32 MiB of
/// block cache, and allocator slack. Until proposals in flight are bounded (admission
/// control), the peak follows what the client keeps in flight: with 512, it was 330 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gibibyte_of_puts_stays_bounded() {
    const PUTS: usize = 4_096;
    const VALUE_BYTES: usize = 256 << 10;
    const IN_FLIGHT: usize = 64;
    const CONNECTIONS: usize = 4;
    const BOUND_KIB: u64 = 320 * 1024;
    let node = Node::start();
    let pid = server_pid(&node);
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(node.client().await);
    }
    let idle = rss_kib(pid);
    let sampler = RssSampler::start(pid);
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let value = Arc::new(vec![b'x'; VALUE_BYTES]);
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|t| {
            let mut c = clients[t % CONNECTIONS].clone();
            let (next, value) = (next.clone(), value.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= PUTS {
                        return;
                    }
                    c.put(format!("adm-put/{i:05}"), value.as_slice(), None)
                        .await
                        .unwrap_or_else(|e| panic!("put {i}: {e}"));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("put task");
    }
    let elapsed = started.elapsed();
    let (peak, samples) = sampler.finish();
    let after = rss_kib(pid);
    eprintln!(
        "1 GiB of puts: {PUTS} x {} KiB, {IN_FLIGHT} in flight, in {elapsed:?} ({:.0} MiB/s); RSS idle \
         {idle} KiB, peak {peak} KiB over {samples} samples, {after} KiB after",
        VALUE_BYTES >> 10,
        (PUTS * VALUE_BYTES) as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
    );
    // Every put applied.
    let mut c = clients.remove(0);
    let count = c
        .get(
            "adm-put/",
            Some(etcd_client::GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count the puts");
    assert_eq!(count.count(), PUTS as i64);
    assert!(
        peak < BOUND_KIB,
        "server RSS peaked at {peak} KiB under 1 GiB of puts (bound {BOUND_KIB} KiB)"
    );
}
