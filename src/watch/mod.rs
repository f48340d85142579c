//! The watch hub: applied changes fan out to watch streams; a watcher that fell behind
//! catches up from mvcc's history (`mvcc::history`, through the read facade).
//!
//! Memory is bounded by design. The state machine publishes each applied revision's events
//! once into a broadcast ring bounded in revisions and in bytes per revision; a stream that
//! cannot keep up loses its place in the ring (never blocking apply) and its watchers fall
//! back to reading history in bounded batches until they reach the live stream again, as
//! they do for a revision too large for the ring. Nothing is lost and nothing waits on a
//! slow client.

use std::sync::Arc;

use tokio::sync::{broadcast, watch};

use crate::mvcc::{Event, Revision};

/// Revisions kept in the live ring. A stream further behind than this reads history instead.
const RING_REVISIONS: usize = 64;

/// The most bytes of events (as encoded) one ring slot carries. A larger revision is
/// published without its events, as a marker: streams read it from storage, as they read a
/// gap. So the ring holds at most `RING_REVISIONS` × this (16 MiB), however large the
/// values, transactions or mass deletes being applied.
const MAX_SLOT_BYTES: usize = 256 << 10;

/// All events of one applied revision, in sub-revision order. A put carries its previous
/// version (streams drop it for watchers that did not ask for it); a delete carries only
/// its key and revision, and streams read the previous version for watchers that ask.
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
#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::{EventType, KeyValue};

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
