//! etcd's Cluster service. Membership lives in the raft state; only listing it exists until
//! multi-member clusters land.

use tonic::{Request, Response, Status};

use super::Header;
use crate::error::unimplemented;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};
use crate::raft::Proposer;

pub struct ClusterService {
    proposer: Proposer,
    header: Header,
}

impl ClusterService {
    pub fn new(proposer: Proposer, header: Header) -> Self {
        ClusterService { proposer, header }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, _r: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        Err(unimplemented("MemberAdd"))
    }

    async fn member_remove(&self, _r: Request<MemberRemoveRequest>) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(unimplemented("MemberRemove"))
    }

    async fn member_update(&self, _r: Request<MemberUpdateRequest>) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(unimplemented("MemberUpdate"))
    }

    async fn member_list(&self, request: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.proposer.read_barrier().await?;
        }
        let metrics = self.proposer.raft().metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let learners: Vec<u64> = membership.learner_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| Member {
                id: *id,
                name: node.name.clone(),
                peer_ur_ls: node.peer_urls.clone(),
                client_ur_ls: node.client_urls.clone(),
                is_learner: learners.contains(id),
            })
            .collect();
        Ok(Response::new(MemberListResponse {
            header: self.header.without_revision(),
            members,
        }))
    }

    async fn member_promote(
        &self,
        _r: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(unimplemented("MemberPromote"))
    }
}
