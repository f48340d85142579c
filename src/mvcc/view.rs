//! The read facade: the only way into the store from above `mvcc` (the API and watch).
//! Callers name requests, revisions and ranges, never column families or encodings.
//!
//! Every method blocks on RocksDB; async callers run it off their workers (`api::blocking`).
//! Multi-record reads each see one consistent snapshot.

use super::history::{self, History, HistoryLimits};
use super::key::decode_kv_key;
use super::ops;
use super::store::{Reader, Revisions};
use super::{KeyRange, KeyValue, KvError, Revision};
use crate::lease::{store as lease_store, LeaseId};
use crate::proto::etcdserverpb::{RangeRequest, RangeResponse, TxnRequest, TxnResponse};
use crate::storage::{self, Cf, Cursor, Engine, ReadView};

/// A cheap-to-clone read handle on the store.
#[derive(Clone)]
pub struct StoreView {
    engine: Engine,
}

/// What `HashKV` answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvHash {
    pub hash: u32,
    /// The compacted revision at the snapshot hashed.
    pub compact_revision: Revision,
}

impl StoreView {
    pub fn new(engine: Engine) -> Self {
        StoreView { engine }
    }

    /// The current and compacted revisions now.
    pub fn revisions(&self) -> storage::Result<Revisions> {
        Revisions::read(&self.engine)
    }

    /// etcd's Range (with `count_only`, the count alone).
    pub fn range(&self, r: &RangeRequest) -> Result<RangeResponse, KvError> {
        self.read(|reader| ops::range(reader, r))
    }

    /// A Txn holding only Range ops (`ops::is_txn_readonly`).
    pub fn read_txn(&self, r: &TxnRequest) -> Result<TxnResponse, KvError> {
        self.read(|reader| ops::read_txn(reader, r))
    }

    fn read<T>(&self, f: impl FnOnce(&Reader<'_, storage::Snapshot<'_>>) -> Result<T, KvError>) -> Result<T, KvError> {
        let snap = self.engine.snapshot();
        f(&Reader::new(&snap)?)
    }

    /// The changes of `range` from revision `from` on, for a watcher catching up (see
    /// `history::read`).
    pub fn history(
        &self,
        range: &KeyRange,
        from: Revision,
        limits: HistoryLimits,
        with_prev: bool,
    ) -> storage::Result<History> {
        history::read(&self.engine.snapshot(), range, from, limits, with_prev)
    }

    /// The version of each of `keys` live just before revision `rev` (`None`: none was),
    /// for watchers asking for the previous version of a delete. Like etcd's watch stream,
    /// which reads it at `rev - 1` and sends none when that read fails, it finds nothing
    /// once `rev - 1` is compacted away.
    pub fn previous_versions(
        &self,
        keys: Vec<Vec<u8>>,
        rev: Revision,
    ) -> storage::Result<Vec<(Vec<u8>, Option<KeyValue>)>> {
        let snap = self.engine.snapshot();
        if Revisions::read(&snap)?.is_compacted(rev - 1) {
            return Ok(keys.into_iter().map(|k| (k, None)).collect());
        }
        keys.into_iter()
            .map(|k| {
                let prev = history::previous_version(&snap, &k, rev)?;
                Ok((k, prev))
            })
            .collect()
    }

    /// etcd's `Hash`: every record of the key space and its revision index.
    pub fn hash(&self) -> storage::Result<u32> {
        hash_cfs(&self.engine.snapshot(), &[Cf::Kv, Cf::Rev], |_| true)
    }

    /// etcd's `HashKV` at revision `requested` (0 or less: the current one): every kept
    /// version at or below it, so members with equal history hash equal.
    pub fn hash_kv(&self, requested: Revision) -> Result<KvHash, KvError> {
        let snap = self.engine.snapshot();
        let revs = Revisions::read(&snap)?;
        let at = revs.read_at(requested)?;
        let hash = hash_cfs(&snap, &[Cf::Kv], |key| {
            decode_kv_key(key).is_some_and(|(_, rev)| rev <= at)
        })?;
        Ok(KvHash {
            hash,
            compact_revision: revs.compacted,
        })
    }

    /// The database's approximate size on disk, for `Status`.
    pub fn approximate_size(&self) -> u64 {
        self.engine.approximate_size()
    }

    /// The keys whose latest version carries lease `id`, in key order (the attachment index
    /// `WriteTxn` keeps).
    pub fn lease_keys(&self, id: LeaseId) -> storage::Result<Vec<Vec<u8>>> {
        lease_store::keys(&self.engine, id)
    }
}

/// CRC-32C over the kept records of the given column families, in key order.
fn hash_cfs(view: &impl ReadView, cfs: &[Cf], keep: impl Fn(&[u8]) -> bool) -> storage::Result<u32> {
    let mut crc = 0u32;
    for &cf in cfs {
        let mut cur = view.cursor(cf);
        cur.seek(&[]);
        while cur.valid() {
            if keep(cur.key()) {
                crc = crc32c::crc32c_append(crc, cur.key());
                crc = crc32c::crc32c_append(crc, cur.value());
            }
            cur.next();
        }
        cur.status()?;
    }
    Ok(crc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::tests::{compact, delete, engine, put};
    use crate::mvcc::{Event, EventType, NEVER_COMPACTED};
    use crate::proto::etcdserverpb::{request_op, RequestOp};

    #[test]
    fn revision_bounds() {
        let revs = Revisions {
            current: 10,
            compacted: 4,
        };
        assert_eq!(revs.read_at(10).unwrap(), 10);
        assert!(matches!(revs.read_at(11), Err(KvError::FutureRev)));
        // The compacted revision itself stays readable.
        assert_eq!(revs.read_at(4).unwrap(), 4);
        assert!(matches!(revs.read_at(3), Err(KvError::Compacted)));
        for current in [0, -1, i64::MIN] {
            assert_eq!(revs.read_at(current).unwrap(), 10, "{current}");
        }
        // Taken as given (a txn's range ops, as etcd's `checkRequestRange` does): a negative
        // revision is below the compacted one.
        assert!(revs.check(10).is_ok());
        assert!(revs.check(4).is_ok());
        assert!(matches!(revs.check(11), Err(KvError::FutureRev)));
        assert!(matches!(revs.check(3), Err(KvError::Compacted)));
        assert!(matches!(revs.check(-1), Err(KvError::Compacted)));
        assert!(!revs.is_compacted(4));
        assert!(revs.is_compacted(3));

        let never = Revisions {
            current: 1,
            compacted: NEVER_COMPACTED,
        };
        assert_eq!(never.read_at(0).unwrap(), 1);
        assert_eq!(never.read_at(-5).unwrap(), 1);
        assert!(never.check(-1).is_ok());
        assert!(matches!(never.check(-2), Err(KvError::Compacted)));
        assert!(matches!(never.read_at(2), Err(KvError::FutureRev)));

        // Compaction's own rule: compacting to the compacted revision again is refused.
        assert!(matches!(revs.check_compaction(3), Err(KvError::Compacted)));
        assert!(matches!(revs.check_compaction(4), Err(KvError::Compacted)));
        assert!(revs.check_compaction(5).is_ok());
        assert!(revs.check_compaction(10).is_ok());
        assert!(matches!(revs.check_compaction(11), Err(KvError::FutureRev)));
    }

    #[test]
    fn previous_versions_of_deleted_keys_until_compacted() {
        let (_dir, engine) = engine();
        put(&engine, "a", "1");
        put(&engine, "a", "2");
        let deleted_at = put(&engine, "z", "-") + 1;
        assert_eq!(delete(&engine, "a", ""), 1);
        let view = StoreView::new(engine.clone());
        let found = view
            .previous_versions(vec![b"a".to_vec(), b"b".to_vec()], deleted_at)
            .unwrap();
        let values: Vec<Option<&[u8]>> = found
            .iter()
            .map(|(_, kv)| kv.as_ref().map(|kv| kv.value.as_ref()))
            .collect();
        assert_eq!(values, vec![Some(&b"2"[..]), None]);
        assert_eq!(found[0].1.as_ref().unwrap().version, 2);
        // etcd reads it at `rev - 1`: gone once that is compacted, kept while it is the
        // compacted revision itself.
        compact(&engine, deleted_at - 1);
        assert!(view.previous_versions(vec![b"a".to_vec()], deleted_at).unwrap()[0]
            .1
            .is_some());
        compact(&engine, deleted_at);
        assert!(view.previous_versions(vec![b"a".to_vec()], deleted_at).unwrap()[0]
            .1
            .is_none());
    }

    fn range_at(view: &StoreView, key: &str, revision: i64) -> Result<Option<String>, KvError> {
        let r = RangeRequest {
            key: key.into(),
            revision,
            ..Default::default()
        };
        Ok(view
            .range(&r)?
            .kvs
            .first()
            .map(|kv| String::from_utf8(kv.value.to_vec()).unwrap()))
    }

    fn txn_range_at(view: &StoreView, revision: i64) -> Result<TxnResponse, KvError> {
        let op = RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: "a".into(),
                revision,
                ..Default::default()
            })),
        };
        view.read_txn(&TxnRequest {
            compare: vec![],
            success: vec![op],
            failure: vec![],
        })
    }

    #[test]
    fn reads_through_the_facade_check_revisions() {
        let (_dir, e) = engine();
        put(&e, "a", "a1"); // 2
        put(&e, "a", "a2"); // 3
        put(&e, "b", "b1"); // 4
        delete(&e, "b", ""); // 5
        put(&e, "a", "a3"); // 6
        compact(&e, 4);
        let view = StoreView::new(e.clone());
        assert_eq!(
            view.revisions().unwrap(),
            Revisions {
                current: 6,
                compacted: 4
            }
        );

        assert!(matches!(range_at(&view, "a", 7), Err(KvError::FutureRev)));
        assert!(matches!(range_at(&view, "a", 3), Err(KvError::Compacted)));
        assert_eq!(range_at(&view, "a", 4).unwrap().as_deref(), Some("a2"));
        assert_eq!(range_at(&view, "a", 6).unwrap().as_deref(), Some("a3"));
        assert_eq!(range_at(&view, "a", 0).unwrap().as_deref(), Some("a3"));
        assert_eq!(range_at(&view, "a", -1).unwrap().as_deref(), Some("a3"));

        // A read-only txn checks its ranges' revisions as given, before reading.
        assert!(matches!(txn_range_at(&view, 7), Err(KvError::FutureRev)));
        assert!(matches!(txn_range_at(&view, 3), Err(KvError::Compacted)));
        assert!(matches!(txn_range_at(&view, -1), Err(KvError::Compacted)));
        assert!(txn_range_at(&view, 4).is_ok());
        assert!(txn_range_at(&view, 0).is_ok());

        assert!(matches!(view.hash_kv(7), Err(KvError::FutureRev)));
        assert!(matches!(view.hash_kv(3), Err(KvError::Compacted)));
        let now = view.hash_kv(0).unwrap();
        assert_eq!(now, view.hash_kv(6).unwrap());
        assert_eq!(now, view.hash_kv(-1).unwrap());
        assert_eq!(now.compact_revision, 4);
        assert_ne!(view.hash_kv(4).unwrap().hash, now.hash);

        let before = view.hash().unwrap();
        put(&e, "c", "c1");
        assert_ne!(view.hash().unwrap(), before);
    }

    const NO_LIMITS: HistoryLimits = HistoryLimits {
        revisions: usize::MAX,
        events: usize::MAX,
        bytes: usize::MAX,
        scanned: usize::MAX,
    };

    /// An event as (kind, key, mod revision, previous value).
    type EventSummary = (EventType, String, i64, Option<String>);

    fn summary(events: &[Event]) -> Vec<EventSummary> {
        events
            .iter()
            .map(|e| {
                let kv = e.kv.as_ref().unwrap();
                (
                    EventType::try_from(e.r#type).unwrap(),
                    String::from_utf8(kv.key.to_vec()).unwrap(),
                    kv.mod_revision,
                    e.prev_kv.as_ref().map(|p| String::from_utf8(p.value.to_vec()).unwrap()),
                )
            })
            .collect()
    }

    /// The events of a history read, its `next` and its `current`.
    fn events_of(history: History) -> (Vec<EventSummary>, Revision, Revision) {
        match history {
            History::Events { events, next, current } => (summary(&events), next, current),
            History::Compacted(c) => panic!("compacted at {c}"),
        }
    }

    #[test]
    fn history_through_the_facade() {
        use EventType::{Delete, Put};
        let (_dir, e) = engine();
        put(&e, "a", "1"); // 2
        put(&e, "b", "1"); // 3
        put(&e, "a", "2"); // 4
        delete(&e, "a", ""); // 5
        put(&e, "z", "1"); // 6: outside the range
        let view = StoreView::new(e.clone());
        let ab = KeyRange::Span {
            start: b"a".to_vec(),
            end: Some(b"c".to_vec()),
        };
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            events_of(view.history(&ab, 3, NO_LIMITS, true).unwrap()),
            (
                vec![
                    (Put, "b".into(), 3, None),
                    (Put, "a".into(), 4, s("1")),
                    (Delete, "a".into(), 5, s("2")),
                ],
                7,
                6
            )
        );
        // Without previous versions; cut after one matching revision.
        let one = HistoryLimits {
            revisions: 1,
            ..NO_LIMITS
        };
        assert_eq!(
            events_of(view.history(&ab, 3, one, false).unwrap()),
            (vec![(Put, "b".into(), 3, None)], 4, 6)
        );

        compact(&e, 4);
        assert!(matches!(
            view.history(&ab, 3, NO_LIMITS, false).unwrap(),
            History::Compacted(4)
        ));
        assert_eq!(
            events_of(view.history(&ab, 4, NO_LIMITS, false).unwrap()),
            (vec![(Put, "a".into(), 4, None), (Delete, "a".into(), 5, None)], 7, 6)
        );
    }
}
