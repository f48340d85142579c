//! Leases end to end: a real `cairn` process driven by the `etcd-client` crate.

mod common;

use std::time::{Duration, Instant};

use common::{status_of, Node};
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, Txn,
    TxnOp, WatchOptions,
};
use tonic::Code;

async fn exists(c: &mut Client, key: &str) -> bool {
    c.get(key, None).await.unwrap().count() == 1
}

async fn revision(c: &mut Client) -> i64 {
    c.get("any", None).await.unwrap().header().unwrap().revision()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_attach_revoke_and_errors() {
    let node = Node::start();
    let mut c = node.client().await;

    let g = c.lease_grant(10, None).await.unwrap();
    let id = g.id();
    assert!(id > 0, "server-chosen IDs are positive");
    assert_eq!(g.ttl(), 10);

    let (code, msg) = status_of(
        c.lease_grant(10, Some(LeaseGrantOptions::new().with_id(id)))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, msg.as_str()),
        (Code::FailedPrecondition, "etcdserver: lease already exists")
    );
    let (code, msg) = status_of(c.lease_grant(9_000_000_001, None).await.unwrap_err());
    assert_eq!(
        (code, msg.as_str()),
        (Code::OutOfRange, "etcdserver: too large lease TTL")
    );
    let short = c.lease_grant(1, None).await.unwrap();
    assert_eq!(short.ttl(), 2, "raised to 1.5 election timeouts");
    let mine = c
        .lease_grant(30, Some(LeaseGrantOptions::new().with_id(0x1234)))
        .await
        .unwrap();
    assert_eq!(mine.id(), 0x1234);

    c.put("a", "1", Some(PutOptions::new().with_lease(id))).await.unwrap();
    c.put("b", "1", Some(PutOptions::new().with_lease(id))).await.unwrap();
    // Re-put keeping the lease; attach then detach another key.
    c.put("b", "2", Some(PutOptions::new().with_ignore_lease()))
        .await
        .unwrap();
    c.put("c", "1", Some(PutOptions::new().with_lease(id))).await.unwrap();
    c.put("c", "2", None).await.unwrap();
    // Moved to another lease.
    c.put("d", "1", Some(PutOptions::new().with_lease(id))).await.unwrap();
    c.put("d", "2", Some(PutOptions::new().with_lease(0x1234)))
        .await
        .unwrap();
    assert_eq!(c.get("b", None).await.unwrap().kvs()[0].lease(), id);
    assert_eq!(c.get("c", None).await.unwrap().kvs()[0].lease(), 0);

    let ttl = c
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(ttl.granted_ttl(), 10);
    assert!((9..=10).contains(&ttl.ttl()), "remaining {}", ttl.ttl());
    assert_eq!(ttl.keys(), &[b"a".to_vec(), b"b".to_vec()]);
    let all: Vec<i64> = c.leases().await.unwrap().leases().iter().map(|l| l.id()).collect();
    assert_eq!(all.len(), 3);
    assert!(all.contains(&id) && all.contains(&short.id()) && all.contains(&0x1234));

    let txn = Txn::new()
        .when([Compare::lease("a", CompareOp::Equal, id)])
        .and_then([TxnOp::put("t", "yes", None)]);
    assert!(c.txn(txn).await.unwrap().succeeded());

    let (code, msg) = status_of(
        c.put("x", "1", Some(PutOptions::new().with_lease(777)))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, msg.as_str()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );

    // Revocation deletes every attached key in one revision.
    let before = revision(&mut c).await;
    let r = c.lease_revoke(id).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), before + 1);
    assert!(!exists(&mut c, "a").await && !exists(&mut c, "b").await);
    assert!(exists(&mut c, "c").await && exists(&mut c, "d").await);
    // A lease without keys revokes without a new revision.
    let r = c.lease_revoke(short.id()).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), before + 1);

    let (code, msg) = status_of(c.lease_revoke(id).await.unwrap_err());
    assert_eq!(
        (code, msg.as_str()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );
    assert_eq!(c.lease_time_to_live(id, None).await.unwrap().ttl(), -1);
    // The server answers TTL 0 (compat-tests check the raw answer); this client turns it
    // into an error.
    assert!(
        matches!(
            c.lease_keep_alive(id).await,
            Err(etcd_client::Error::LeaseKeepAliveError(_))
        ),
        "an unknown lease must not be renewed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_revocation_at_one_revision() {
    let node = Node::start();
    let mut c = node.client().await;
    let id = c.lease_grant(60, None).await.unwrap().id();
    for k in ["w/1", "w/2", "w/3"] {
        c.put(k, "v", Some(PutOptions::new().with_lease(id))).await.unwrap();
    }
    let from = revision(&mut c).await + 1;
    let mut stream = c
        .watch(
            "w/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_prev_key()
                    .with_start_revision(from),
            ),
        )
        .await
        .unwrap();
    let rev = c.lease_revoke(id).await.unwrap().header().unwrap().revision();
    let mut deletes = Vec::new();
    while deletes.len() < 3 {
        let resp = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("delete events")
            .unwrap()
            .expect("an open stream");
        for e in resp.events() {
            assert_eq!(e.event_type(), EventType::Delete);
            let kv = e.kv().unwrap();
            assert_eq!(e.prev_kv().unwrap().lease(), id);
            deletes.push((kv.key().to_vec(), kv.mod_revision()));
        }
    }
    assert_eq!(
        deletes,
        vec![(b"w/1".to_vec(), rev), (b"w/2".to_vec(), rev), (b"w/3".to_vec(), rev)]
    );
}

/// Polls until `key` is gone; the time it was first seen gone.
async fn wait_gone(c: &mut Client, key: &str, limit: Duration) -> Instant {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if !exists(c, key).await {
            return Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{key} still exists after {limit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_within_a_second_after_ttl_never_before() {
    let node = Node::start();
    let mut c = node.client().await;
    let sent = Instant::now();
    let id = c.lease_grant(3, None).await.unwrap().id();
    let granted = Instant::now();
    c.put("e", "v", Some(PutOptions::new().with_lease(id))).await.unwrap();
    // The TTL starts when the server applies the grant: after `sent`, before `granted`
    // (measuring each bound from its own side keeps the test independent of fsync speed).
    tokio::time::sleep_until((sent + Duration::from_millis(2800)).into()).await;
    assert!(exists(&mut c, "e").await, "expired before its TTL");
    let gone = wait_gone(&mut c, "e", Duration::from_secs(5)).await;
    let late = gone.duration_since(granted);
    assert!(
        late <= Duration::from_millis(4000),
        "expired {late:?} after the grant was acknowledged"
    );
    assert_eq!(c.lease_time_to_live(id, None).await.unwrap().ttl(), -1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_holds_a_lease_past_its_ttl() {
    let node = Node::start();
    let mut c = node.client().await;
    let id = c.lease_grant(2, None).await.unwrap().id();
    c.put("k", "v", Some(PutOptions::new().with_lease(id))).await.unwrap();
    let (mut keeper, mut responses) = c.lease_keep_alive(id).await.unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        keeper.keep_alive().await.unwrap();
        let resp = responses.message().await.unwrap().expect("a keep-alive answer");
        assert_eq!((resp.id(), resp.ttl()), (id, 2));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(exists(&mut c, "k").await);
    let last = Instant::now();
    drop(keeper);
    let gone = wait_gone(&mut c, "k", Duration::from_secs(5)).await;
    assert!(
        gone.duration_since(last) >= Duration::from_millis(1400),
        "expired early"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_remaining_ttl() {
    let mut node = Node::start_with(&["--experimental-lease-checkpoint-interval=1s"]);
    let mut c = node.client().await;
    let aging = c.lease_grant(10, None).await.unwrap().id();
    let renewed = c.lease_grant(10, None).await.unwrap().id();
    let fresh = c.lease_grant(100, None).await.unwrap().id();
    c.put("aging", "v", Some(PutOptions::new().with_lease(aging)))
        .await
        .unwrap();
    c.put("fresh", "v", Some(PutOptions::new().with_lease(fresh)))
        .await
        .unwrap();
    // Past half its TTL, the aging lease is checkpointed every interval.
    tokio::time::sleep(Duration::from_millis(7000)).await;
    let left = c.lease_time_to_live(aging, None).await.unwrap().ttl();
    assert!((1..=3).contains(&left), "{left}");

    node.kill9();
    node.launch();
    let mut c = node.client().await;
    let resumed = c.lease_time_to_live(aging, None).await.unwrap();
    assert_eq!(resumed.granted_ttl(), 10);
    // The checkpoint (at most one interval old) plus one election timeout for clients to
    // find the leader; never the full TTL again.
    assert!((1..=6).contains(&resumed.ttl()), "resumed with {}", resumed.ttl());
    assert!(exists(&mut c, "aging").await);

    // Renewing a checkpointed lease clears its checkpoint through the log first: the next
    // restart resumes the full TTL the keep-alive promised, not the stale checkpoint.
    let stale = c.lease_time_to_live(renewed, None).await.unwrap().ttl();
    assert!((1..=6).contains(&stale), "resumed with {stale}");
    let (_keeper, _responses) = c.lease_keep_alive(renewed).await.unwrap();
    assert!(c.lease_time_to_live(renewed, None).await.unwrap().ttl() >= 9);
    node.kill9();
    node.launch();
    let mut c = node.client().await;
    let after = c.lease_time_to_live(renewed, None).await.unwrap().ttl();
    assert!((9..=11).contains(&after), "renewed lease resumed with {after}");

    let fresh_left = c.lease_time_to_live(fresh, None).await.unwrap().ttl();
    assert!((90..=101).contains(&fresh_left), "{fresh_left}");
    wait_gone(&mut c, "aging", Duration::from_secs(8)).await;

    // The attachment index survived too.
    let ttl = c
        .lease_time_to_live(fresh, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(ttl.keys(), &[b"fresh".to_vec()]);
    c.lease_revoke(fresh).await.unwrap();
    assert!(!exists(&mut c, "fresh").await);
    let all = c.get("", Some(GetOptions::new().with_all_keys())).await.unwrap();
    assert_eq!(all.count(), 0);
}

/// 500 leases with two keys each, expiring about together: no key is gone before its lease's
/// TTL, every key is gone within 1 s after it, and each lease's keys are deleted together in a
/// revision of their own.
///
/// Independent of the disk's fsync speed: each lease's window is measured from its own grant.
/// Its keys must still be there in any read answered before `grant sent + TTL` (the server
/// starts the TTL when it applies the grant, after it was sent) and must be gone from any read
/// sent after `grant acknowledged + TTL + 1 s` (it applied the grant before acknowledging it).
/// The leases are granted by 16 concurrent workers, each attaching a lease's keys (one txn)
/// right after its grant: on a fast disk all 500 are granted within about a second and expire
/// together; on a slow one the grants, and so the expiries, spread over as long as the server
/// needs to commit them, and no request waits behind more than ~16 others (granting all 500 at
/// once would queue the last ones longer than the server's request timeout there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_expiry_is_on_time_with_one_revision_per_lease() {
    const LEASES: usize = 500;
    const WORKERS: usize = 16;
    const TTL: u64 = 6;
    let ttl = Duration::from_secs(TTL);
    let node = Node::start();
    let mut c = node.client().await;
    let from = revision(&mut c).await + 1;
    let mut watch = c
        .watch("m/", Some(WatchOptions::new().with_prefix().with_start_revision(from)))
        .await
        .unwrap();
    // Worker w: leases w, w + 16, ...: grant (sent, acknowledged), then its keys m/<i>/0 and
    // m/<i>/1 in one txn.
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in (w..LEASES).step_by(WORKERS) {
                let sent = Instant::now();
                let id = c.lease_grant(TTL as i64, None).await.unwrap().id();
                let acked = Instant::now();
                let puts = (0..2)
                    .map(|k| TxnOp::put(format!("m/{i:04}/{k}"), "v", Some(PutOptions::new().with_lease(id))))
                    .collect::<Vec<_>>();
                c.txn(Txn::new().and_then(puts))
                    .await
                    .expect("attaching the keys right after the grant");
                out.push((i, sent, acked));
            }
            out
        }));
    }
    let mut window = vec![None; LEASES]; // (grant sent, grant acknowledged) per lease
    for t in tasks {
        for (i, sent, acked) in t.await.unwrap() {
            window[i] = Some((sent, acked));
        }
    }
    let window: Vec<(Instant, Instant)> = window.into_iter().map(Option::unwrap).collect();
    let setup = window.iter().map(|w| w.1).max().unwrap() - window.iter().map(|w| w.0).min().unwrap();
    eprintln!("mass expiry: {LEASES} leases granted and their keys attached in {setup:?}");

    let last_deadline = window.iter().map(|w| w.1).max().unwrap() + ttl + Duration::from_secs(1);
    let keys_only = || Some(GetOptions::new().with_prefix().with_keys_only());
    loop {
        let asked = Instant::now();
        let resp = c.get("m/", keys_only()).await.unwrap();
        let answered = Instant::now();
        let mut present = vec![0u8; LEASES];
        for kv in resp.kvs() {
            let i: usize = std::str::from_utf8(&kv.key()[2..6]).unwrap().parse().unwrap();
            present[i] += 1;
        }
        for (i, (sent, acked)) in window.iter().enumerate() {
            if answered < *sent + ttl {
                assert_eq!(
                    present[i],
                    2,
                    "lease {i}: keys gone before its TTL ({:?} after the grant was sent)",
                    answered - *sent
                );
            }
            if asked > *acked + ttl + Duration::from_secs(1) {
                assert_eq!(
                    present[i],
                    0,
                    "lease {i}: keys still there {:?} after the grant was acknowledged (TTL {TTL} s)",
                    asked - *acked
                );
            }
        }
        if resp.kvs().is_empty() {
            break;
        }
        assert!(asked < last_deadline + Duration::from_secs(5), "leases still there");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Every lease's two keys go together, in a revision of their own.
    let mut deletes: std::collections::BTreeMap<i64, Vec<Vec<u8>>> = Default::default();
    while deletes.values().map(Vec::len).sum::<usize>() < 2 * LEASES {
        let resp = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .expect("events")
            .unwrap()
            .expect("an open stream");
        for e in resp.events().iter().filter(|e| e.event_type() == EventType::Delete) {
            let kv = e.kv().unwrap();
            deletes.entry(kv.mod_revision()).or_default().push(kv.key().to_vec());
        }
    }
    assert_eq!(deletes.len(), LEASES);
    for keys in deletes.values() {
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0][..6], keys[1][..6], "one lease per revision: {keys:?}");
    }
}
