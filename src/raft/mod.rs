//! Consensus: openraft's type configuration, storage and network adapters.
//! Nothing here knows etcd semantics; that is `apply` and `mvcc`.

// openraft fixes the error type of its storage traits (`StorageError`, ~200 bytes); boxing it
// here would only add a conversion at every trait boundary.
#![allow(clippy::result_large_err)]

pub mod codec;
pub mod io;
pub mod log_store;
pub mod network;
mod proposer;
pub mod state_machine;

pub use proposer::{ProposeError, Proposer};

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
        fn apply(&self, engine: &Engine, _reqs: &[RaftRequest]) -> storage::Result<Applied<()>> {
            Ok(Applied {
                batch: WriteBatch::new(engine),
                responses: vec![RaftResponse::Empty(Blank {})],
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
