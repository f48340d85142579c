//! Consensus: openraft's type configuration, storage and network adapters.
//! Nothing here knows etcd semantics; that is `apply` and `mvcc`.

// openraft fixes the error type of its storage traits (`StorageError`, ~200 bytes); boxing it
// here would only add a conversion at every trait boundary.
#![allow(clippy::result_large_err)]

pub mod codec;
pub mod log_store;
pub mod network;
pub mod state_machine;

use std::io::Cursor;

use crate::apply::RaftResponse;
use crate::cluster::MemberNode;
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

use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use prost::Message;

use crate::error::ServerError;

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

/// How the API reaches consensus: proposals and the linearizable-read barrier.
#[derive(Clone)]
pub struct Proposer {
    raft: typ::Raft,
    request_timeout: Duration,
    max_request_bytes: usize,
}

impl Proposer {
    pub fn new(raft: typ::Raft, request_timeout: Duration, max_request_bytes: usize) -> Self {
        Proposer {
            raft,
            request_timeout,
            max_request_bytes,
        }
    }

    /// Proposes a mutation and waits until it is applied; returns what applying it answered.
    pub async fn propose(&self, req: RaftRequest) -> Result<RaftResponse, ServerError> {
        if req.encoded_len() > self.max_request_bytes {
            return Err(ServerError::RequestTooLarge);
        }
        let result = tokio::time::timeout(self.request_timeout, self.raft.client_write(req))
            .await
            .map_err(|_| ServerError::Timeout)?;
        match result {
            Ok(resp) => Ok(resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(ServerError::NoLeader),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(ServerError::Internal(e.to_string()))
            }
            Err(RaftError::Fatal(_)) => Err(ServerError::Stopped),
        }
    }

    /// Returns once this member has applied everything committed before the call: a read
    /// after it is linearizable.
    pub async fn read_barrier(&self) -> Result<(), ServerError> {
        let result = tokio::time::timeout(self.request_timeout, self.raft.ensure_linearizable())
            .await
            .map_err(|_| ServerError::Timeout)?;
        match result {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(_)) => Err(ServerError::NoLeader),
            Err(RaftError::Fatal(_)) => Err(ServerError::Stopped),
        }
    }

    pub fn raft(&self) -> &typ::Raft {
        &self.raft
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};

    use super::log_store::LogStore;
    use super::state_machine::StateMachine;
    use super::{typ, TypeConfig};
    use crate::storage::Engine;

    struct RocksBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RocksBuilder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), typ::StorageError> {
            let dir = tempfile::tempdir().map_err(|e| openraft::StorageIOError::write(&e))?;
            let engine = Engine::open(dir.path(), None).map_err(|e| openraft::StorageIOError::write(&e))?;
            let hub = crate::watch::Hub::new(crate::mvcc::INITIAL_REVISION);
            let log = LogStore::new(engine.clone()).map_err(|e| openraft::StorageIOError::write(&e))?;
            let lessor = std::sync::Arc::new(crate::lease::Lessor::new());
            Ok((dir, log, StateMachine::new(engine, hub, lessor)))
        }
    }

    /// openraft's own conformance suite for log stores and state machines.
    #[test]
    fn openraft_storage_suite() -> Result<(), typ::StorageError> {
        Suite::test_all(RocksBuilder)
    }
}
