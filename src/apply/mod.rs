//! The one apply entry: a committed `RaftRequest` becomes a write batch and a response.
//! Deterministic: no clock, no randomness, nothing but the request and the stored state.

use crate::lease::{self, LeaseError, LeaseId, NO_LEASE};
use crate::mvcc::compaction;
use crate::mvcc::ops::{self, header, LeaseLookup};
use crate::mvcc::store::{KvRead, KvWrite, WriteTxn};
use crate::mvcc::{Event, KeyRange, KvError};
use crate::proto::cairnpb::{raft_request, Lease, RaftRequest};
use crate::proto::etcdserverpb::{
    CompactionResponse, DeleteRangeResponse, LeaseCheckpointRequest, LeaseGrantRequest, LeaseGrantResponse,
    LeaseRevokeResponse, PutResponse, TxnResponse,
};
use crate::storage::{self, Engine, WriteBatch};

/// What applying one log entry answers to the proposer.
#[derive(Debug)]
pub enum RaftResponse {
    /// Blank, membership and checkpoint entries answer nothing.
    Empty,
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    /// The request was refused deterministically and changed nothing.
    Rejected(Rejection),
}

/// Why a request was refused, by the layer that refused it.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
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

/// What applying one request produced: the batch to write (empty if refused), the answer,
/// the watch events to publish and the lease changes to report once the batch is written.
pub struct Applied {
    pub batch: WriteBatch,
    pub response: RaftResponse,
    pub events: Vec<Event>,
    pub lease_changes: Vec<LeaseChange>,
}

impl Applied {
    /// An entry that changes no key (blank and membership entries).
    pub fn nothing(engine: &Engine) -> Self {
        Applied {
            batch: WriteBatch::new(engine),
            response: RaftResponse::Empty,
            events: Vec::new(),
            lease_changes: Vec::new(),
        }
    }
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
    Ok(RaftResponse::Empty)
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
    Ok(RaftResponse::Empty)
}

/// Applies one request. The caller adds the log id to the batch and writes it.
pub fn apply(engine: &Engine, req: &RaftRequest) -> Result<Applied, storage::Error> {
    use raft_request::Request;
    let mut txn = WriteTxn::begin(engine)?;
    let leases = StoredLeases(engine);
    let mut lease_changes = Vec::new();
    let result = match &req.request {
        Some(Request::Put(p)) => ops::put(&mut txn, p, &leases, false)
            .map(RaftResponse::Put)
            .map_err(Rejection::from),
        Some(Request::DeleteRange(d)) => ops::delete_range(&mut txn, d)
            .map(RaftResponse::DeleteRange)
            .map_err(Rejection::from),
        Some(Request::Txn(t)) => ops::txn(&mut txn, t, &leases)
            .map(RaftResponse::Txn)
            .map_err(Rejection::from),
        Some(Request::Compaction(c)) => {
            let revs = txn.reader().revisions();
            compaction::check(revs.current, revs.compacted, c.revision)
                .and_then(|()| {
                    compaction::compact(engine, txn.batch_mut(), revs.compacted, c.revision)?;
                    Ok(RaftResponse::Compaction(CompactionResponse {
                        header: header(txn.rev()),
                    }))
                })
                .map_err(Rejection::from)
        }
        Some(Request::LeaseGrant(g)) => grant(&mut txn, engine, g).inspect(|_| {
            lease_changes.push(LeaseChange::Granted { id: g.id, ttl: g.ttl });
        }),
        Some(Request::LeaseRevoke(r)) => revoke(&mut txn, engine, r.id).inspect(|_| {
            lease_changes.push(LeaseChange::Revoked(r.id));
        }),
        Some(Request::LeaseCheckpoint(c)) => checkpoint(&mut txn, engine, c, &mut lease_changes),
        Some(Request::LeaseExpiry(e)) => expire(&mut txn, engine, &e.ids, &mut lease_changes),
        None => Ok(RaftResponse::Empty),
    };
    match result {
        Ok(response) => {
            let (batch, events) = txn.finish();
            Ok(Applied {
                batch,
                response,
                events,
                lease_changes,
            })
        }
        Err(e) => Ok(Applied {
            batch: WriteBatch::new(engine),
            response: RaftResponse::Rejected(refusal(e)?),
            events: Vec::new(),
            lease_changes: Vec::new(),
        }),
    }
}
