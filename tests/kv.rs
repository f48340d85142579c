//! KV semantics end to end: a real `cairn` process driven by the `etcd-client` crate.

mod common;

use common::{status_of, Node};
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_delete_revisions() {
    let node = Node::start();
    let mut c = node.client().await;

    let get = c.get("missing", None).await.unwrap();
    assert_eq!(get.header().unwrap().revision(), 1, "an empty store is at revision 1");
    assert_eq!(get.count(), 0);

    let p1 = c.put("k", "v1", None).await.unwrap();
    assert_eq!(p1.header().unwrap().revision(), 2);
    let p2 = c.put("k", "v2", Some(PutOptions::new().with_prev_key())).await.unwrap();
    assert_eq!(p2.header().unwrap().revision(), 3);
    let prev = p2.prev_key().expect("prev kv");
    assert_eq!((prev.value(), prev.version(), prev.mod_revision()), (&b"v1"[..], 1, 2));

    let kv = c.get("k", None).await.unwrap().kvs()[0].clone();
    assert_eq!((kv.create_revision(), kv.mod_revision(), kv.version()), (2, 3, 2));

    // History stays readable until compacted.
    let old = c.get("k", Some(GetOptions::new().with_revision(2))).await.unwrap();
    assert_eq!(old.kvs()[0].value(), b"v1");
    assert_eq!(
        old.header().unwrap().revision(),
        3,
        "header carries the current revision"
    );

    // A delete bumps the revision once; deleting nothing does not bump it.
    let d = c.delete("k", None).await.unwrap();
    assert_eq!((d.deleted(), d.header().unwrap().revision()), (1, 4));
    let d = c.delete("k", None).await.unwrap();
    assert_eq!((d.deleted(), d.header().unwrap().revision()), (0, 4));

    // Version restarts after a delete.
    c.put("k", "v3", None).await.unwrap();
    let kv = c.get("k", None).await.unwrap().kvs()[0].clone();
    assert_eq!((kv.create_revision(), kv.version()), (5, 1));

    // Binary keys and values.
    c.put(vec![0u8, 255, 1], vec![0u8, 0], None).await.unwrap();
    let bin = c.get(vec![0u8, 255, 1], None).await.unwrap();
    assert_eq!(bin.kvs()[0].value(), &[0u8, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_limits_and_sorting() {
    let node = Node::start();
    let mut c = node.client().await;
    for (k, v) in [("a", "3"), ("a/1", "1"), ("a/2", "2"), ("b", "0")] {
        c.put(k, v, None).await.unwrap();
    }
    let r = c
        .get("a", Some(GetOptions::new().with_prefix().with_limit(2)))
        .await
        .unwrap();
    assert_eq!(r.kvs().len(), 2);
    assert!(r.more());
    assert_eq!(r.count(), 3, "count ignores the limit");

    let r = c.get("a", Some(GetOptions::new().with_from_key())).await.unwrap();
    assert_eq!(r.count(), 4);

    let r = c
        .get(
            "a",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(etcd_client::SortTarget::Value, etcd_client::SortOrder::Descend),
            ),
        )
        .await
        .unwrap();
    let values: Vec<&[u8]> = r.kvs().iter().map(|kv| kv.value()).collect();
    assert_eq!(values, vec![&b"3"[..], b"2", b"1"]);

    let r = c
        .get("a", Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .unwrap();
    assert!(r.kvs().is_empty());
    assert_eq!(r.count(), 3);

    let r = c
        .get("a", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .unwrap();
    assert!(r.kvs().iter().all(|kv| kv.value().is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_compares_and_branches() {
    let node = Node::start();
    let mut c = node.client().await;
    c.put("x", "1", None).await.unwrap();

    let t = Txn::new()
        .when([Compare::value("x", CompareOp::Equal, "1")])
        .and_then([TxnOp::put("y", "from-then", None), TxnOp::get("y", None)])
        .or_else([TxnOp::put("y", "from-else", None)]);
    let r = c.txn(t).await.unwrap();
    assert!(r.succeeded());
    assert_eq!(r.header().unwrap().revision(), 3);
    // The range inside the txn sees the txn's own put.
    match &r.op_responses()[1] {
        etcd_client::TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"from-then"),
        other => panic!("unexpected {other:?}"),
    }

    // VALUE compared on a missing key fails; VERSION on a missing key compares against 0.
    let r = c
        .txn(Txn::new().when([Compare::value("nope", CompareOp::Equal, "")]))
        .await
        .unwrap();
    assert!(!r.succeeded());
    let r = c
        .txn(Txn::new().when([Compare::version("nope", CompareOp::Equal, 0)]))
        .await
        .unwrap();
    assert!(r.succeeded());

    // Duplicate keys in one branch are refused before anything is applied.
    let err = c
        .txn(Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]))
        .await
        .unwrap_err();
    assert_eq!(
        status_of(err),
        (
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request".to_string()
        )
    );
    let ops: Vec<TxnOp> = (0..129).map(|i| TxnOp::put(format!("k{i}"), "v", None)).collect();
    let err = c.txn(Txn::new().and_then(ops)).await.unwrap_err();
    assert_eq!(
        status_of(err),
        (
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request".to_string()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_and_errors() {
    let node = Node::start();
    let mut c = node.client().await;
    for i in 0..5 {
        c.put("k", format!("v{i}"), None).await.unwrap();
    }
    // Revisions 2..=6.
    let err = c
        .get("k", Some(GetOptions::new().with_revision(100)))
        .await
        .unwrap_err();
    assert_eq!(
        status_of(err),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision".to_string()
        )
    );
    c.compact(4, Some(etcd_client::CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    let err = c.get("k", Some(GetOptions::new().with_revision(3))).await.unwrap_err();
    assert_eq!(
        status_of(err),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted".to_string()
        )
    );
    // Reading at exactly the compacted revision is allowed.
    let r = c.get("k", Some(GetOptions::new().with_revision(4))).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"v2");
    let err = c.compact(4, None).await.unwrap_err();
    assert_eq!(status_of(err).0, Code::OutOfRange);

    let err = c
        .put("leased", "v", Some(PutOptions::new().with_lease(42)))
        .await
        .unwrap_err();
    assert_eq!(
        status_of(err),
        (Code::NotFound, "etcdserver: requested lease not found".to_string())
    );
    let err = c.put("", "v", None).await.unwrap_err();
    assert_eq!(
        status_of(err),
        (Code::InvalidArgument, "etcdserver: key is not provided".to_string())
    );
    let err = c.put("big", vec![0u8; 1_600_000], None).await.unwrap_err();
    assert_eq!(
        status_of(err),
        (Code::InvalidArgument, "etcdserver: request is too large".to_string())
    );
    let err = c
        .put("missing", "", Some(PutOptions::new().with_ignore_value()))
        .await
        .unwrap_err();
    assert_eq!(
        status_of(err),
        (Code::InvalidArgument, "etcdserver: key not found".to_string())
    );

    // Services whose issues have not landed say so.
    let err = c.lock("l", None).await.unwrap_err();
    let (code, msg) = status_of(err);
    assert_eq!(code, Code::Unimplemented);
    assert!(msg.contains("Lock"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_recovers_keys_revision_and_compaction() {
    let mut node = Node::start();
    {
        let mut c = node.client().await;
        for i in 0..20 {
            c.put(format!("key{i:02}"), format!("v{i}"), None).await.unwrap();
        }
        c.delete("key00", None).await.unwrap();
        c.compact(10, None).await.unwrap();
    }
    node.stop();
    node.launch();
    let mut c = node.client().await;
    let r = c.get("key", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(r.count(), 19);
    assert_eq!(r.header().unwrap().revision(), 22);
    let err = c
        .get("key05", Some(GetOptions::new().with_revision(9)))
        .await
        .unwrap_err();
    assert_eq!(status_of(err).0, Code::OutOfRange);
    let put = c.put("after", "restart", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), 23);

    let status = c.status().await.unwrap();
    assert_eq!(status.version(), "3.6.0");
    let members = c.member_list().await.unwrap();
    assert_eq!(members.members().len(), 1);
    assert_eq!(members.members()[0].name(), "n1");
}

/// Group commit: concurrent writes share log entries (one append and one fsync each), yet
/// each is applied on its own, with its own revision and its own answer or error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_log_entries_and_keep_their_own_revisions() {
    const WRITERS: usize = 256;
    let node = Node::start();
    let mut c = node.client().await;
    let start = c.put("seed", "0", None).await.unwrap().header().unwrap().revision();
    let index_before = c.status().await.unwrap().raft_index();

    let mut tasks = Vec::new();
    for i in 0..WRITERS {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.put(format!("k{i:03}"), format!("v{i}"), None)
                .await
                .map(|r| r.header().unwrap().revision())
        }));
    }
    // Refused inside whatever batch it lands in, without disturbing the others.
    let mut refused = c.clone();
    let refusal = tokio::spawn(async move {
        refused
            .put("missing", "", Some(PutOptions::new().with_ignore_value()))
            .await
    });
    let mut revisions = Vec::new();
    for t in tasks {
        revisions.push(t.await.unwrap().expect("put"));
    }
    let err = refusal.await.unwrap().expect_err("ignore_value on a missing key");
    assert_eq!(
        status_of(err),
        (Code::InvalidArgument, "etcdserver: key not found".into())
    );

    revisions.sort_unstable();
    let expected: Vec<i64> = (start + 1..=start + WRITERS as i64).collect();
    assert_eq!(revisions, expected, "one revision each, none shared, none skipped");
    for i in [0, WRITERS / 2, WRITERS - 1] {
        let got = c.get(format!("k{i:03}"), None).await.unwrap();
        assert_eq!(got.kvs()[0].value(), format!("v{i}").as_bytes());
    }
    let entries = c.status().await.unwrap().raft_index() - index_before;
    assert!(
        entries <= (WRITERS / 2) as u64,
        "{WRITERS} concurrent writes took {entries} log entries: they were not batched"
    );
}
