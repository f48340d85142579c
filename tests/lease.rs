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
    tokio::time::sleep_until((granted + Duration::from_millis(2800)).into()).await;
    assert!(exists(&mut c, "e").await, "expired before its TTL");
    let gone = wait_gone(&mut c, "e", Duration::from_secs(5)).await;
    let late = gone.duration_since(sent);
    assert!(late <= Duration::from_millis(4000), "expired {late:?} after the grant");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_expiry_is_on_time_with_one_revision_per_lease() {
    const LEASES: usize = 500;
    let node = Node::start();
    let mut c = node.client().await;
    let from = revision(&mut c).await + 1;
    let mut watch = c
        .watch("m/", Some(WatchOptions::new().with_prefix().with_start_revision(from)))
        .await
        .unwrap();
    const TTL: u64 = 6;
    let first_sent = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..LEASES {
        ids.push(c.lease_grant(TTL as i64, None).await.unwrap().id());
    }
    let last_granted = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        for k in 0..2 {
            c.put(format!("m/{i:04}/{k}"), "v", Some(PutOptions::new().with_lease(*id)))
                .await
                .unwrap();
        }
    }
    let all = || Some(GetOptions::new().with_prefix().with_count_only());
    let ttl = Duration::from_secs(TTL);
    let gone = loop {
        let left = c.get("m/", all()).await.unwrap().count();
        if first_sent.elapsed() < ttl - Duration::from_millis(200) {
            assert_eq!(left, 2 * LEASES as i64, "a lease expired before its TTL");
        }
        if left == 0 {
            break Instant::now();
        }
        assert!(last_granted.elapsed() < ttl * 3, "leases still there");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let late = gone.duration_since(last_granted);
    assert!(
        late < ttl + Duration::from_secs(1),
        "last lease gone {late:?} after its grant"
    );

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
