//! Revisioned key-value storage with etcd's MVCC semantics, on the on-disk index described in
//! `mvcc::key`: no in-memory index of all keys, nothing rebuilt at start-up.
//!
//! - `store`: read views and the write transaction of one applied request.
//! - `ops`: Range, Put, DeleteRange, Txn and Compact exactly as etcd's applier runs them; both
//!   the apply path and local reads call it.
//! - `compaction`: removing superseded versions.
//! - `history`: the changes from a revision on, for watchers catching up.
//! - `view`: the read facade, the only way in for the API and watch.

pub mod compaction;
pub mod history;
mod key;
pub mod ops;
pub mod store;
#[cfg(test)]
mod tests;
pub mod view;

pub use crate::proto::mvccpb::{event::EventType, Event, KeyValue};

/// An MVCC main revision. etcd's store starts at 1; each write request adds one.
pub type Revision = i64;

/// The revision of an empty store.
pub const INITIAL_REVISION: Revision = 1;
/// The compacted revision of a store never compacted (etcd uses -1 too).
pub const NEVER_COMPACTED: Revision = -1;

/// Which keys a request names, decoded from etcd's `key`/`range_end` convention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRange {
    /// `range_end` empty: exactly `key`.
    Single(Vec<u8>),
    /// `[start, end)`; `end` of `None` means every key from `start` (`range_end` = `"\0"`).
    Span { start: Vec<u8>, end: Option<Vec<u8>> },
}

impl KeyRange {
    pub fn from_request(key: &[u8], range_end: &[u8]) -> KeyRange {
        match range_end {
            [] => KeyRange::Single(key.to_vec()),
            [0] => KeyRange::Span {
                start: key.to_vec(),
                end: None,
            },
            end => KeyRange::Span {
                start: key.to_vec(),
                end: Some(end.to_vec()),
            },
        }
    }

    pub fn start(&self) -> &[u8] {
        match self {
            KeyRange::Single(k) => k,
            KeyRange::Span { start, .. } => start,
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Single(k) => k == key,
            KeyRange::Span { start, end } => key >= start.as_slice() && end.as_deref().is_none_or(|e| key < e),
        }
    }

    /// True when `key` is at or past the end of the range, for a scan in key order.
    pub fn is_past(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Single(k) => key > k.as_slice(),
            KeyRange::Span { end, .. } => end.as_deref().is_some_and(|e| key >= e),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct RangeOptions {
    /// At most this many kvs; 0 means all.
    pub limit: usize,
    /// Read at this revision; 0 (or less) means the current one.
    pub rev: Revision,
    pub count_only: bool,
    /// The kvs without their values (etcd's `keys_only`): values are never decoded.
    pub keys_only: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Live keys in the range at the read revision, whatever the limit.
    pub count: i64,
    /// The current revision of the store (not the read revision), as etcd reports it.
    pub rev: Revision,
}

/// MVCC and request errors with etcd's meaning; `error.rs` gives them etcd's wire form.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRev,
    #[error("key not found")]
    KeyNotFound,
    #[error("requested lease not found")]
    LeaseNotFound,
    #[error("key is not provided")]
    EmptyKey,
    #[error("value is provided")]
    ValueProvided,
    #[error("lease is provided")]
    LeaseProvided,
    #[error("too many operations in txn request")]
    TooManyOps,
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    #[error("invalid sort option")]
    InvalidSortOption,
    #[error(transparent)]
    Storage(#[from] crate::storage::Error),
}
