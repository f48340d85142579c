//! The peer network. A single-member cluster sends no raft traffic; the peer transport
//! (gRPC on the peer URL) arrives with multi-member clusters. Until then every RPC reports
//! the peer unreachable, which is the truth: no peer listener exists.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};

use super::TypeConfig;
use crate::cluster::MemberNode;

#[derive(Clone, Default)]
pub struct PeerNetwork;

pub struct PeerClient {
    target: u64,
}

fn unreachable<E: std::error::Error>(target: u64) -> RPCError<u64, MemberNode, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(format!(
        "no peer transport to member {target:x}: multi-member clusters are not supported yet"
    ))))
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, _node: &MemberNode) -> PeerClient {
        PeerClient { target }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, MemberNode, RaftError<u64>>> {
        Err(unreachable(self.target))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, MemberNode, RaftError<u64, InstallSnapshotError>>> {
        Err(unreachable(self.target))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, MemberNode, RaftError<u64>>> {
        Err(unreachable(self.target))
    }
}
