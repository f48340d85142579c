//! MVCC behaviour on a real RocksDB engine, below the API.

use super::compaction;
use super::ops::{self, LeaseLookup};
use super::store::{KvRead, KvWrite, Reader, Revisions, WriteTxn};
use super::{KeyRange, KvError, RangeOptions};
use crate::proto::etcdserverpb::{
    compare, request_op, response_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use crate::storage::Engine;

struct NoLeases;
impl LeaseLookup for NoLeases {
    fn lease_exists(&self, _: i64) -> Result<bool, super::KvError> {
        Ok(false)
    }
}

pub(super) fn engine() -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), None).unwrap();
    (dir, engine)
}

pub(super) fn put(engine: &Engine, key: &str, value: &str) -> i64 {
    let mut txn = WriteTxn::begin(engine).unwrap();
    let req = PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    };
    let rev = ops::put(&mut txn, &req, &NoLeases, false)
        .unwrap()
        .header
        .unwrap()
        .revision;
    engine.write(txn.finish().0, false).unwrap();
    rev
}

pub(super) fn delete(engine: &Engine, key: &str, range_end: &str) -> i64 {
    let mut txn = WriteTxn::begin(engine).unwrap();
    let req = DeleteRangeRequest {
        key: key.into(),
        range_end: range_end.into(),
        ..Default::default()
    };
    let deleted = ops::delete_range(&mut txn, &req).unwrap().deleted;
    engine.write(txn.finish().0, false).unwrap();
    deleted
}

fn get_at(engine: &Engine, key: &str, rev: i64) -> Result<Option<String>, KvError> {
    let reader = Reader::new(engine).unwrap();
    let rr = reader.range(
        &KeyRange::Single(key.into()),
        &RangeOptions {
            rev,
            ..Default::default()
        },
    )?;
    Ok(rr.kvs.first().map(|kv| String::from_utf8(kv.value.to_vec()).unwrap()))
}

fn revs_of(engine: &Engine) -> Revisions {
    Reader::new(engine).unwrap().revisions()
}

/// Schedules a compaction as apply does, then runs the compactor's steps to the end,
/// two keys a step so that resuming between steps is exercised.
pub(super) fn compact(engine: &Engine, to: i64) {
    let mut txn = WriteTxn::begin(engine).unwrap();
    let revs = txn.reader().revisions();
    revs.check_compaction(to).unwrap();
    compaction::schedule(txn.batch_mut(), to);
    engine.write(txn.finish().0, false).unwrap();
    let mut from = Vec::new();
    for _ in 0..1000 {
        match compaction::step(engine, &from, 2).unwrap() {
            compaction::Step::Progress(next) => from = next,
            compaction::Step::Finished(rev) => {
                assert_eq!(rev, to);
                assert_eq!(compaction::step(engine, &[], 2).unwrap(), compaction::Step::Idle);
                return;
            }
            compaction::Step::Idle => panic!("a scheduled compaction reported idle"),
        }
    }
    panic!("compaction to {to} did not finish");
}

#[test]
fn compaction_keeps_the_newest_version_at_or_below_and_drops_tombstones() {
    let (_dir, e) = engine();
    put(&e, "a", "a1"); // 2
    put(&e, "a", "a2"); // 3
    put(&e, "b", "b1"); // 4
    delete(&e, "b", ""); // 5
    put(&e, "a", "a3"); // 6
    compact(&e, 5);
    assert!(matches!(get_at(&e, "a", 4), Err(KvError::Compacted)));
    assert_eq!(get_at(&e, "a", 5).unwrap().as_deref(), Some("a2"));
    assert_eq!(get_at(&e, "a", 6).unwrap().as_deref(), Some("a3"));
    assert_eq!(get_at(&e, "b", 5).unwrap(), None);
    // Versions and create revisions survive compaction.
    let reader = Reader::new(&e).unwrap();
    let kv = reader.latest(b"a").unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.version), (2, 3));
    // A second compaction only visits what changed since the first.
    put(&e, "b", "b2"); // 7
    compact(&e, 7);
    assert_eq!(get_at(&e, "a", 7).unwrap().as_deref(), Some("a3"));
    assert_eq!(get_at(&e, "b", 7).unwrap().as_deref(), Some("b2"));
    assert!(matches!(revs_of(&e).check_compaction(7), Err(KvError::Compacted)));
    put(&e, "b", "b3"); // 8
    assert!(matches!(revs_of(&e).check_compaction(9), Err(KvError::FutureRev)));
}

fn op(request: request_op::Request) -> RequestOp {
    RequestOp { request: Some(request) }
}

fn put_op(key: &str, value: &str) -> RequestOp {
    op(request_op::Request::RequestPut(PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }))
}

fn range_op(key: &str, range_end: &str) -> RequestOp {
    op(request_op::Request::RequestRange(RangeRequest {
        key: key.into(),
        range_end: range_end.into(),
        ..Default::default()
    }))
}

#[test]
fn txn_reads_see_earlier_writes_and_compares_see_the_state_before() {
    let (_dir, e) = engine();
    put(&e, "p/1", "old"); // 2
    let inner = TxnRequest {
        // Evaluated before the outer txn writes anything: p/2 does not exist yet.
        compare: vec![Compare {
            key: "p/2".into(),
            target: compare::CompareTarget::Version as i32,
            result: compare::CompareResult::Equal as i32,
            target_union: Some(compare::TargetUnion::Version(0)),
            ..Default::default()
        }],
        success: vec![range_op("p/", "p0")],
        failure: vec![],
    };
    let txn_req = TxnRequest {
        compare: vec![],
        success: vec![
            put_op("p/2", "new"),
            op(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: "p/1".into(),
                ..Default::default()
            })),
            op(request_op::Request::RequestTxn(inner)),
        ],
        failure: vec![],
    };
    ops::check_txn_request(&txn_req, 128).unwrap();
    let mut txn = WriteTxn::begin(&e).unwrap();
    let resp = ops::txn(&mut txn, &txn_req, &NoLeases).unwrap();
    e.write(txn.finish().0, false).unwrap();
    assert_eq!(resp.header.unwrap().revision, 3);
    let Some(response_op::Response::ResponseTxn(nested)) = &resp.responses[2].response else {
        panic!("nested txn response expected");
    };
    assert!(nested.succeeded);
    let Some(response_op::Response::ResponseRange(rr)) = &nested.responses[0].response else {
        panic!("range response expected");
    };
    let keys: Vec<&[u8]> = rr.kvs.iter().map(|kv| kv.key.as_ref()).collect();
    assert_eq!(keys, vec![&b"p/2"[..]], "the nested range sees the put and the delete");
    assert_eq!(rr.header.as_ref().unwrap().revision, 3);
}

#[test]
fn duplicate_key_rules_follow_etcd() {
    let txn = |success: Vec<RequestOp>| TxnRequest {
        compare: vec![],
        success,
        failure: vec![],
    };
    let del = |key: &str, end: &str| {
        op(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.into(),
            range_end: end.into(),
            ..Default::default()
        }))
    };
    let dup = |t: TxnRequest| matches!(ops::check_txn_request(&t, 128), Err(KvError::DuplicateKey));
    assert!(dup(txn(vec![put_op("a", "1"), put_op("a", "2")])));
    assert!(dup(txn(vec![del("a", "c"), put_op("b", "1")])));
    assert!(!dup(txn(vec![del("a", "c"), put_op("c", "1")])));
    // etcd's interval check sees a from-key delete ("\0" end) as covering nothing.
    assert!(!dup(txn(vec![del("a", "\0"), put_op("b", "1")])));
    // Then and else of a nested txn may put the same key; the outer branch may not.
    let nested = TxnRequest {
        compare: vec![],
        success: vec![put_op("k", "1")],
        failure: vec![put_op("k", "2")],
    };
    assert!(!dup(txn(vec![op(request_op::Request::RequestTxn(nested.clone()))])));
    assert!(dup(txn(vec![
        op(request_op::Request::RequestTxn(nested)),
        put_op("k", "3")
    ])));
}

#[test]
fn malformed_ops_are_reported_before_duplicates() {
    // etcd validates the whole tree before checking overlaps.
    let nested = TxnRequest {
        compare: vec![],
        success: vec![put_op("", "v")],
        failure: vec![],
    };
    let t = TxnRequest {
        compare: vec![],
        success: vec![put_op("a", "1"), put_op("a", "2")],
        failure: vec![op(request_op::Request::RequestTxn(nested))],
    };
    assert!(matches!(ops::check_txn_request(&t, 128), Err(KvError::EmptyKey)));
}

#[test]
fn one_txn_can_write_a_run_of_revisions() {
    let (_dir, engine) = engine();
    let start = put(&engine, "a", "0");
    let mut txn = WriteTxn::begin(&engine).unwrap();
    txn.put(b"a", b"1".to_vec().into(), 0).unwrap();
    txn.next_revision();
    txn.put(b"b", b"1".to_vec().into(), 0).unwrap();
    txn.next_revision();
    txn.next_revision(); // nothing written since: no empty revision
    let (deleted, rev) = txn.delete_range(&KeyRange::Single(b"a".to_vec())).unwrap();
    assert_eq!((deleted, rev), (1, start + 3));
    assert_eq!(txn.rev(), start + 3);
    let (batch, events) = txn.finish();
    let revs: Vec<i64> = events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision).collect();
    assert_eq!(revs, vec![start + 1, start + 2, start + 3]);
    engine.write(batch, false).unwrap();
    assert_eq!(get_at(&engine, "a", start + 1).unwrap().as_deref(), Some("1"));
    assert_eq!(get_at(&engine, "b", start + 1).unwrap(), None);
    assert_eq!(get_at(&engine, "b", start + 2).unwrap().as_deref(), Some("1"));
    assert_eq!(get_at(&engine, "a", start + 3).unwrap(), None);
    assert_eq!(Reader::new(&engine).unwrap().revisions().current, start + 3);
}

/// A read inside a txn that wrote elsewhere: the stored state, limit and count honoured,
/// at the txn's revision; a read covering a written key lays the write over.
#[test]
fn txn_reads_of_ranges_it_did_not_write_are_plain_scans() {
    let (_dir, engine) = engine();
    for k in ["b1", "b2", "b3"] {
        put(&engine, k, "0");
    }
    let mut txn = WriteTxn::begin(&engine).unwrap();
    let rev = txn.put(b"a", b"1".to_vec().into(), 0).unwrap();
    let opts = RangeOptions {
        limit: 1,
        ..Default::default()
    };
    let r = txn.range(&KeyRange::from_request(b"b", b"c"), &opts).unwrap();
    assert_eq!((r.kvs.len(), r.count, r.rev), (1, 3, rev));
    assert_eq!(r.kvs[0].key.as_ref(), b"b1");
    let r = txn
        .range(&KeyRange::from_request(b"a", b"c"), &RangeOptions::default())
        .unwrap();
    assert_eq!((r.kvs.len(), r.count), (4, 4));
    assert_eq!(r.kvs[0].value.as_ref(), b"1");
}

/// One revision holding more keys than a compaction step visits, at the compacted
/// revision itself: the steps go through it (resuming inside it) and finish.
#[test]
fn compaction_finishes_through_a_revision_larger_than_a_step() {
    let (_dir, e) = engine();
    for i in 0..7 {
        put(&e, &format!("k{i}"), "old"); // 2..=8
    }
    let mut txn = WriteTxn::begin(&e).unwrap();
    for i in 0..7 {
        txn.put(format!("k{i}").as_bytes(), b"new".to_vec().into(), 0).unwrap();
    }
    e.write(txn.finish().0, false).unwrap(); // 9: seven keys
    compact(&e, 9);
    for i in 0..7 {
        let key = format!("k{i}");
        assert_eq!(get_at(&e, &key, 9).unwrap().as_deref(), Some("new"));
        // The old version is physically gone.
        let old = crate::mvcc::key::kv_key(key.as_bytes(), i + 2);
        assert_eq!(
            crate::storage::ReadView::get(&e, crate::storage::Cf::Kv, &old).unwrap(),
            None
        );
    }
}

/// Many versions of few keys: steps are bounded by entries scanned, not only by keys, and a
/// key's long tail of versions goes in one range deletion.
#[test]
fn compaction_of_many_versions_of_one_key() {
    let (_dir, e) = engine();
    for i in 0..300 {
        put(&e, "hot", &format!("v{i}")); // 2..=301
    }
    put(&e, "cold", "c"); // 302
    compact(&e, 301);
    assert_eq!(get_at(&e, "hot", 301).unwrap().as_deref(), Some("v299"));
    assert!(matches!(get_at(&e, "hot", 300), Err(KvError::Compacted)));
    assert_eq!(get_at(&e, "cold", 302).unwrap().as_deref(), Some("c"));
    let mut cur = crate::storage::ReadView::cursor(&e, crate::storage::Cf::Kv);
    crate::storage::Cursor::seek(&mut cur, &[]);
    let mut versions = 0;
    while crate::storage::Cursor::valid(&cur) {
        versions += 1;
        crate::storage::Cursor::next(&mut cur);
    }
    assert_eq!(versions, 2, "only the newest version of each key is left");
}

#[test]
fn delete_range_detaches_leases_and_sees_the_txns_own_writes_without_reading_values() {
    let (_dir, engine) = engine();
    let mut txn = WriteTxn::begin(&engine).unwrap();
    txn.put(b"a", b"big".repeat(1000).into(), 7).unwrap();
    txn.put(b"b", b"v".to_vec().into(), 0).unwrap();
    txn.put(b"d", b"v".to_vec().into(), 8).unwrap();
    engine.write(txn.finish().0, false).unwrap();
    let reader = Reader::new(&engine).unwrap();
    let keys = reader
        .live_keys(&KeyRange::from_request(b"a", b"z"), reader.revisions().current)
        .unwrap();
    assert_eq!(keys, vec![(b"a".to_vec(), 7), (b"b".to_vec(), 0), (b"d".to_vec(), 8)]);

    // One txn over two revisions: a put of "c" with a lease, then a delete of the range,
    // which must count and detach "c" from the txn's own overlay.
    let mut txn = WriteTxn::begin(&engine).unwrap();
    txn.put(b"c", b"v".to_vec().into(), 9).unwrap();
    txn.next_revision();
    let (deleted, rev) = txn.delete_range(&KeyRange::from_request(b"b", b"z")).unwrap();
    assert_eq!((deleted, rev), (3, 4));
    let (batch, events) = txn.finish();
    engine.write(batch, false).unwrap();
    let deletes: Vec<(&[u8], i64, bool)> = events
        .iter()
        .filter(|e| e.r#type == super::EventType::Delete as i32)
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            (kv.key.as_ref(), kv.mod_revision, e.prev_kv.is_some())
        })
        .collect();
    assert_eq!(
        deletes,
        vec![(&b"b"[..], 4, false), (&b"c"[..], 4, false), (&b"d"[..], 4, false)]
    );
    for lease in [8, 9] {
        assert!(
            crate::lease::store::keys(&engine, lease).unwrap().is_empty(),
            "lease {lease}"
        );
    }
    assert_eq!(crate::lease::store::keys(&engine, 7).unwrap(), vec![b"a".to_vec()]);
    assert_eq!(get_at(&engine, "a", 0).unwrap().map(|v| v.len()), Some(3000));
    assert_eq!(get_at(&engine, "d", 0).unwrap(), None);
}

/// Scans at every revision agree with a model of the history, whatever the number of
/// versions a key has (the scan `next`s past a few and seeks past many).
#[test]
fn scans_at_every_revision_match_a_model() {
    use std::collections::BTreeMap;
    let (_dir, engine) = engine();
    let keys = ["a", "b", "b\u{0}", "c", "d"];
    // The state after each revision (index = revision - 1; revision 1 is empty).
    let mut states: Vec<BTreeMap<String, String>> = vec![BTreeMap::new()];
    let mut seed = 7u32;
    for step in 0..120 {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        // "a" changes most (many versions), "d" rarely.
        let key = keys[[0, 0, 0, 0, 1, 2, 3, 4][(seed >> 16) as usize % 8]];
        let mut state = states.last().unwrap().clone();
        if (seed >> 8) % 5 == 0 {
            if delete(&engine, key, "") == 0 {
                continue;
            }
            state.remove(key);
        } else {
            let value = format!("{key}{step}");
            put(&engine, key, &value);
            state.insert(key.to_string(), value);
        }
        states.push(state);
    }
    let reader = Reader::new(&engine).unwrap();
    for (i, state) in states.iter().enumerate() {
        let at = i as i64 + 1;
        let all = KeyRange::from_request(b"a", b"z");
        let (kvs, count) = reader.scan(&all, at, &RangeOptions::default()).unwrap();
        let got: BTreeMap<String, String> = kvs
            .iter()
            .map(|kv| {
                (
                    String::from_utf8(kv.key.to_vec()).unwrap(),
                    String::from_utf8(kv.value.to_vec()).unwrap(),
                )
            })
            .collect();
        assert_eq!(&got, state, "at {at}");
        assert_eq!(count as usize, state.len());

        let opts = RangeOptions {
            limit: 2,
            keys_only: true,
            ..Default::default()
        };
        let (kvs, count) = reader.scan(&all, at, &opts).unwrap();
        let want: Vec<&String> = state.keys().take(2).collect();
        let got: Vec<String> = kvs
            .iter()
            .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
            .collect();
        assert_eq!(got.iter().collect::<Vec<_>>(), want, "limit at {at}");
        assert!(kvs
            .iter()
            .all(|kv| kv.value.is_empty() && kv.mod_revision > 0 && kv.version > 0));
        assert_eq!(count as usize, state.len());

        for key in keys {
            let (kvs, _) = reader
                .scan(&KeyRange::Single(key.into()), at, &RangeOptions::default())
                .unwrap();
            let got = kvs.first().map(|kv| String::from_utf8(kv.value.to_vec()).unwrap());
            assert_eq!(got.as_ref(), state.get(key), "{key} at {at}");
        }
        // A span ending inside the keys: "b\0" sorts after "b" and before "c".
        let (kvs, _) = reader
            .scan(&KeyRange::from_request(b"b", b"b\x00"), at, &RangeOptions::default())
            .unwrap();
        assert_eq!(kvs.len(), usize::from(state.contains_key("b")), "[b, b\\0) at {at}");
    }
}

/// `keys_only` skips decoding values, except when the range sorts by value (found by the
/// differential test against etcd).
#[test]
fn keys_only_sorted_by_value_sorts_by_the_values_it_does_not_return() {
    use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
    let (_dir, engine) = engine();
    for (k, v) in [("a", "3"), ("b", "1"), ("c", "2")] {
        put(&engine, k, v);
    }
    let reader = Reader::new(&engine).unwrap();
    let r = RangeRequest {
        key: b"a".to_vec(),
        range_end: b"z".to_vec(),
        keys_only: true,
        sort_target: SortTarget::Value as i32,
        sort_order: SortOrder::Descend as i32,
        ..Default::default()
    };
    let resp = ops::range(&reader, &r).unwrap();
    let keys: Vec<&[u8]> = resp.kvs.iter().map(|kv| kv.key.as_ref()).collect();
    assert_eq!(keys, vec![&b"a"[..], b"c", b"b"]);
    assert!(resp.kvs.iter().all(|kv| kv.value.is_empty()));
}
