//! Consensus: openraft's type configuration, storage and network adapters.
//! Nothing here knows etcd semantics; that is `apply` and `mvcc`.

// openraft fixes the error type of its storage traits (`StorageError`, ~200 bytes); boxing it
// here would only add a conversion at every trait boundary.
#![allow(clippy::result_large_err)]

pub mod codec;
pub mod io;
pub mod log_store;
pub mod network;
pub mod state_machine;

use std::io::Cursor;

use crate::cluster::MemberNode;
/// What applying an entry answers: the application's business, carried as a protobuf.
pub use crate::proto::cairnpb::raft_response::Response as RaftResponse;
use crate::proto::cairnpb::RaftRequest;

openraft::declare_raft_types!(
    pub TypeConfig:
        D = RaftRequest,
        R = RaftResponse,
        NodeId = u64,
        Node = MemberNode,
);

/// openraft's generic types, spelled once.
pub mod typ {
    use super::TypeConfig;
    use crate::cluster::MemberNode;

    pub type Raft = openraft::Raft<TypeConfig>;
    pub type Entry = openraft::Entry<TypeConfig>;
    pub type LogId = openraft::LogId<u64>;
    pub type Vote = openraft::Vote<u64>;
    pub type StoredMembership = openraft::StoredMembership<u64, MemberNode>;
    pub type Membership = openraft::Membership<u64, MemberNode>;
    pub type SnapshotMeta = openraft::SnapshotMeta<u64, MemberNode>;
    pub type Snapshot = openraft::Snapshot<TypeConfig>;
    pub type StorageError = openraft::StorageError<u64>;
}

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use prost::Message;
use tokio::sync::Semaphore;

/// Why a proposal or a read barrier did not go through. `error.rs` gives these etcd's wire
/// form.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("request is too large")]
    RequestTooLarge,
    #[error("no leader")]
    NoLeader,
    #[error("request timed out")]
    Timeout,
    #[error("server stopped")]
    Stopped,
    #[error("too many requests")]
    TooManyRequests,
    #[error("{0}")]
    Internal(String),
}

/// Runs blocking RocksDB work off the async workers; a failed task (a panic) is reported as
/// a storage error about `subject` (the log or the state machine).
pub(crate) async fn blocking<T: Send + 'static>(
    subject: fn(&std::io::Error) -> openraft::StorageIOError<u64>,
    f: impl FnOnce() -> Result<T, typ::StorageError> + Send + 'static,
) -> Result<T, typ::StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| typ::StorageError::from(subject(&std::io::Error::other(e.to_string()))))?
}

/// The most proposals committed but not yet applied before new ones are refused: etcd's
/// `maxGapBetweenApplyAndCommitIndex`. openraft 0.9 does not publish its commit index, so the
/// gap is measured from the last appended index, which is at or past it.
const MAX_APPLY_GAP: u64 = 5000;

/// Bytes of proposals in flight (proposed, not yet answered) at most; a request counts at
/// least `MIN_PROPOSAL_COST`. Beyond it, proposers wait (up to their timeout) instead of
/// queueing without bound inside openraft, whose proposal queue has no limit of its own.
const MAX_INFLIGHT_BYTES: usize = 64 << 20;
const MIN_PROPOSAL_COST: usize = 1024;
/// The semaphore counts kibibytes.
const PERMIT_BYTES: usize = 1024;

/// How the API reaches consensus: proposals and the linearizable-read barrier.
#[derive(Clone)]
pub struct Proposer {
    raft: typ::Raft,
    request_timeout: Duration,
    max_request_bytes: usize,
    inflight: Arc<Semaphore>,
}

impl Proposer {
    pub fn new(raft: typ::Raft, request_timeout: Duration, max_request_bytes: usize) -> Self {
        Proposer {
            raft,
            request_timeout,
            max_request_bytes,
            inflight: Arc::new(Semaphore::new(MAX_INFLIGHT_BYTES / PERMIT_BYTES)),
        }
    }

    /// etcd's guard: refuse new work while apply is far behind the log.
    fn check_apply_gap(&self) -> Result<(), ProposeError> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let appended = m.last_log_index.unwrap_or(0);
        let applied = m.last_applied.map_or(0, |id| id.index);
        if appended.saturating_sub(applied) > MAX_APPLY_GAP {
            return Err(ProposeError::TooManyRequests);
        }
        Ok(())
    }

    /// Proposes a mutation and waits until it is applied; returns what applying it answered.
    pub async fn propose(&self, req: RaftRequest) -> Result<RaftResponse, ProposeError> {
        let size = req.encoded_len();
        if size > self.max_request_bytes {
            return Err(ProposeError::RequestTooLarge);
        }
        self.check_apply_gap()?;
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let cost = size.max(MIN_PROPOSAL_COST).div_ceil(PERMIT_BYTES);
        let cost = u32::try_from(cost).map_err(|_| ProposeError::RequestTooLarge)?;
        let _permit = tokio::time::timeout_at(deadline, self.inflight.acquire_many(cost))
            .await
            .map_err(|_| ProposeError::Timeout)?
            .map_err(|_| ProposeError::Stopped)?;
        let result = tokio::time::timeout_at(deadline, self.raft.client_write(req))
            .await
            .map_err(|_| ProposeError::Timeout)?;
        match result {
            Ok(resp) => Ok(resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(ProposeError::NoLeader),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(ProposeError::Internal(e.to_string()))
            }
            Err(RaftError::Fatal(_)) => Err(ProposeError::Stopped),
        }
    }

    /// Returns once this member has applied everything committed before the call: a read
    /// after it is linearizable.
    pub async fn read_barrier(&self) -> Result<(), ProposeError> {
        let result = tokio::time::timeout(self.request_timeout, self.raft.ensure_linearizable())
            .await
            .map_err(|_| ProposeError::Timeout)?;
        match result {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(_)) => Err(ProposeError::NoLeader),
            Err(RaftError::Fatal(_)) => Err(ProposeError::Stopped),
        }
    }

    pub fn raft(&self) -> &typ::Raft {
        &self.raft
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use openraft::testing::{StoreBuilder, Suite};

    use super::log_store::LogStore;
    use super::state_machine::{Application, Applied, StateMachine};
    use super::{typ, RaftResponse, TypeConfig};
    use crate::proto::cairnpb::{Blank, RaftRequest};
    use crate::storage::{self, Engine, WriteBatch};

    /// An application that writes nothing: the suite checks raft's own bookkeeping.
    struct NoApp;

    impl Application for NoApp {
        type Effects = ();
        fn apply(&self, engine: &Engine, _req: &RaftRequest) -> storage::Result<Applied<()>> {
            Ok(Applied {
                batch: WriteBatch::new(engine),
                response: RaftResponse::Empty(Blank {}),
                effects: (),
            })
        }
        fn applied(&self, (): ()) {}
        fn reload(&self, _engine: &Engine) -> storage::Result<()> {
            Ok(())
        }
    }

    struct RocksBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine<NoApp>, tempfile::TempDir> for RocksBuilder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine<NoApp>), typ::StorageError> {
            let dir = tempfile::tempdir().map_err(|e| openraft::StorageIOError::write(&e))?;
            let engine = Engine::open(dir.path(), None).map_err(|e| openraft::StorageIOError::write(&e))?;
            let log = LogStore::new(engine.clone()).map_err(|e| openraft::StorageIOError::write(&e))?;
            let sm = StateMachine::new(engine, Arc::new(NoApp)).map_err(|e| openraft::StorageIOError::write(&e))?;
            Ok((dir, log, sm))
        }
    }

    /// openraft's own conformance suite for log stores and state machines.
    #[test]
    fn openraft_storage_suite() -> Result<(), typ::StorageError> {
        Suite::test_all(RocksBuilder)
    }
}
