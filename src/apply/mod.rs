//! The one apply entry: a committed `RaftRequest` becomes a write batch and a response.
//! Deterministic: no clock, no randomness, nothing but the request and the stored state.

use crate::mvcc::compaction;
use crate::mvcc::ops::{self, LeaseLookup};
use crate::mvcc::store::{KvRead, WriteTxn};
use crate::mvcc::{Event, KvError};
use crate::proto::cairnpb::{raft_request, RaftRequest};
use crate::proto::etcdserverpb::{CompactionResponse, DeleteRangeResponse, PutResponse, ResponseHeader, TxnResponse};
use crate::storage::{self, Engine, WriteBatch};

/// What applying one log entry answers to the proposer.
#[derive(Debug)]
pub enum RaftResponse {
    /// Blank and membership entries answer nothing.
    Empty,
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    /// The request was refused deterministically and changed nothing.
    Rejected(KvError),
}

/// The lease store as KV sees it. No lease can exist until the Lease service lands, so any
/// non-zero lease is unknown, which is etcd's answer for an unknown lease.
struct NoLeases;

impl LeaseLookup for NoLeases {
    fn lease_exists(&self, _id: i64) -> bool {
        false
    }
}

fn rejected_or_fatal(e: KvError) -> Result<RaftResponse, storage::Error> {
    match e {
        KvError::Storage(e) => Err(e),
        other => Ok(RaftResponse::Rejected(other)),
    }
}

/// What applying one request produced: the batch to write (empty if refused), the answer,
/// and the watch events to publish once the batch is written.
pub struct Applied {
    pub batch: WriteBatch,
    pub response: RaftResponse,
    pub events: Vec<Event>,
}

impl Applied {
    /// An entry that changes no key (blank and membership entries).
    pub fn nothing(engine: &Engine) -> Self {
        Applied {
            batch: WriteBatch::new(engine),
            response: RaftResponse::Empty,
            events: Vec::new(),
        }
    }
}

/// Applies one request. The caller adds the log id to the batch and writes it.
pub fn apply(engine: &Engine, req: &RaftRequest) -> Result<Applied, storage::Error> {
    let mut txn = WriteTxn::begin(engine)?;
    let result = match &req.request {
        Some(raft_request::Request::Put(p)) => ops::put(&mut txn, p, &NoLeases, false).map(RaftResponse::Put),
        Some(raft_request::Request::DeleteRange(d)) => ops::delete_range(&mut txn, d).map(RaftResponse::DeleteRange),
        Some(raft_request::Request::Txn(t)) => ops::txn(&mut txn, t, &NoLeases).map(RaftResponse::Txn),
        Some(raft_request::Request::Compaction(c)) => {
            let revs = txn.reader().revisions();
            compaction::check(revs.current, revs.compacted, c.revision).and_then(|()| {
                compaction::compact(engine, txn.batch_mut(), revs.compacted, c.revision)?;
                Ok(RaftResponse::Compaction(CompactionResponse {
                    header: Some(ResponseHeader {
                        revision: txn.rev(),
                        ..Default::default()
                    }),
                }))
            })
        }
        None => Ok(RaftResponse::Empty),
    };
    match result {
        Ok(response) => {
            let (batch, events) = txn.finish();
            Ok(Applied {
                batch,
                response,
                events,
            })
        }
        Err(e) => Ok(Applied {
            batch: WriteBatch::new(engine),
            response: rejected_or_fatal(e)?,
            events: Vec::new(),
        }),
    }
}
