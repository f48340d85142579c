//! Watch history: the changes of a key range from a revision on, in revision order, found
//! through the `rev` column family with values and previous versions from `kv`. A watcher
//! that fell behind the live stream catches up with it, through the read facade.

use prost::bytes::Bytes;

use super::key::{decode_rev_key, kv_key, rev_key, user_key_prefix};
use super::store::{decode_put, is_tombstone, Revisions};
use super::{Event, EventType, KeyRange, KeyValue, Revision};
use crate::storage::{self, Cf, Cursor, ReadView};

/// What a history read found.
pub enum History {
    /// The watcher's next revision was compacted away.
    Compacted(Revision),
    /// Events of whole revisions from the requested one; `next` is the first revision not
    /// read, `current` the store's revision at the read.
    Events {
        events: Vec<Event>,
        next: Revision,
        current: Revision,
    },
}

/// How much one history read may return and scan.
#[derive(Clone, Copy, Debug)]
pub struct HistoryLimits {
    /// Distinct revisions with matching events per read: etcd's `watchBatchMaxRevs`, so
    /// responses are cut where etcd cuts them.
    pub revisions: usize,
    /// Matching events per read, whatever the revisions (a memory bound etcd lacks).
    pub events: usize,
    /// Bytes of keys and values per read: etcd can send one response of up to 1000
    /// revisions of any size, beyond what clients accept by default (4 MiB for most gRPC
    /// clients); cutting between revisions keeps responses receivable and memory small.
    pub bytes: usize,
    /// Changes scanned per read, matching or not (a work bound for sparse watchers).
    pub scanned: usize,
}

/// Reads the changes of `range` from revision `from` on, whole revisions only, stopping at
/// a revision boundary when a limit is reached. `view` must be one consistent snapshot.
pub(super) fn read(
    view: &impl ReadView,
    range: &KeyRange,
    from: Revision,
    limits: HistoryLimits,
    with_prev: bool,
) -> storage::Result<History> {
    let revs = Revisions::read(view)?;
    if revs.is_compacted(from) {
        return Ok(History::Compacted(revs.compacted));
    }
    let mut events: Vec<Event> = Vec::new();
    let mut scanned = 0usize;
    let mut matched_revisions = 0usize;
    let mut bytes = 0usize;
    // The first revision not read; everything up to the current one unless we stop early.
    let mut next = revs.current + 1;
    let mut last_main = None;
    let mut cur = view.cursor(Cf::Rev);
    cur.seek(&rev_key(from.max(1), 0));
    while cur.valid() {
        let (main, _) = decode_rev_key(cur.key()).ok_or_else(|| storage::Error::corrupt(Cf::Rev, "malformed key"))?;
        if main > revs.current {
            break;
        }
        if last_main != Some(main)
            && (matched_revisions >= limits.revisions
                || events.len() >= limits.events
                || bytes >= limits.bytes
                || scanned >= limits.scanned)
        {
            next = main;
            break;
        }
        last_main = Some(main);
        scanned += 1;
        let (kind, key) = cur
            .value()
            .split_first()
            .ok_or_else(|| storage::Error::corrupt(Cf::Rev, "empty value"))?;
        if range.contains(key) {
            let new_revision = events
                .last()
                .and_then(|e| e.kv.as_ref())
                .is_none_or(|kv| kv.mod_revision != main);
            if new_revision {
                matched_revisions += 1;
            }
            let tombstone = is_tombstone(std::slice::from_ref(kind))?;
            let kv = if tombstone {
                KeyValue {
                    key: Bytes::copy_from_slice(key),
                    mod_revision: main,
                    ..Default::default()
                }
            } else {
                let raw = view
                    .get(Cf::Kv, &kv_key(key, main))?
                    .ok_or_else(|| storage::Error::corrupt(Cf::Kv, "version named by rev is missing"))?;
                decode_put(key.to_vec(), &raw)?
            };
            let prev_kv = if with_prev {
                previous_version(view, key, main)?
            } else {
                None
            };
            bytes += kv.key.len() + kv.value.len() + prev_kv.as_ref().map_or(0, |p| p.key.len() + p.value.len());
            events.push(Event {
                r#type: if tombstone { EventType::Delete } else { EventType::Put } as i32,
                kv: Some(kv),
                prev_kv,
            });
        }
        cur.next();
    }
    cur.status()?;
    Ok(History::Events {
        events,
        next,
        current: revs.current,
    })
}

/// The live version of `key` just before revision `rev`, if any.
pub(super) fn previous_version(view: &impl ReadView, key: &[u8], rev: Revision) -> storage::Result<Option<KeyValue>> {
    let prefix = user_key_prefix(key);
    let mut cur = view.key_cursor(Cf::Kv);
    cur.seek(&kv_key(key, rev - 1));
    if cur.valid() && cur.key().len() == prefix.len() + 8 && cur.key().starts_with(&prefix) {
        if is_tombstone(cur.value())? {
            return Ok(None);
        }
        return Ok(Some(decode_put(key.to_vec(), cur.value())?));
    }
    cur.status()?;
    Ok(None)
}
