//! etcd's KV service.

use tonic::{Request, Response, Status};

use super::{blocking, propose, unexpected, Header};
use crate::apply::RaftResponse;
use crate::error::ServerError;
use crate::mvcc::compaction::Compactor;
use crate::mvcc::ops;
use crate::mvcc::view::StoreView;
use crate::mvcc::KvError;
use crate::proto::cairnpb::raft_request;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use crate::raft::Proposer;

pub struct KvService {
    proposer: Proposer,
    view: StoreView,
    header: Header,
    max_txn_ops: usize,
    compactor: Compactor,
}

impl KvService {
    pub fn new(proposer: Proposer, view: StoreView, header: Header, max_txn_ops: usize, compactor: Compactor) -> Self {
        KvService {
            proposer,
            view,
            header,
            max_txn_ops,
            compactor,
        }
    }

    async fn propose(&self, request: raft_request::Request) -> Result<RaftResponse, ServerError> {
        propose(&self.proposer, request).await
    }

    /// A read on this member's state: after the read barrier unless serializable. A read
    /// of one key (`one_key`) is a single seek, served on the calling worker: the hand-off
    /// to the blocking pool would cost more than the read. Anything larger goes there, so
    /// that a big range cannot hold up the async workers.
    async fn read<T: Send + 'static>(
        &self,
        serializable: bool,
        one_key: bool,
        f: impl FnOnce(&StoreView) -> Result<T, KvError> + Send + 'static,
    ) -> Result<T, Status> {
        if !serializable {
            self.proposer.read_barrier().await?;
        }
        if one_key {
            return Ok(f(&self.view).map_err(ServerError::from)?);
        }
        let view = self.view.clone();
        let out = blocking(move || f(&view).map_err(ServerError::from)).await?;
        Ok(out)
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let r = request.into_inner();
        ops::check_range_request(&r)?;
        let serializable = r.serializable;
        let one_key = r.range_end.is_empty();
        let mut resp = self.read(serializable, one_key, move |view| view.range(&r)).await?;
        self.header.fill(&mut resp.header)?;
        Ok(Response::new(resp))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let r = request.into_inner();
        ops::check_put_request(&r)?;
        match self.propose(raft_request::Request::Put(r)).await? {
            RaftResponse::Put(mut resp) => {
                self.header.fill(&mut resp.header)?;
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let r = request.into_inner();
        ops::check_delete_request(&r)?;
        match self.propose(raft_request::Request::DeleteRange(r)).await? {
            RaftResponse::DeleteRange(mut resp) => {
                self.header.fill(&mut resp.header)?;
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let r = request.into_inner();
        ops::check_txn_request(&r, self.max_txn_ops)?;
        let mut resp = if ops::is_txn_readonly(&r) {
            // etcd serves read-only txns locally too, serializable only when every range is.
            let serializable = r.success.iter().chain(&r.failure).all(|op| {
                matches!(&op.request, Some(crate::proto::etcdserverpb::request_op::Request::RequestRange(q)) if q.serializable)
            });
            self.read(serializable, false, move |view| view.read_txn(&r)).await?
        } else {
            match self.propose(raft_request::Request::Txn(r)).await? {
                RaftResponse::Txn(resp) => resp,
                other => return Err(unexpected(other)),
            }
        };
        self.header.fill(&mut resp.header)?;
        Ok(Response::new(resp))
    }

    async fn compact(&self, request: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        let r = request.into_inner();
        let (revision, physical) = (r.revision, r.physical);
        match self.propose(raft_request::Request::Compaction(r)).await? {
            RaftResponse::Compaction(mut resp) => {
                // Applied means logically compacted; `physical` also waits for the versions
                // to be gone, as etcd's does.
                if physical {
                    self.compactor.wait_finished(revision).await;
                }
                self.header.fill(&mut resp.header)?;
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }
}
