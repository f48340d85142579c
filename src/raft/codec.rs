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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::cairnpb::{raft_request, RaftRequest};
    use crate::proto::etcdserverpb::PutRequest;

    fn node(name: &str) -> MemberNode {
        MemberNode {
            name: name.to_string(),
            peer_urls: vec![format!("http://{name}:2380")],
            client_urls: vec![format!("http://{name}:2379"), format!("http://{name}:22379")],
        }
    }

    fn log_id(term: u64, node: u64, index: u64) -> typ::LogId {
        typ::LogId::new(CommittedLeaderId::new(term, node), index)
    }

    fn joint_membership() -> typ::Membership {
        let nodes = BTreeMap::from([(1, node("a")), (2, node("b")), (3, node("c")), (4, node("learner"))]);
        typ::Membership::new(vec![BTreeSet::from([1, 2]), BTreeSet::from([1, 2, 3])], nodes)
    }

    #[test]
    fn log_ids_and_votes_round_trip() {
        let id = log_id(7, 0x8e9e05c52164694d, u64::MAX);
        assert_eq!(log_id_from_pb(&log_id_to_pb(&id)), id);
        for vote in [typ::Vote::new(3, 2), typ::Vote::new_committed(4, 1)] {
            assert_eq!(vote_from_pb(&vote_to_pb(&vote)), vote);
        }
    }

    #[test]
    fn memberships_round_trip_with_joint_configs_and_learners() {
        let m = joint_membership();
        assert_eq!(membership_from_pb(&membership_to_pb(&m)), m);
        let stored = typ::StoredMembership::new(Some(log_id(2, 1, 9)), m);
        assert_eq!(stored_membership_from_pb(&stored_membership_to_pb(&stored)), stored);
        let empty = typ::StoredMembership::default();
        assert_eq!(stored_membership_from_pb(&stored_membership_to_pb(&empty)), empty);
    }

    #[test]
    fn entries_round_trip() {
        let put = RaftRequest {
            request: Some(raft_request::Request::Put(PutRequest {
                key: b"k\x00\xff".to_vec(),
                value: vec![0; 300],
                lease: 42,
                ..Default::default()
            })),
        };
        let payloads = [
            EntryPayload::Blank,
            EntryPayload::Normal(put),
            EntryPayload::Membership(joint_membership()),
        ];
        for (i, payload) in payloads.into_iter().enumerate() {
            let entry = typ::Entry {
                log_id: log_id(1, 1, i as u64 + 1),
                payload,
            };
            let back = entry_from_bytes(&entry_to_bytes(&entry)).expect("decode");
            assert_eq!(back.log_id, entry.log_id);
            assert_eq!(format!("{:?}", back.payload), format!("{:?}", entry.payload));
        }
    }

    #[test]
    fn malformed_entries_are_corruption_errors() {
        assert!(entry_from_bytes(b"\xff\xff\xff").is_err());
        let no_log_id = cairnpb::LogEntry {
            log_id: None,
            payload: Some(cairnpb::log_entry::Payload::Blank(cairnpb::Blank {})),
        };
        assert!(entry_from_bytes(&no_log_id.encode_to_vec()).is_err());
        let no_payload = cairnpb::LogEntry {
            log_id: Some(log_id_to_pb(&log_id(1, 1, 1))),
            payload: None,
        };
        assert!(entry_from_bytes(&no_payload.encode_to_vec()).is_err());
    }
}
