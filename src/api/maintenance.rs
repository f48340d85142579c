//! etcd's Maintenance service: status, hashes and alarms.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::{blocking, Header};
use crate::config::ETCD_VERSION;
use crate::error::unimplemented;
use crate::mvcc::view::StoreView;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse,
    SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use crate::raft::Proposer;

pub struct MaintenanceService {
    proposer: Proposer,
    view: StoreView,
    header: Header,
}

impl MaintenanceService {
    pub fn new(proposer: Proposer, view: StoreView, header: Header) -> Self {
        MaintenanceService { proposer, view, header }
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let r = request.into_inner();
        if r.action != AlarmAction::Get as i32 {
            return Err(unimplemented("Alarm activate/deactivate"));
        }
        // No alarm can be raised yet (space quota and corruption checks come later).
        let mut resp = AlarmResponse::default();
        self.header.fill(&mut resp.header)?;
        Ok(Response::new(resp))
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let metrics = self.proposer.raft().metrics().borrow().clone();
        let view = self.view.clone();
        let db_size = blocking(move || Ok(view.approximate_size())).await? as i64;
        let mut resp = StatusResponse {
            version: ETCD_VERSION.to_string(),
            db_size,
            leader: metrics.current_leader.unwrap_or(0),
            raft_index: metrics.last_log_index.unwrap_or(0),
            raft_term: metrics.current_term,
            raft_applied_index: metrics.last_applied.map_or(0, |id| id.index),
            db_size_in_use: db_size,
            is_learner: false,
            ..Default::default()
        };
        self.header.fill(&mut resp.header)?;
        Ok(Response::new(resp))
    }

    async fn defragment(&self, _request: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        Err(unimplemented("Defragment"))
    }

    async fn hash(&self, _request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let view = self.view.clone();
        let hash = blocking(move || Ok(view.hash()?)).await?;
        let mut resp = HashResponse { header: None, hash };
        self.header.fill(&mut resp.header)?;
        Ok(Response::new(resp))
    }

    async fn hash_kv(&self, request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        let requested = request.into_inner().revision;
        let view = self.view.clone();
        let kv_hash = blocking(move || Ok(view.hash_kv(requested)?)).await?;
        let mut resp = HashKvResponse {
            header: None,
            hash: kv_hash.hash,
            compact_revision: kv_hash.compact_revision,
        };
        self.header.fill(&mut resp.header)?;
        Ok(Response::new(resp))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(&self, _request: Request<SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(unimplemented("Snapshot"))
    }

    async fn move_leader(&self, _request: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        Err(unimplemented("MoveLeader"))
    }

    async fn downgrade(&self, _request: Request<DowngradeRequest>) -> Result<Response<DowngradeResponse>, Status> {
        Err(unimplemented("Downgrade"))
    }
}
