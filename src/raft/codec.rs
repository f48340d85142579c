//! openraft's types to and from Cairn's stable protobuf records (`proto/cairn/raftpb.proto`).

use std::collections::{BTreeMap, BTreeSet};

use openraft::{CommittedLeaderId, EntryPayload};
use prost::Message;

use super::typ;
use crate::cluster::MemberNode;
use crate::proto::cairnpb;
use crate::storage::{self, Cf};

pub fn log_id_to_pb(id: &typ::LogId) -> cairnpb::LogId {
    cairnpb::LogId {
        term: id.leader_id.term,
        node_id: id.leader_id.node_id,
        index: id.index,
    }
}

pub fn log_id_from_pb(id: &cairnpb::LogId) -> typ::LogId {
    typ::LogId::new(CommittedLeaderId::new(id.term, id.node_id), id.index)
}

pub fn vote_to_pb(v: &typ::Vote) -> cairnpb::Vote {
    cairnpb::Vote {
        term: v.leader_id.term,
        voted_for: v.leader_id.node_id,
        has_voted_for: true,
        committed: v.committed,
    }
}

pub fn vote_from_pb(v: &cairnpb::Vote) -> typ::Vote {
    if v.committed {
        typ::Vote::new_committed(v.term, v.voted_for)
    } else {
        typ::Vote::new(v.term, v.voted_for)
    }
}

pub fn membership_to_pb(m: &typ::Membership) -> cairnpb::Membership {
    cairnpb::Membership {
        configs: m
            .get_joint_config()
            .iter()
            .map(|set| cairnpb::NodeIdSet {
                ids: set.iter().copied().collect(),
            })
            .collect(),
        nodes: m
            .nodes()
            .map(|(id, n)| cairnpb::Member {
                id: *id,
                name: n.name.clone(),
                peer_urls: n.peer_urls.clone(),
                client_urls: n.client_urls.clone(),
            })
            .collect(),
    }
}

pub fn membership_from_pb(m: &cairnpb::Membership) -> typ::Membership {
    let configs: Vec<BTreeSet<u64>> = m.configs.iter().map(|s| s.ids.iter().copied().collect()).collect();
    let nodes: BTreeMap<u64, MemberNode> = m
        .nodes
        .iter()
        .map(|n| {
            (
                n.id,
                MemberNode {
                    name: n.name.clone(),
                    peer_urls: n.peer_urls.clone(),
                    client_urls: n.client_urls.clone(),
                },
            )
        })
        .collect();
    typ::Membership::new(configs, nodes)
}

pub fn stored_membership_to_pb(m: &typ::StoredMembership) -> cairnpb::StoredMembership {
    cairnpb::StoredMembership {
        log_id: m.log_id().as_ref().map(log_id_to_pb),
        membership: Some(membership_to_pb(m.membership())),
    }
}

pub fn stored_membership_from_pb(m: &cairnpb::StoredMembership) -> typ::StoredMembership {
    let membership = m.membership.as_ref().map(membership_from_pb).unwrap_or_default();
    typ::StoredMembership::new(m.log_id.as_ref().map(log_id_from_pb), membership)
}

pub fn entry_to_bytes(e: &typ::Entry) -> Vec<u8> {
    let payload = match &e.payload {
        EntryPayload::Blank => cairnpb::log_entry::Payload::Blank(cairnpb::Blank {}),
        EntryPayload::Normal(req) => cairnpb::log_entry::Payload::Normal(req.clone()),
        EntryPayload::Membership(m) => cairnpb::log_entry::Payload::Membership(membership_to_pb(m)),
    };
    cairnpb::LogEntry {
        log_id: Some(log_id_to_pb(&e.log_id)),
        payload: Some(payload),
    }
    .encode_to_vec()
}

pub fn entry_from_bytes(raw: &[u8]) -> storage::Result<typ::Entry> {
    let pb = cairnpb::LogEntry::decode(raw).map_err(|e| storage::Error::corrupt(Cf::RaftLog, e.to_string()))?;
    let log_id = pb
        .log_id
        .as_ref()
        .map(log_id_from_pb)
        .ok_or_else(|| storage::Error::corrupt(Cf::RaftLog, "entry without log id"))?;
    let payload = match pb.payload {
        Some(cairnpb::log_entry::Payload::Blank(_)) => EntryPayload::Blank,
        Some(cairnpb::log_entry::Payload::Normal(req)) => EntryPayload::Normal(req),
        Some(cairnpb::log_entry::Payload::Membership(m)) => EntryPayload::Membership(membership_from_pb(&m)),
        None => return Err(storage::Error::corrupt(Cf::RaftLog, "entry without payload")),
    };
    Ok(typ::Entry { log_id, payload })
}

/// Decodes a protobuf record read from `cf`.
pub fn decode<M: Message + Default>(cf: Cf, raw: &[u8]) -> storage::Result<M> {
    M::decode(raw).map_err(|e| storage::Error::corrupt(cf, e.to_string()))
}
