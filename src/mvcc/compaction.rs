//! Compaction: dropping every version that no read at or above the compacted revision can see.
//!
//! Compacting to `C` keeps, per key, the newest version at or below `C` unless it is a
//! tombstone, and everything above `C`. Only keys changed since the previous compaction can
//! hold newly superseded versions, so the `rev` column family (changes in revision order)
//! names exactly the keys to visit. `rev` entries below `C` are dropped wholesale: watch
//! replay can only start at or above the compacted revision.

use std::collections::BTreeSet;

use super::key::{decode_kv_key, kv_key, rev_key, user_key_prefix};
use super::store::is_tombstone;
use super::{KvError, Revision};
use crate::storage::schema::meta;
use crate::storage::{self, Cf, Cursor, Engine, ReadView, WriteBatch};

/// Checks a compaction request against the store's revisions as etcd does.
pub fn check(current: Revision, compacted: Revision, to: Revision) -> Result<(), KvError> {
    if to <= compacted {
        return Err(KvError::Compacted);
    }
    if to > current {
        return Err(KvError::FutureRev);
    }
    Ok(())
}

/// Adds to `batch` the deletions that compact the store from `from` (the previous compacted
/// revision) to `to`, and records `to` as the compacted revision.
pub fn compact(engine: &Engine, batch: &mut WriteBatch, from: Revision, to: Revision) -> storage::Result<()> {
    let mut keys = BTreeSet::new();
    let mut revs = engine.cursor(Cf::Rev);
    revs.seek(&rev_key(from.max(0), 0));
    while revs.valid() {
        let main = super::key::decode_rev_key(revs.key())
            .ok_or_else(|| storage::Error::corrupt(Cf::Rev, "malformed key"))?
            .0;
        if main > to {
            break;
        }
        let value = revs.value();
        if value.is_empty() {
            return Err(storage::Error::corrupt(Cf::Rev, "empty value"));
        }
        keys.insert(value[1..].to_vec());
        revs.next();
    }
    revs.status()?;

    for key in keys {
        let prefix = user_key_prefix(&key);
        let mut cur = engine.cursor(Cf::Kv);
        cur.seek(&kv_key(&key, to));
        let mut newest = true;
        while cur.valid() && cur.key().starts_with(&prefix) && cur.key().len() == prefix.len() + 8 {
            let (_, main) = decode_kv_key(cur.key()).ok_or_else(|| storage::Error::corrupt(Cf::Kv, "malformed key"))?;
            debug_assert!(main <= to);
            if !newest || is_tombstone(cur.value())? {
                batch.delete(Cf::Kv, cur.key());
            }
            newest = false;
            cur.next();
        }
        cur.status()?;
    }
    batch.delete_range(Cf::Rev, &rev_key(0, 0), &rev_key(to, 0));
    batch.put(Cf::Meta, meta::COMPACTED_REV, &to.to_be_bytes());
    Ok(())
}
