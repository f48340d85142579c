//! The one apply entry: a committed `RaftRequest` becomes a write batch and a response.
//! Deterministic: no clock, no randomness, nothing but the request and the stored state;
//! a storage error is returned (fatal to the member), never turned into a decision.

use std::sync::Arc;

use crate::lease::{self, LeaseError, LeaseId, Lessor, NO_LEASE};
use crate::mvcc::compaction::{self, Compactor};
use crate::mvcc::ops::{self, header, LeaseLookup};
use crate::mvcc::store::{KvRead, KvWrite, WriteTxn};
use crate::mvcc::{Event, KeyRange, KvError};
use crate::proto::cairnpb::{self as pb, raft_request, Lease, RaftRequest};
use crate::proto::etcdserverpb::{
    request_op, CompactionResponse, LeaseCheckpointRequest, LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeResponse,
    TxnRequest,
};
use crate::storage::{self, Engine, WriteBatch};
use crate::watch::Hub;

/// What applying one log entry answers to the proposer (a protobuf oneof, so an answer can
/// be forwarded between members).
pub use crate::proto::cairnpb::raft_response::Response as RaftResponse;

/// Why a request was refused, by the layer that refused it.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
}

impl Rejection {
    /// The wire form. Storage faults are never rejections (`refusal` keeps them out).
    pub fn to_pb(&self) -> pb::Rejection {
        use pb::rejection::Reason;
        let reason = match self {
            Rejection::Kv(KvError::Compacted) => Reason::Compacted,
            Rejection::Kv(KvError::FutureRev) => Reason::FutureRev,
            Rejection::Kv(KvError::KeyNotFound) => Reason::KeyNotFound,
            Rejection::Kv(KvError::LeaseNotFound) | Rejection::Lease(LeaseError::NotFound) => Reason::LeaseNotFound,
            Rejection::Kv(KvError::EmptyKey) => Reason::EmptyKey,
            Rejection::Kv(KvError::ValueProvided) => Reason::ValueProvided,
            Rejection::Kv(KvError::LeaseProvided) => Reason::LeaseProvided,
            Rejection::Kv(KvError::TooManyOps) => Reason::TooManyOps,
            Rejection::Kv(KvError::DuplicateKey) => Reason::DuplicateKey,
            Rejection::Kv(KvError::InvalidSortOption) => Reason::InvalidSortOption,
            Rejection::Lease(LeaseError::Exists) => Reason::LeaseExists,
            Rejection::Lease(LeaseError::TtlTooLarge) => Reason::LeaseTtlTooLarge,
            Rejection::Kv(KvError::Storage(_)) | Rejection::Lease(LeaseError::Storage(_)) => Reason::Unknown,
        };
        pb::Rejection { reason: reason as i32 }
    }

    /// Back from the wire form; `None` for a reason this build does not know.
    pub fn from_pb(pb: &pb::Rejection) -> Option<Rejection> {
        use pb::rejection::Reason;
        Some(match Reason::try_from(pb.reason).ok()? {
            Reason::Unknown => return None,
            Reason::Compacted => KvError::Compacted.into(),
            Reason::FutureRev => KvError::FutureRev.into(),
            Reason::KeyNotFound => KvError::KeyNotFound.into(),
            // etcd answers both layers' "lease not found" with the same status.
            Reason::LeaseNotFound => LeaseError::NotFound.into(),
            Reason::EmptyKey => KvError::EmptyKey.into(),
            Reason::ValueProvided => KvError::ValueProvided.into(),
            Reason::LeaseProvided => KvError::LeaseProvided.into(),
            Reason::TooManyOps => KvError::TooManyOps.into(),
            Reason::DuplicateKey => KvError::DuplicateKey.into(),
            Reason::InvalidSortOption => KvError::InvalidSortOption.into(),
            Reason::LeaseExists => LeaseError::Exists.into(),
            Reason::LeaseTtlTooLarge => LeaseError::TtlTooLarge.into(),
        })
    }
}

/// A change to the lease set, for the lessor once the batch is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseChange {
    Granted { id: LeaseId, ttl: i64 },
    Revoked(LeaseId),
    Checkpointed { id: LeaseId, remaining_ttl: i64 },
}

/// KV's question about leases, answered from the stored lease records.
struct StoredLeases<'e>(&'e Engine);

impl LeaseLookup for StoredLeases<'_> {
    fn lease_exists(&self, id: LeaseId) -> Result<bool, KvError> {
        Ok(lease::store::exists(self.0, id)?)
    }
}

/// What observers learn from one applied request once its batch is written: the watch
/// events to publish and the lease changes for the lessor.
#[derive(Debug, Default)]
pub struct Effects {
    pub events: Vec<Event>,
    pub lease_changes: Vec<LeaseChange>,
    /// A compaction was scheduled: the compactor has work.
    pub compacted: bool,
}

/// A run of applied requests: their batch, their answers and their effects.
pub type Applied = crate::raft::state_machine::Applied<Effects>;

fn empty() -> RaftResponse {
    RaftResponse::Empty(pb::Blank {})
}

/// Splits a failure into a refusal (answered to the client) or a storage fault (fatal).
fn refusal(e: Rejection) -> Result<Rejection, storage::Error> {
    match e {
        Rejection::Kv(KvError::Storage(e)) | Rejection::Lease(LeaseError::Storage(e)) => Err(e),
        other => Ok(other),
    }
}

fn grant(txn: &mut WriteTxn<'_>, engine: &Engine, r: &LeaseGrantRequest) -> Result<RaftResponse, Rejection> {
    if r.id == NO_LEASE {
        return Err(LeaseError::NotFound.into());
    }
    if r.ttl > lease::MAX_LEASE_TTL {
        return Err(LeaseError::TtlTooLarge.into());
    }
    if lease::store::exists(engine, r.id).map_err(LeaseError::from)? {
        return Err(LeaseError::Exists.into());
    }
    lease::store::put(
        txn.batch_mut(),
        &Lease {
            id: r.id,
            ttl: r.ttl,
            remaining_ttl: 0,
        },
    );
    Ok(RaftResponse::LeaseGrant(LeaseGrantResponse {
        header: header(txn.rev()),
        id: r.id,
        ttl: r.ttl,
        error: String::new(),
    }))
}

/// Deletes every key attached to `id` in one revision, then the lease.
fn revoke(txn: &mut WriteTxn<'_>, engine: &Engine, id: LeaseId) -> Result<RaftResponse, Rejection> {
    if !lease::store::exists(engine, id).map_err(LeaseError::from)? {
        return Err(LeaseError::NotFound.into());
    }
    // Key order, as etcd sorts them before deleting.
    for key in lease::store::keys(engine, id).map_err(LeaseError::from)? {
        txn.delete_range(&KeyRange::Single(key))?;
    }
    lease::store::remove(txn.batch_mut(), id);
    Ok(RaftResponse::LeaseRevoke(LeaseRevokeResponse {
        header: header(txn.rev()),
    }))
}

/// Revokes expired leases, each in its own revision as if revoked one by one, in one
/// entry: a mass expiry costs a few log entries instead of one per lease.
fn expire(
    txn: &mut WriteTxn<'_>,
    engine: &Engine,
    ids: &[LeaseId],
    changes: &mut Vec<LeaseChange>,
) -> Result<RaftResponse, Rejection> {
    let mut seen = std::collections::HashSet::new();
    for &id in ids.iter().filter(|id| seen.insert(**id)) {
        match revoke(txn, engine, id) {
            Ok(_) => changes.push(LeaseChange::Revoked(id)),
            // Revoked by a client since the leader saw it expire, or listed twice.
            Err(Rejection::Lease(LeaseError::NotFound)) => continue,
            Err(e) => return Err(e),
        }
        txn.next_revision();
    }
    Ok(empty())
}

/// Records remaining TTLs of the leases that still exist.
fn checkpoint(
    txn: &mut WriteTxn<'_>,
    engine: &Engine,
    r: &LeaseCheckpointRequest,
    changes: &mut Vec<LeaseChange>,
) -> Result<RaftResponse, Rejection> {
    for cp in &r.checkpoints {
        let Some(mut stored) = lease::store::get(engine, cp.id).map_err(LeaseError::from)? else {
            continue;
        };
        stored.remaining_ttl = cp.remaining_ttl;
        lease::store::put(txn.batch_mut(), &stored);
        changes.push(LeaseChange::Checkpointed {
            id: cp.id,
            remaining_ttl: cp.remaining_ttl,
        });
    }
    Ok(empty())
}

/// Whether a request can join the run before it (one write txn, one RocksDB batch for many
/// requests of a group-commit entry): a KV change whose reads all go through the txn and
/// see its latest state. Lease and compaction requests read the stored leases and revisions
/// directly, and a txn's range at an explicit revision could name one the run has not
/// written yet; each of those starts a run of its own, once the one before is written.
fn joins_run(req: &RaftRequest) -> bool {
    use raft_request::Request;
    match &req.request {
        Some(Request::Put(_)) | Some(Request::DeleteRange(_)) => true,
        Some(Request::Txn(t)) => reads_latest(t),
        _ => false,
    }
}

fn reads_latest(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).all(|op| match &op.request {
        Some(request_op::Request::RequestRange(r)) => r.revision == 0,
        Some(request_op::Request::RequestTxn(inner)) => reads_latest(inner),
        _ => true,
    })
}

/// Applies one request to the run's txn, in a revision of its own if it changes anything.
fn apply_one(
    txn: &mut WriteTxn<'_>,
    engine: &Engine,
    req: &RaftRequest,
    effects: &mut Effects,
) -> Result<RaftResponse, Rejection> {
    use raft_request::Request;
    let leases = StoredLeases(engine);
    let lease_changes = &mut effects.lease_changes;
    match &req.request {
        Some(Request::Put(p)) => ops::put(txn, p, &leases, false)
            .map(RaftResponse::Put)
            .map_err(Rejection::from),
        Some(Request::DeleteRange(d)) => ops::delete_range(txn, d)
            .map(RaftResponse::DeleteRange)
            .map_err(Rejection::from),
        Some(Request::Txn(t)) => ops::txn(txn, t, &leases)
            .map(RaftResponse::Txn)
            .map_err(Rejection::from),
        Some(Request::Compaction(c)) => {
            let revs = txn.reader().revisions();
            revs.check_compaction(c.revision)
                .map(|()| {
                    // Logical now; the versions go in the background (`Compactor`).
                    compaction::schedule(txn.batch_mut(), c.revision);
                    effects.compacted = true;
                    RaftResponse::Compaction(CompactionResponse {
                        header: header(txn.rev()),
                    })
                })
                .map_err(Rejection::from)
        }
        Some(Request::LeaseGrant(g)) => grant(txn, engine, g).inspect(|_| {
            lease_changes.push(LeaseChange::Granted { id: g.id, ttl: g.ttl });
        }),
        Some(Request::LeaseRevoke(r)) => revoke(txn, engine, r.id).inspect(|_| {
            lease_changes.push(LeaseChange::Revoked(r.id));
        }),
        Some(Request::LeaseCheckpoint(c)) => checkpoint(txn, engine, c, lease_changes),
        Some(Request::LeaseExpiry(e)) => expire(txn, engine, &e.ids, lease_changes),
        // Batches are raft's (group commit): the state machine hands over their requests.
        // Only a batch nested in one, which no proposer makes, gets here: it changes
        // nothing, on every member alike.
        Some(Request::Batch(_)) | None => Ok(empty()),
    }
}

/// Applies the first of `reqs` and the requests after it that join its run (`joins_run`),
/// in one txn: the caller adds the log id to the batch and writes it. Each request sees the
/// ones before it and gets the revision it would get applied alone; a refused one writes
/// nothing and takes no revision.
pub fn apply(engine: &Engine, reqs: &[RaftRequest]) -> Result<Applied, storage::Error> {
    let run = match reqs.first() {
        Some(first) if joins_run(first) => reqs.iter().take_while(|r| joins_run(r)).count(),
        _ => reqs.len().min(1),
    };
    let mut txn = WriteTxn::begin(engine)?;
    let mut effects = Effects::default();
    let mut responses = Vec::with_capacity(run);
    for (i, req) in reqs[..run].iter().enumerate() {
        txn.next_revision();
        let writes = txn.writes();
        match apply_one(&mut txn, engine, req, &mut effects) {
            Ok(response) => responses.push(response),
            Err(e) => {
                let rejection = refusal(e)?;
                if txn.writes() != writes {
                    // Refused after some writes (checks come first, so never expected): the
                    // run is applied again up to it, and it alone next, writing nothing.
                    return if i == 0 {
                        Ok(Applied {
                            batch: WriteBatch::new(engine),
                            responses: vec![RaftResponse::Rejected(rejection.to_pb())],
                            effects: Effects::default(),
                        })
                    } else {
                        apply(engine, &reqs[..i])
                    };
                }
                responses.push(RaftResponse::Rejected(rejection.to_pb()));
            }
        }
    }
    let (batch, events) = txn.finish();
    effects.events = events;
    Ok(Applied {
        batch,
        responses,
        effects,
    })
}

/// etcd's semantics for the raft state machine: applies requests with [`apply`], then tells
/// the observers (the watch hub, the lessor, the compactor) what each written batch changed.
pub struct Applier {
    hub: Hub,
    lessor: Arc<Lessor>,
    compactor: Compactor,
}

impl Applier {
    pub fn new(hub: Hub, lessor: Arc<Lessor>, compactor: Compactor) -> Self {
        Applier { hub, lessor, compactor }
    }
}

impl crate::raft::state_machine::Application for Applier {
    type Effects = Effects;

    fn apply(&self, engine: &Engine, reqs: &[RaftRequest]) -> storage::Result<Applied> {
        apply(engine, reqs)
    }

    fn applied(&self, effects: Effects) {
        if effects.compacted {
            self.compactor.wake();
        }
        // The batch is written: a watcher reading history finds these changes.
        publish_by_revision(&self.hub, effects.events);
        for change in effects.lease_changes {
            match change {
                LeaseChange::Granted { id, ttl } => self.lessor.granted(id, ttl),
                LeaseChange::Revoked(id) => self.lessor.revoked(id),
                LeaseChange::Checkpointed { id, remaining_ttl } => self.lessor.checkpointed(id, remaining_ttl),
            }
        }
    }

    fn reload(&self, engine: &Engine) -> storage::Result<()> {
        self.lessor.recover(lease::store::all(engine)?);
        // The snapshot may carry a compaction not physically done yet.
        self.compactor.wake();
        Ok(())
    }
}

fn revision_of(event: &Event) -> i64 {
    event.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

/// Hands the hub one revision at a time: an entry usually writes one, an expiry entry many.
fn publish_by_revision(hub: &Hub, mut events: Vec<Event>) {
    while let Some(first) = events.first() {
        let rev = revision_of(first);
        let split = events
            .iter()
            .position(|e| revision_of(e) != rev)
            .unwrap_or(events.len());
        let rest = events.split_off(split);
        hub.publish(rev, events);
        events = rest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::store::Reader;
    use crate::mvcc::{EventType, KeyValue};
    use crate::proto::cairnpb::LeaseExpiry;
    use crate::proto::etcdserverpb::{
        compare, CompactionRequest, Compare, LeaseCheckpoint, LeaseRevokeRequest, RangeRequest, RequestOp,
    };
    use crate::storage::{Cf, Cursor, ReadView};
    use raft_request::Request;

    fn engine() -> (tempfile::TempDir, Engine) {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = Engine::open(dir.path(), None).expect("open engine");
        (dir, engine)
    }

    /// Applies one request and writes its batch, as the state machine does.
    fn run(engine: &Engine, request: Request) -> (RaftResponse, Vec<Event>, Vec<LeaseChange>) {
        let mut applied = apply(engine, &[RaftRequest { request: Some(request) }]).expect("apply");
        engine.write(applied.batch, false).expect("write");
        let response = applied.responses.pop().expect("an answer");
        assert!(applied.responses.is_empty(), "one request, one answer");
        (response, applied.effects.events, applied.effects.lease_changes)
    }

    fn put(key: &str, lease: LeaseId) -> Request {
        Request::Put(crate::proto::etcdserverpb::PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            lease,
            ..Default::default()
        })
    }

    fn grant(id: LeaseId, ttl: i64) -> Request {
        Request::LeaseGrant(LeaseGrantRequest { id, ttl })
    }

    fn current_rev(engine: &Engine) -> i64 {
        Reader::new(engine).expect("reader").revisions().current
    }

    fn get(engine: &Engine, key: &str, revision: i64) -> Result<Vec<KeyValue>, KvError> {
        let reader = Reader::new(engine)?;
        let req = RangeRequest {
            key: key.into(),
            revision,
            ..Default::default()
        };
        Ok(ops::range(&reader, &req)?.kvs)
    }

    fn rejection(resp: RaftResponse) -> Rejection {
        match resp {
            RaftResponse::Rejected(r) => Rejection::from_pb(&r).expect("a known reason"),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn grant_records_the_lease_and_refuses_duplicates() {
        let (_dir, engine) = engine();
        let (resp, events, changes) = run(&engine, grant(7, 10));
        assert!(matches!(resp, RaftResponse::LeaseGrant(ref g) if g.id == 7 && g.ttl == 10));
        assert!(events.is_empty());
        assert_eq!(changes, vec![LeaseChange::Granted { id: 7, ttl: 10 }]);
        assert_eq!(lease::store::get(&engine, 7).expect("get").map(|l| l.ttl), Some(10));
        // A grant writes no revision.
        assert_eq!(current_rev(&engine), 1);

        let (resp, _, changes) = run(&engine, grant(7, 20));
        assert!(matches!(rejection(resp), Rejection::Lease(LeaseError::Exists)));
        assert!(changes.is_empty());
        assert_eq!(lease::store::get(&engine, 7).expect("get").map(|l| l.ttl), Some(10));
        let (resp, _, _) = run(&engine, grant(8, lease::MAX_LEASE_TTL + 1));
        assert!(matches!(rejection(resp), Rejection::Lease(LeaseError::TtlTooLarge)));
        assert!(!lease::store::exists(&engine, 8).expect("exists"));
    }

    #[test]
    fn revoke_deletes_attached_keys_in_one_revision() {
        let (_dir, engine) = engine();
        run(&engine, grant(7, 10));
        run(&engine, put("b", 7));
        run(&engine, put("a", 7));
        run(&engine, put("c", NO_LEASE));
        let before = current_rev(&engine);
        let (resp, events, changes) = run(&engine, Request::LeaseRevoke(LeaseRevokeRequest { id: 7 }));
        assert!(
            matches!(resp, RaftResponse::LeaseRevoke(ref r) if r.header.as_ref().map(|h| h.revision) == Some(before + 1))
        );
        let deleted: Vec<(Vec<u8>, i64)> = events
            .iter()
            .filter(|e| e.r#type == EventType::Delete as i32)
            .filter_map(|e| e.kv.as_ref().map(|kv| (kv.key.to_vec(), kv.mod_revision)))
            .collect();
        assert_eq!(deleted, vec![(b"a".to_vec(), before + 1), (b"b".to_vec(), before + 1)]);
        assert_eq!(changes, vec![LeaseChange::Revoked(7)]);
        assert!(get(&engine, "a", 0).expect("range").is_empty());
        assert_eq!(get(&engine, "c", 0).expect("range").len(), 1);
        assert!(!lease::store::exists(&engine, 7).expect("exists"));

        let (resp, _, changes) = run(&engine, Request::LeaseRevoke(LeaseRevokeRequest { id: 7 }));
        assert!(matches!(rejection(resp), Rejection::Lease(LeaseError::NotFound)));
        assert!(changes.is_empty());
    }

    #[test]
    fn every_rejection_survives_the_wire_form() {
        let all: Vec<Rejection> = vec![
            KvError::Compacted.into(),
            KvError::FutureRev.into(),
            KvError::KeyNotFound.into(),
            KvError::EmptyKey.into(),
            KvError::ValueProvided.into(),
            KvError::LeaseProvided.into(),
            KvError::TooManyOps.into(),
            KvError::DuplicateKey.into(),
            KvError::InvalidSortOption.into(),
            LeaseError::NotFound.into(),
            LeaseError::Exists.into(),
            LeaseError::TtlTooLarge.into(),
        ];
        for r in all {
            let back = Rejection::from_pb(&r.to_pb()).expect("known reason");
            assert_eq!(back.to_string(), r.to_string());
        }
        // A lease missing at the KV layer reads back as the lease layer's: the same status.
        let kv = Rejection::from_pb(&Rejection::from(KvError::LeaseNotFound).to_pb()).expect("known");
        assert_eq!(kv.to_string(), LeaseError::NotFound.to_string());
        assert!(Rejection::from_pb(&pb::Rejection { reason: 999 }).is_none());
    }

    #[test]
    fn expiry_revokes_each_lease_in_its_own_revision() {
        let (_dir, engine) = engine();
        for id in 1..=3 {
            run(&engine, grant(id, 10));
            run(&engine, put(&format!("k{id}"), id));
        }
        let before = current_rev(&engine);
        // An unknown lease (revoked by a client meanwhile) and a repeated one are skipped.
        let ids = vec![1, 2, 2, 99, 3];
        let (resp, events, changes) = run(&engine, Request::LeaseExpiry(LeaseExpiry { ids }));
        assert!(matches!(resp, RaftResponse::Empty(_)));
        let revs: Vec<i64> = events
            .iter()
            .filter_map(|e| e.kv.as_ref().map(|kv| kv.mod_revision))
            .collect();
        assert_eq!(revs, vec![before + 1, before + 2, before + 3]);
        assert_eq!(
            changes,
            vec![
                LeaseChange::Revoked(1),
                LeaseChange::Revoked(2),
                LeaseChange::Revoked(3)
            ]
        );
        assert_eq!(current_rev(&engine), before + 3);
    }

    #[test]
    fn checkpoint_records_remaining_ttl_of_existing_leases_only() {
        let (_dir, engine) = engine();
        run(&engine, grant(7, 10));
        let checkpoints = vec![
            LeaseCheckpoint {
                id: 7,
                remaining_ttl: 4,
            },
            LeaseCheckpoint {
                id: 99,
                remaining_ttl: 3,
            },
        ];
        let (resp, _, changes) = run(
            &engine,
            Request::LeaseCheckpoint(LeaseCheckpointRequest { checkpoints }),
        );
        assert!(matches!(resp, RaftResponse::Empty(_)));
        assert_eq!(
            changes,
            vec![LeaseChange::Checkpointed {
                id: 7,
                remaining_ttl: 4
            }]
        );
        assert_eq!(
            lease::store::get(&engine, 7).expect("get").map(|l| l.remaining_ttl),
            Some(4)
        );
        assert!(!lease::store::exists(&engine, 99).expect("exists"));
    }

    #[test]
    fn a_rejected_request_writes_nothing() {
        let (_dir, engine) = engine();
        run(&engine, put("k", NO_LEASE));
        let before = current_rev(&engine);
        let mut applied = apply(
            &engine,
            &[RaftRequest {
                request: Some(put("k", 42)),
            }],
        )
        .expect("apply");
        assert!(applied.batch.is_empty());
        assert!(applied.effects.events.is_empty());
        // The wire form folds KV's "lease not found" into the lease layer's: one status.
        assert!(matches!(
            rejection(applied.responses.pop().expect("an answer")),
            Rejection::Lease(LeaseError::NotFound)
        ));
        assert_eq!(current_rev(&engine), before);
    }

    #[test]
    fn compaction_drops_old_revisions_and_checks_bounds() {
        let (_dir, engine) = engine();
        for _ in 0..3 {
            run(&engine, put("k", NO_LEASE));
        }
        // Revisions 2, 3, 4.
        let compact = |revision| {
            Request::Compaction(CompactionRequest {
                revision,
                physical: true,
            })
        };
        let (resp, _, _) = run(&engine, compact(3));
        assert!(matches!(resp, RaftResponse::Compaction(_)));
        assert!(matches!(get(&engine, "k", 2), Err(KvError::Compacted)));
        assert_eq!(get(&engine, "k", 3).expect("range")[0].mod_revision, 3);
        // Apply only scheduled it; the compactor's step removes the superseded version.
        let versions = || {
            let mut cur = engine.cursor(Cf::Kv);
            cur.seek(&[]);
            let mut n = 0;
            while cur.valid() {
                n += 1;
                cur.next();
            }
            n
        };
        assert_eq!(versions(), 3);
        assert_eq!(
            compaction::step(&engine, &[], 1000).expect("step"),
            compaction::Step::Finished(3)
        );
        assert_eq!(versions(), 2);
        assert_eq!(get(&engine, "k", 3).expect("range")[0].mod_revision, 3);
        let (resp, _, _) = run(&engine, compact(3));
        assert!(matches!(rejection(resp), Rejection::Kv(KvError::Compacted)));
        let (resp, _, _) = run(&engine, compact(100));
        assert!(matches!(rejection(resp), Rejection::Kv(KvError::FutureRev)));
    }

    /// A storage fault while evaluating a compare is an error from apply (fatal to the
    /// member), never a compare that failed and a txn that took its other branch.
    #[test]
    fn storage_fault_in_a_compare_is_an_error_not_a_branch() {
        let (_dir, engine) = engine();
        let mut batch = WriteBatch::new(&engine);
        // `kv` key of "bad" at revision 1: the memcomparable key, then !1 big-endian.
        let mut raw_key = b"bad\x00\x01".to_vec();
        raw_key.extend_from_slice(&(!1u64).to_be_bytes());
        batch.put(Cf::Kv, &raw_key, &[0x7f]);
        engine.write(batch, false).expect("write");
        let txn = crate::proto::etcdserverpb::TxnRequest {
            compare: vec![Compare {
                key: b"bad".to_vec(),
                target: compare::CompareTarget::Version as i32,
                result: compare::CompareResult::Equal as i32,
                ..Default::default()
            }],
            failure: vec![RequestOp {
                request: Some(crate::proto::etcdserverpb::request_op::Request::RequestPut(
                    crate::proto::etcdserverpb::PutRequest {
                        key: b"other".to_vec(),
                        ..Default::default()
                    },
                )),
            }],
            ..Default::default()
        };
        let result = apply(
            &engine,
            &[RaftRequest {
                request: Some(Request::Txn(txn)),
            }],
        );
        assert!(result.is_err(), "a corrupt record must fail apply");
        assert_eq!(current_rev(&engine), 1);
    }

    fn raft(request: Request) -> RaftRequest {
        RaftRequest { request: Some(request) }
    }

    fn revision_of_answer(resp: &RaftResponse) -> Option<i64> {
        match resp {
            RaftResponse::Put(p) => p.header.as_ref().map(|h| h.revision),
            RaftResponse::DeleteRange(d) => d.header.as_ref().map(|h| h.revision),
            RaftResponse::Txn(t) => t.header.as_ref().map(|h| h.revision),
            _ => None,
        }
    }

    fn put_op(key: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(
                crate::proto::etcdserverpb::PutRequest {
                    key: key.into(),
                    value: b"v".to_vec(),
                    ..Default::default()
                },
            )),
        }
    }

    /// A group-commit entry's KV requests are one batch, each request at the revision it
    /// would get alone and seeing the ones before it; a lease request ends the run.
    #[test]
    fn a_run_of_kv_requests_is_one_batch_with_a_revision_each() {
        let (_dir, engine) = engine();
        let start = current_rev(&engine);
        let reqs = [
            raft(put("a", NO_LEASE)),
            raft(put("a", NO_LEASE)),
            // Refused (no such key to keep the value of): no write, no revision.
            raft(Request::Put(crate::proto::etcdserverpb::PutRequest {
                key: "zz".into(),
                ignore_value: true,
                ..Default::default()
            })),
            raft(Request::DeleteRange(crate::proto::etcdserverpb::DeleteRangeRequest {
                key: "a".into(),
                ..Default::default()
            })),
            raft(put("a", NO_LEASE)),
            raft(grant(7, 10)),
            raft(put("b", 7)),
        ];
        let applied = apply(&engine, &reqs).expect("apply");
        assert_eq!(applied.responses.len(), 5, "the grant starts a run of its own");
        let revs: Vec<Option<i64>> = applied.responses.iter().map(revision_of_answer).collect();
        assert_eq!(
            revs,
            [Some(start + 1), Some(start + 2), None, Some(start + 3), Some(start + 4)]
        );
        assert!(matches!(
            rejection(applied.responses[2].clone()),
            Rejection::Kv(KvError::KeyNotFound)
        ));
        let events = &applied.effects.events;
        let shape: Vec<(i32, i64, i64)> = events
            .iter()
            .map(|e| {
                let kv = e.kv.as_ref().expect("kv");
                (e.r#type, kv.mod_revision, kv.version)
            })
            .collect();
        let (put_t, del_t) = (EventType::Put as i32, EventType::Delete as i32);
        assert_eq!(
            shape,
            [
                (put_t, start + 1, 1),
                (put_t, start + 2, 2),
                (del_t, start + 3, 0),
                (put_t, start + 4, 1)
            ]
        );
        assert_eq!(
            events[1].prev_kv.as_ref().map(|p| p.version),
            Some(1),
            "sees the run's first put"
        );
        engine.write(applied.batch, false).expect("write");
        assert_eq!(current_rev(&engine), start + 4);
        let now = get(&engine, "a", 0).expect("range");
        assert_eq!((now[0].create_revision, now[0].version), (start + 4, 1));
        assert_eq!(get(&engine, "a", start + 2).expect("range")[0].version, 2);

        let applied = apply(&engine, &reqs[5..]).expect("apply");
        assert_eq!(applied.responses.len(), 1, "a lease request goes alone");
        engine.write(applied.batch, false).expect("write");
        let applied = apply(&engine, &reqs[6..]).expect("apply");
        assert_eq!(
            applied.responses.iter().map(revision_of_answer).collect::<Vec<_>>(),
            [Some(start + 5)]
        );
    }

    #[test]
    fn a_txn_in_a_run_compares_against_the_earlier_writes_and_a_past_read_goes_alone() {
        let (_dir, engine) = engine();
        let version_is_one = crate::proto::etcdserverpb::TxnRequest {
            compare: vec![Compare {
                key: b"a".to_vec(),
                target: compare::CompareTarget::Version as i32,
                result: compare::CompareResult::Equal as i32,
                target_union: Some(compare::TargetUnion::Version(1)),
                ..Default::default()
            }],
            success: vec![put_op("then")],
            failure: vec![put_op("else")],
        };
        let past_read = crate::proto::etcdserverpb::TxnRequest {
            success: vec![
                put_op("c"),
                RequestOp {
                    request: Some(request_op::Request::RequestRange(RangeRequest {
                        key: b"a".to_vec(),
                        revision: 2,
                        ..Default::default()
                    })),
                },
            ],
            ..Default::default()
        };
        let reqs = [
            raft(put("a", NO_LEASE)),
            raft(Request::Txn(version_is_one)),
            raft(Request::Txn(past_read)),
        ];
        let applied = apply(&engine, &reqs).expect("apply");
        assert_eq!(applied.responses.len(), 2, "a txn reading a past revision starts a run");
        assert!(matches!(&applied.responses[1], RaftResponse::Txn(t) if t.succeeded));
        engine.write(applied.batch, false).expect("write");
        assert_eq!(get(&engine, "then", 0).expect("range").len(), 1);
        assert!(get(&engine, "else", 0).expect("range").is_empty());
    }
}
