//! The watch hub: applied changes fan out to watch streams, and a history reader lets a
//! watcher that fell behind catch up from storage.
//!
//! Memory is bounded by design. The state machine publishes each applied revision's events
//! once into a broadcast ring bounded in revisions and in bytes per revision; a stream that
//! cannot keep up loses its place in the ring (never blocking apply) and its watchers fall
//! back to reading the `rev` column family in bounded batches until they reach the live
//! stream again, as they do for a revision too large for the ring. Nothing is lost and
//! nothing waits on a slow client.

use std::sync::Arc;

use tokio::sync::{broadcast, watch};

use crate::mvcc::key::{decode_rev_key, kv_key, rev_key, user_key_prefix};
use crate::mvcc::store::{decode_put, is_tombstone, Revisions};
use crate::mvcc::{Event, EventType, KeyRange, KeyValue, Revision};
use crate::storage::{self, Cf, Cursor, Engine, ReadView};

/// Revisions kept in the live ring. A stream further behind than this reads history instead.
const RING_REVISIONS: usize = 64;

/// The most bytes of events (as encoded) one ring slot carries. A larger revision is
/// published without its events, as a marker: streams read it from storage, as they read a
/// gap. So the ring holds at most `RING_REVISIONS` × this (16 MiB), however large the
/// values, transactions or mass deletes being applied.
const MAX_SLOT_BYTES: usize = 256 << 10;

/// All events of one applied revision, in sub-revision order. Each event carries its
/// previous version; streams drop it for watchers that did not ask for it.
#[derive(Debug)]
pub struct RevisionEvents {
    pub revision: Revision,
    /// Empty when `spilled`.
    pub events: Vec<Event>,
    /// The events were over `MAX_SLOT_BYTES`: read them from storage.
    pub spilled: bool,
}

/// Shared by the state machine (publisher) and the watch API (subscribers).
#[derive(Clone)]
pub struct Hub {
    ring: broadcast::Sender<Arc<RevisionEvents>>,
    applied: Arc<watch::Sender<Revision>>,
}

impl Hub {
    pub fn new(current: Revision) -> Self {
        let (ring, _) = broadcast::channel(RING_REVISIONS);
        let (applied, _) = watch::channel(current);
        Hub {
            ring,
            applied: Arc::new(applied),
        }
    }

    /// Called after the revision's batch is written, so history reads already see it.
    pub fn publish(&self, revision: Revision, events: Vec<Event>) {
        if !events.is_empty() {
            let bytes: usize = events.iter().map(prost::Message::encoded_len).sum();
            let slot = if bytes > MAX_SLOT_BYTES {
                RevisionEvents {
                    revision,
                    events: Vec::new(),
                    spilled: true,
                }
            } else {
                RevisionEvents {
                    revision,
                    events,
                    spilled: false,
                }
            };
            // No subscriber is not an error: nobody is watching.
            let _ = self.ring.send(Arc::new(slot));
        }
        self.applied.send_if_modified(|cur| {
            let newer = revision > *cur;
            if newer {
                *cur = revision;
            }
            newer
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RevisionEvents>> {
        self.ring.subscribe()
    }

    /// The newest revision published (the store's current revision once applied).
    pub fn current(&self) -> Revision {
        *self.applied.borrow()
    }
}

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
/// a revision boundary when a limit is reached. Matches are found through the `rev` column
/// family; values and previous versions come from `kv`.
pub fn read_history(
    engine: &Engine,
    range: &KeyRange,
    from: Revision,
    limits: HistoryLimits,
    with_prev: bool,
) -> storage::Result<History> {
    let snap = engine.snapshot();
    let revs = Revisions::read(&snap)?;
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
    let mut cur = snap.cursor(Cf::Rev);
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
                    key: key.to_vec(),
                    mod_revision: main,
                    ..Default::default()
                }
            } else {
                let raw = snap
                    .get(Cf::Kv, &kv_key(key, main))?
                    .ok_or_else(|| storage::Error::corrupt(Cf::Kv, "version named by rev is missing"))?;
                decode_put(key.to_vec(), &raw)?
            };
            let prev_kv = if with_prev {
                previous_version(&snap, key, main)?
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
fn previous_version(view: &impl ReadView, key: &[u8], rev: Revision) -> storage::Result<Option<KeyValue>> {
    let prefix = user_key_prefix(key);
    let mut cur = view.cursor(Cf::Kv);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value_len: usize, rev: Revision) -> Event {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: key.into(),
                value: vec![b'x'; value_len],
                mod_revision: rev,
                create_revision: rev,
                version: 1,
                lease: 0,
            }),
            prev_kv: None,
        }
    }

    #[test]
    fn a_revision_over_the_slot_bound_is_published_without_its_events() {
        let hub = Hub::new(1);
        let mut rx = hub.subscribe();
        hub.publish(2, vec![put("small", 100, 2)]);
        hub.publish(
            3,
            vec![put("a", MAX_SLOT_BYTES / 2, 3), put("b", MAX_SLOT_BYTES / 2, 3)],
        );
        let small = rx.try_recv().expect("small revision");
        assert_eq!((small.revision, small.events.len(), small.spilled), (2, 1, false));
        let big = rx.try_recv().expect("large revision");
        assert_eq!((big.revision, big.events.len(), big.spilled), (3, 0, true));
        assert_eq!(hub.current(), 3);
    }
}
