//! Member records and etcd's deterministic member and cluster IDs.

use sha1::{Digest, Sha1};

/// What a member is, as raft's node data: etcd's member attributes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberNode {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

/// An etcd member ID (also this member's raft node ID).
pub type MemberId = u64;

fn sha1_prefix_u64(bytes: &[u8]) -> u64 {
    let digest = Sha1::digest(bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// etcd's `NewMember` ID for a member of the initial cluster: SHA-1 of its sorted peer URLs
/// and the cluster token, so the same flags give the same IDs as etcd.
pub fn member_id(peer_urls: &[String], cluster_token: &str) -> MemberId {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut bytes = urls.concat().into_bytes();
    bytes.extend_from_slice(cluster_token.as_bytes());
    sha1_prefix_u64(&bytes)
}

/// etcd's cluster ID: SHA-1 of the sorted member IDs.
pub fn cluster_id(member_ids: &[MemberId]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    sha1_prefix_u64(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_single_node_ids_match_etcd() {
        // `etcd` with no flags reports member 8e9e05c52164694d in cluster cdf818194e3a8c32.
        let id = member_id(&["http://localhost:2380".to_string()], "etcd-cluster");
        assert_eq!(format!("{id:x}"), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", cluster_id(&[id])), "cdf818194e3a8c32");
    }
}
