//! Every column family and metadata key Cairn stores.
//!
//! Raft's own state (`raft_log`, `raft_meta`) and the state machine's (`kv`, `rev`, `meta`)
//! never share a column family, so a snapshot of the state machine is a copy of four of them.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cf {
    /// Log index (big-endian u64) → `cairnpb.LogEntry`.
    RaftLog,
    /// Vote, last purged log id, node identity.
    RaftMeta,
    /// `memcomparable(user key) ‖ !main_rev` → version record (see `mvcc::key`).
    Kv,
    /// `main_rev ‖ sub_rev` → event kind and user key, in revision order.
    Rev,
    /// State-machine metadata: revisions, last applied log id, membership.
    Meta,
    /// Leases and the keys attached to them (see `lease::store`).
    Lease,
}

impl Cf {
    pub const ALL: [Cf; 6] = [Cf::RaftLog, Cf::RaftMeta, Cf::Kv, Cf::Rev, Cf::Meta, Cf::Lease];
    /// The state machine's column families: what a snapshot carries.
    pub const STATE_MACHINE: [Cf; 4] = [Cf::Kv, Cf::Rev, Cf::Meta, Cf::Lease];

    pub fn name(self) -> &'static str {
        match self {
            Cf::RaftLog => "raft_log",
            Cf::RaftMeta => "raft_meta",
            Cf::Kv => "kv",
            Cf::Rev => "rev",
            Cf::Meta => "meta",
            Cf::Lease => "lease",
        }
    }

    pub fn from_id(id: u8) -> Option<Cf> {
        Cf::ALL.get(usize::from(id)).copied()
    }

    pub fn id(self) -> u8 {
        match self {
            Cf::RaftLog => 0,
            Cf::RaftMeta => 1,
            Cf::Kv => 2,
            Cf::Rev => 3,
            Cf::Meta => 4,
            Cf::Lease => 5,
        }
    }
}

/// Keys in `RaftMeta`.
pub mod raft_meta {
    pub const VOTE: &[u8] = b"vote";
    pub const LAST_PURGED: &[u8] = b"last_purged";
    pub const COMMITTED: &[u8] = b"committed";
    pub const IDENTITY: &[u8] = b"identity";
}

/// Keys in `Meta`.
pub mod meta {
    /// The current MVCC revision (i64, big-endian).
    pub const CURRENT_REV: &[u8] = b"current_rev";
    /// The compacted revision (i64, big-endian); absent means never compacted.
    pub const COMPACTED_REV: &[u8] = b"compacted_rev";
    /// The revision up to which compaction is physically done (i64, big-endian).
    pub const COMPACT_FINISHED: &[u8] = b"compact_finished";
    /// The last applied raft log id (`cairnpb.LogId`): etcd's consistent index.
    pub const LAST_APPLIED: &[u8] = b"last_applied";
    /// How much of the entry after the last applied one is applied, while a batch entry is
    /// only partly applied (`cairnpb.AppliedPart`).
    pub const APPLIED_PART: &[u8] = b"applied_part";
    /// The last applied membership (`cairnpb.StoredMembership`).
    pub const MEMBERSHIP: &[u8] = b"membership";
}
