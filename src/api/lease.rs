//! etcd's Lease service (`api/v3rpc/lease.go` and `etcdserver/v3_server.go`).
//!
//! Grants and revocations go through the log. Keep-alives, time-to-live and the lease list
//! are answered from the lessor, on the leader, without writing anything.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{blocking, propose, unexpected, Header};
use crate::apply::RaftResponse;
use crate::error::ServerError;
use crate::lease::lessor::Renewal;
use crate::lease::{self, IdGenerator, LeaseError, LeaseId, Lessor, NO_LEASE};
use crate::mvcc::view::StoreView;
use crate::proto::cairnpb::raft_request;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::{
    LeaseCheckpoint, LeaseCheckpointRequest, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseStatus, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::raft::{ProposeError, Proposer};

/// Keep-alive answers buffered towards one client before the stream stops reading requests.
const OUTBOUND_RESPONSES: usize = 16;

/// How often one renewal may find a fresh checkpoint in its way before giving up: each
/// round clears it through the log, and new checkpoints come at most once an interval.
const MAX_CLEAR_ROUNDS: usize = 4;

#[derive(Clone)]
pub struct LeaseService {
    proposer: Proposer,
    view: StoreView,
    header: Header,
    lessor: Arc<Lessor>,
    ids: Arc<IdGenerator>,
    min_ttl: i64,
    request_timeout: Duration,
}

impl LeaseService {
    pub fn new(
        proposer: Proposer,
        view: StoreView,
        header: Header,
        lessor: Arc<Lessor>,
        min_ttl: i64,
        request_timeout: Duration,
    ) -> Self {
        LeaseService {
            ids: Arc::new(IdGenerator::new(header.member_id)),
            proposer,
            view,
            header,
            lessor,
            min_ttl,
            request_timeout,
        }
    }

    async fn propose(&self, request: raft_request::Request) -> Result<RaftResponse, ServerError> {
        propose(&self.proposer, request).await
    }

    /// etcd's `LeaseRenew`: the granted TTL, or 0 for a lease that does not exist (an
    /// expired one counts once its revocation is applied).
    async fn renew(&self, id: LeaseId) -> Result<i64, ServerError> {
        for _ in 0..MAX_CLEAR_ROUNDS {
            match self.lessor.renew_when_settled(id, self.request_timeout).await {
                None => return Err(ServerError::Raft(ProposeError::Timeout)),
                Some(Renewal::Renewed(ttl)) => return Ok(ttl),
                Some(Renewal::NotFound) => return Ok(0),
                Some(Renewal::NotPrimary) => return Err(ServerError::Raft(ProposeError::NoLeader)),
                Some(Renewal::NeedsClear) => {
                    let clear = LeaseCheckpointRequest {
                        checkpoints: vec![LeaseCheckpoint { id, remaining_ttl: 0 }],
                    };
                    self.propose(raft_request::Request::LeaseCheckpoint(clear)).await?;
                }
                Some(Renewal::Wait) => {}
            }
        }
        Err(ServerError::Raft(ProposeError::Timeout))
    }

    async fn keep_alive_stream(
        self,
        mut inbound: Streaming<LeaseKeepAliveRequest>,
        out: mpsc::Sender<Result<LeaseKeepAliveResponse, Status>>,
    ) {
        loop {
            let req = match inbound.message().await {
                Ok(Some(req)) => req,
                // The client closed its side, or the connection broke: nothing to answer.
                Ok(None) | Err(_) => return,
            };
            // The header is taken before renewing, as etcd does: a keep-alive must never
            // report a revision later than a revocation of the same lease.
            let mut resp = LeaseKeepAliveResponse {
                id: req.id,
                ..Default::default()
            };
            let answer = match self.header.fill(&mut resp.header) {
                Ok(()) => self.renew(req.id).await.map(|ttl| {
                    resp.ttl = ttl;
                    resp
                }),
                Err(e) => Err(e),
            };
            let failed = answer.is_err();
            if out.send(answer.map_err(Status::from)).await.is_err() || failed {
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(&self, request: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        let mut r = request.into_inner();
        // Checked again in apply; refusing here saves a log entry.
        if r.ttl > lease::MAX_LEASE_TTL {
            return Err(LeaseError::TtlTooLarge.into());
        }
        if r.id == NO_LEASE {
            r.id = self.ids.next();
        }
        // Raised here rather than in apply, so the log carries the TTL every member applies
        // whatever its own election timeout.
        r.ttl = r.ttl.max(self.min_ttl);
        match self.propose(raft_request::Request::LeaseGrant(r)).await? {
            RaftResponse::LeaseGrant(mut resp) => {
                self.header.fill(&mut resp.header)?;
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let r = request.into_inner();
        match self.propose(raft_request::Request::LeaseRevoke(r)).await? {
            RaftResponse::LeaseRevoke(mut resp) => {
                self.header.fill(&mut resp.header)?;
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let (out, rx) = mpsc::channel(OUTBOUND_RESPONSES);
        tokio::spawn(self.clone().keep_alive_stream(request.into_inner(), out));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let r = request.into_inner();
        self.proposer.read_barrier().await?;
        let mut resp = match self.lessor.time_to_live(r.id) {
            // etcd answers an unknown lease with TTL -1, not an error.
            None => LeaseTimeToLiveResponse {
                id: r.id,
                ttl: -1,
                ..Default::default()
            },
            Some((granted_ttl, ttl)) => {
                let keys = if r.keys {
                    let view = self.view.clone();
                    blocking(move || Ok(view.lease_keys(r.id)?)).await?
                } else {
                    Vec::new()
                };
                LeaseTimeToLiveResponse {
                    id: r.id,
                    ttl,
                    granted_ttl,
                    keys,
                    ..Default::default()
                }
            }
        };
        self.header.fill(&mut resp.header)?;
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.proposer.read_barrier().await?;
        let mut resp = LeaseLeasesResponse {
            leases: self.lessor.leases().into_iter().map(|id| LeaseStatus { id }).collect(),
            ..Default::default()
        };
        self.header.fill(&mut resp.header)?;
        Ok(Response::new(resp))
    }
}
