//! Leases, as etcd's `server/lease` has them, split by who may read a clock:
//!
//! - `store`: the replicated state (lease records and the keys attached to them) in the
//!   `lease` column family, written only by apply. No clock: a lease is its granted TTL and
//!   its last checkpointed remaining TTL.
//! - `lessor`: this member's in-memory view: every lease, and on the leader its deadline on
//!   the monotonic clock. Keep-alives move deadlines here and nowhere else.
//! - `expiry`: the leader's loop turning deadlines into log entries: revocations of expired
//!   leases (a bounded number in flight) and periodic remaining-TTL checkpoints.

pub mod expiry;
pub mod lessor;
pub mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub use lessor::Lessor;

/// A lease ID as the API carries it. Never 0 for an existing lease (0 means "no lease").
pub type LeaseId = i64;

/// "No lease", in requests and in stored key-values.
pub const NO_LEASE: LeaseId = 0;

/// The largest TTL a lease may be granted, in seconds (etcd's `MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// Lease errors with etcd's meaning; `error.rs` gives them etcd's wire form.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("requested lease not found")]
    NotFound,
    #[error("lease already exists")]
    Exists,
    #[error("too large lease TTL")]
    TtlTooLarge,
    #[error(transparent)]
    Storage(#[from] crate::storage::Error),
}

/// The smallest TTL a lease gets, in seconds: etcd's `minTTL`, 1.5 election timeouts rounded
/// up, so a lease cannot expire during a leader election.
pub fn min_ttl(election_timeout: std::time::Duration) -> i64 {
    let ms = election_timeout.as_millis() as i64 * 3 / 2;
    ((ms + 999) / 1000).max(1)
}

/// Picks lease IDs for grants that ask for none, as etcd's `idutil.Generator` does: the
/// member's low 16 bits, then a counter started from the wall clock, so IDs differ across
/// members and restarts without coordination. Always positive.
pub struct IdGenerator {
    prefix: u64,
    counter: AtomicU64,
}

impl IdGenerator {
    const SUFFIX_BITS: u32 = 48;

    pub fn new(member_id: u64) -> Self {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        IdGenerator {
            prefix: (member_id & 0xffff) << Self::SUFFIX_BITS,
            counter: AtomicU64::new((millis & ((1 << 40) - 1)) << 8),
        }
    }

    pub fn next(&self) -> LeaseId {
        let suffix = self.counter.fetch_add(1, Ordering::Relaxed).wrapping_add(1) & ((1 << Self::SUFFIX_BITS) - 1);
        let id = ((self.prefix | suffix) & (i64::MAX as u64)) as i64;
        if id == NO_LEASE {
            self.next()
        } else {
            id
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn min_ttl_is_one_and_a_half_election_timeouts_rounded_up() {
        assert_eq!(min_ttl(Duration::from_millis(1000)), 2);
        assert_eq!(min_ttl(Duration::from_millis(2000)), 3);
        assert_eq!(min_ttl(Duration::from_millis(100)), 1);
    }

    #[test]
    fn generated_ids_are_positive_and_distinct() {
        let g = IdGenerator::new(0x8e9e05c52164694d);
        let a = g.next();
        let b = g.next();
        assert!(a > 0 && b > 0 && a != b);
        assert_eq!((a as u64) >> 48, 0x694d & 0x7fff);
    }
}
