//! The gRPC API: one file per etcd service, translating protos to calls on consensus and
//! the mvcc read facade (`mvcc::view`). Handlers validate, route (local read or proposal),
//! map errors and fill headers.

pub mod cluster;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod unimplemented;
pub mod watch;

use crate::apply::RaftResponse;
use crate::error::ServerError;
use crate::mvcc::view::StoreView;
use crate::proto::cairnpb::{raft_request, RaftRequest};
use crate::proto::etcdserverpb::ResponseHeader;
use crate::raft::{typ, Proposer};

/// Fills response headers as etcd's `header.fill` does: cluster and member ids, the raft
/// term, and the current revision when the handler left it 0.
#[derive(Clone)]
pub struct Header {
    pub cluster_id: u64,
    pub member_id: u64,
    raft: typ::Raft,
    view: StoreView,
}

impl Header {
    pub fn new(cluster_id: u64, member_id: u64, raft: typ::Raft, view: StoreView) -> Self {
        Header {
            cluster_id,
            member_id,
            raft,
            view,
        }
    }

    pub fn raft_term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// The header etcd's Cluster service sends: no revision.
    pub fn without_revision(&self) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            raft_term: self.raft_term(),
            revision: 0,
        })
    }

    pub fn fill(&self, header: &mut Option<ResponseHeader>) -> Result<(), ServerError> {
        let h = header.get_or_insert_with(ResponseHeader::default);
        h.cluster_id = self.cluster_id;
        h.member_id = self.member_id;
        h.raft_term = self.raft_term();
        if h.revision == 0 {
            h.revision = self.view.revisions()?.current;
        }
        Ok(())
    }
}

/// Runs blocking reads (RocksDB gets, scans, hashing) off the async workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ServerError> + Send + 'static,
) -> Result<T, ServerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServerError::Internal(format!("read task failed: {e}")))?
}

/// Proposes one request and waits for it to apply; a deterministic refusal in apply becomes
/// the client's error.
pub async fn propose(proposer: &Proposer, request: raft_request::Request) -> Result<RaftResponse, ServerError> {
    match proposer.propose(RaftRequest { request: Some(request) }).await? {
        RaftResponse::Rejected(e) => Err(e.into()),
        other => Ok(other),
    }
}

/// An apply answer of another kind than the request's: a bug, reported as Internal.
pub fn unexpected(resp: RaftResponse) -> tonic::Status {
    ServerError::Internal(format!("unexpected apply response {resp:?}")).into()
}
