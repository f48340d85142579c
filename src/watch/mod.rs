//! The watch hub: applied changes fan out to the watch streams interested in them; a
//! watcher that fell behind catches up from mvcc's history (`mvcc::history`, through the
//! read facade).
//!
//! Streams register the key ranges their watchers cover (`Subscription::watch`). Each
//! published revision is matched against that index (a map of single keys, and the ranges
//! ordered by start) and queued only to the streams with a matching watcher, so a write
//! wakes those streams and no others. A stream's queue is bounded; when it is full, the
//! stream gets a gap marker instead of revisions, and its watchers read the gap from
//! history in bounded batches, as they do for a revision too large to queue. Apply never
//! waits on a stream, nothing is lost, and memory does not grow with a slow client.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{watch, Notify};

use crate::mvcc::{Event, KeyRange, Revision};

/// Revisions queued to one stream at most; a stream further behind reads history instead.
const QUEUE_REVISIONS: usize = 64;

/// The most bytes of events (as encoded) one queued revision carries. A larger revision is
/// queued without its events, as a marker: streams read it from storage, as they read a
/// gap. Together with `QUEUED_BYTES`, this bounds what the hub holds.
const MAX_SLOT_BYTES: usize = 256 << 10;

/// Bytes of events held in queues, all streams together (a revision queued to several
/// streams counts once). Beyond it, a stream that is already behind gets a gap instead of
/// more revisions; a stream that is keeping up (its queue empty) still gets the revision.
const QUEUED_BYTES: usize = 64 << 20;

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
    /// Counted in the hub's `queued` bytes until dropped.
    bytes: usize,
    queued: Arc<AtomicUsize>,
}

impl Drop for RevisionEvents {
    fn drop(&mut self) {
        self.queued.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// What a stream takes from its queue.
#[derive(Debug)]
pub enum Delivery {
    /// The next revision with a change some watcher of the stream covers.
    Revision(Arc<RevisionEvents>),
    /// Revisions up to this one may have been dropped (the queue was full): watchers read
    /// them from history.
    Gap(Revision),
}

#[derive(Default)]
struct QueueState {
    slots: VecDeque<Arc<RevisionEvents>>,
    /// Set when revisions were dropped: the newest of them.
    gap_to: Option<Revision>,
}

#[derive(Default)]
struct StreamQueue {
    state: Mutex<QueueState>,
    ready: Notify,
}

impl StreamQueue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding the lock stops the member (fail-stop); the state stays valid.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, slot: &Arc<RevisionEvents>, over_budget: bool) {
        let mut q = self.lock();
        let full = q.slots.len() >= QUEUE_REVISIONS || (over_budget && !q.slots.is_empty());
        if q.gap_to.is_some() || full {
            q.slots.clear();
            q.gap_to = Some(slot.revision);
        } else {
            q.slots.push_back(slot.clone());
        }
        drop(q);
        self.ready.notify_one();
    }

    fn try_pop(&self) -> Option<Delivery> {
        let mut q = self.lock();
        if let Some(to) = q.gap_to.take() {
            return Some(Delivery::Gap(to));
        }
        q.slots.pop_front().map(Delivery::Revision)
    }
}

type StreamId = u64;
type InterestId = u64;
/// How many interests each stream has in one key or one range.
type Streams = HashMap<StreamId, usize>;
/// The ends of the ranges sharing one start (`None`: every key from the start on).
type RangeEnds = HashMap<Option<Vec<u8>>, Streams>;

/// Which streams cover which keys. A stream with two watchers on one key has two
/// interests, so cancelling one keeps the other.
#[derive(Default)]
struct Registry {
    next_id: u64,
    streams: HashMap<StreamId, Arc<StreamQueue>>,
    interests: HashMap<InterestId, (StreamId, KeyRange)>,
    /// Single-key interests: key → stream → how many.
    keys: HashMap<Vec<u8>, Streams>,
    /// Range interests: start → end → stream → how many. Watchers of one range (a
    /// thousand controllers watching one prefix) share an entry, so matching a key costs
    /// one step per distinct range, not per watcher.
    ranges: BTreeMap<Vec<u8>, RangeEnds>,
}

impl Registry {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The streams with an interest covering `key`, appended to `out` (duplicates allowed).
    fn streams_for(&self, key: &[u8], out: &mut Vec<StreamId>) {
        if let Some(streams) = self.keys.get(key) {
            out.extend(streams.keys());
        }
        // Distinct ranges starting at or before `key` (a linear walk: an interval tree
        // would skip those that end before it).
        for ends in self
            .ranges
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .map(|(_, ends)| ends)
        {
            for (end, streams) in ends {
                if end.as_deref().is_none_or(|e| key < e) {
                    out.extend(streams.keys());
                }
            }
        }
    }

    fn add(&mut self, stream: StreamId, range: &KeyRange) {
        let streams = match range {
            KeyRange::Single(key) => self.keys.entry(key.clone()).or_default(),
            KeyRange::Span { start, end } => self
                .ranges
                .entry(start.clone())
                .or_default()
                .entry(end.clone())
                .or_default(),
        };
        *streams.entry(stream).or_default() += 1;
    }

    fn remove(&mut self, id: InterestId) {
        let Some((stream, range)) = self.interests.remove(&id) else {
            return;
        };
        match range {
            KeyRange::Single(key) => {
                if let Some(streams) = self.keys.get_mut(&key) {
                    if forget(streams, stream) {
                        self.keys.remove(&key);
                    }
                }
            }
            KeyRange::Span { start, end } => {
                if let Some(ends) = self.ranges.get_mut(&start) {
                    if ends.get_mut(&end).is_some_and(|streams| forget(streams, stream)) {
                        ends.remove(&end);
                    }
                    if ends.is_empty() {
                        self.ranges.remove(&start);
                    }
                }
            }
        }
    }
}

/// Counts one interest of `stream` less; true when no stream is left.
fn forget(streams: &mut Streams, stream: StreamId) -> bool {
    if let Some(n) = streams.get_mut(&stream) {
        *n -= 1;
        if *n == 0 {
            streams.remove(&stream);
        }
    }
    streams.is_empty()
}

/// Shared by the state machine (publisher) and the watch API (subscribers).
#[derive(Clone)]
pub struct Hub {
    registry: Arc<Mutex<Registry>>,
    queued: Arc<AtomicUsize>,
    applied: Arc<watch::Sender<Revision>>,
}

impl Hub {
    pub fn new(current: Revision) -> Self {
        let (applied, _) = watch::channel(current);
        Hub {
            registry: Arc::default(),
            queued: Arc::default(),
            applied: Arc::new(applied),
        }
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called after the revision's batch is written, so history reads already see it.
    /// Queues the revision to the interested streams before announcing it as applied, so a
    /// stream that reads `current` and then drains its queue has every revision up to it.
    pub fn publish(&self, revision: Revision, events: Vec<Event>) {
        if !events.is_empty() {
            let registry = self.registry();
            let mut streams = Vec::new();
            for event in &events {
                if let Some(kv) = &event.kv {
                    registry.streams_for(&kv.key, &mut streams);
                }
            }
            streams.sort_unstable();
            streams.dedup();
            if !streams.is_empty() {
                let bytes: usize = events.iter().map(prost::Message::encoded_len).sum();
                let spilled = bytes > MAX_SLOT_BYTES;
                let held = if spilled { 0 } else { bytes };
                let over_budget = self.queued.fetch_add(held, Ordering::Relaxed) + held > QUEUED_BYTES;
                let slot = Arc::new(RevisionEvents {
                    revision,
                    events: if spilled { Vec::new() } else { events },
                    spilled,
                    bytes: held,
                    queued: self.queued.clone(),
                });
                for id in streams {
                    if let Some(queue) = registry.streams.get(&id) {
                        queue.push(&slot, over_budget);
                    }
                }
            }
        }
        self.applied.send_if_modified(|cur| {
            let newer = revision > *cur;
            if newer {
                *cur = revision;
            }
            newer
        });
    }

    /// A new stream, with no interests yet.
    pub fn subscribe(&self) -> Subscription {
        let queue = Arc::new(StreamQueue::default());
        let mut registry = self.registry();
        let id = registry.id();
        registry.streams.insert(id, queue.clone());
        drop(registry);
        Subscription {
            hub: self.clone(),
            id,
            queue,
        }
    }

    /// The newest revision published (the store's current revision once applied).
    pub fn current(&self) -> Revision {
        *self.applied.borrow()
    }
}

/// One stream's place in the hub: its queue and its interests, all dropped with it.
pub struct Subscription {
    hub: Hub,
    id: StreamId,
    queue: Arc<StreamQueue>,
}

/// Names one interest of a stream, to remove it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interest(InterestId);

impl Subscription {
    /// From now on, revisions changing a key of `range` are queued to this stream.
    pub fn watch(&self, range: &KeyRange) -> Interest {
        let mut registry = self.hub.registry();
        let id = registry.id();
        registry.add(self.id, range);
        registry.interests.insert(id, (self.id, range.clone()));
        Interest(id)
    }

    pub fn unwatch(&self, interest: Interest) {
        let mut registry = self.hub.registry();
        registry.remove(interest.0);
    }

    /// The next delivery, waiting for one.
    pub async fn recv(&self) -> Delivery {
        loop {
            let ready = self.queue.ready.notified();
            if let Some(delivery) = self.queue.try_pop() {
                return delivery;
            }
            ready.await;
        }
    }

    /// The next delivery, if one is queued.
    pub fn try_recv(&self) -> Option<Delivery> {
        self.queue.try_pop()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut registry = self.hub.registry();
        let mine: Vec<InterestId> = registry
            .interests
            .iter()
            .filter(|(_, (stream, _))| *stream == self.id)
            .map(|(id, _)| *id)
            .collect();
        for id in mine {
            registry.remove(id);
        }
        registry.streams.remove(&self.id);
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
                key: key.as_bytes().to_vec().into(),
                value: vec![b'x'; value_len].into(),
                mod_revision: rev,
                create_revision: rev,
                version: 1,
                lease: 0,
            }),
            prev_kv: None,
        }
    }

    fn revision(d: Option<Delivery>) -> (Revision, usize, bool) {
        match d {
            Some(Delivery::Revision(r)) => (r.revision, r.events.len(), r.spilled),
            other => panic!("expected a revision, got {other:?}"),
        }
    }

    #[test]
    fn only_streams_covering_a_key_get_its_revision() {
        let hub = Hub::new(1);
        let single = hub.subscribe();
        let prefix = hub.subscribe();
        let idle = hub.subscribe();
        let a = single.watch(&KeyRange::Single(b"a".to_vec()));
        single.watch(&KeyRange::Single(b"a".to_vec()));
        prefix.watch(&KeyRange::from_request(b"p/", b"p0"));
        idle.watch(&KeyRange::Single(b"zzz".to_vec()));

        hub.publish(2, vec![put("a", 1, 2)]);
        hub.publish(3, vec![put("p/x", 1, 3), put("q", 1, 3)]);
        hub.publish(4, vec![put("b", 1, 4)]);
        assert_eq!(revision(single.try_recv()), (2, 1, false));
        assert!(single.try_recv().is_none());
        assert_eq!(revision(prefix.try_recv()), (3, 2, false));
        assert!(prefix.try_recv().is_none());
        assert!(
            idle.try_recv().is_none(),
            "no watcher of this stream covers a, p/x, q or b"
        );
        assert_eq!(hub.current(), 4);

        // One of two interests in "a" removed: the stream still covers it; both: not.
        single.unwatch(a);
        hub.publish(5, vec![put("a", 1, 5)]);
        assert_eq!(revision(single.try_recv()).0, 5);
        drop(prefix);
        let registry = hub.registry();
        assert!(registry.ranges.is_empty(), "a dropped stream leaves no interest behind");
        assert_eq!(registry.streams.len(), 2);
    }

    #[test]
    fn watchers_of_one_range_share_an_entry_until_the_last_goes() {
        let hub = Hub::new(1);
        let (a, b) = (hub.subscribe(), hub.subscribe());
        let prefix = KeyRange::from_request(b"p/", b"p0");
        let a_interests: Vec<Interest> = (0..3).map(|_| a.watch(&prefix)).collect();
        let b_interest = b.watch(&prefix);
        let open_ended = b.watch(&KeyRange::from_request(b"p/", b"\0"));
        {
            let registry = hub.registry();
            assert_eq!(registry.ranges.len(), 1, "one start key");
            assert_eq!(registry.ranges[b"p/".as_slice()].len(), 2, "two distinct ends");
        }
        hub.publish(2, vec![put("p/x", 1, 2)]);
        assert_eq!(revision(a.try_recv()).0, 2);
        assert_eq!(revision(b.try_recv()).0, 2);
        assert!(
            a.try_recv().is_none() && b.try_recv().is_none(),
            "one delivery per stream"
        );

        for i in &a_interests[..2] {
            a.unwatch(*i);
        }
        b.unwatch(b_interest);
        hub.publish(3, vec![put("p/y", 1, 3), put("q", 1, 3)]);
        assert_eq!(revision(a.try_recv()).0, 3, "a keeps one interest");
        assert_eq!(revision(b.try_recv()).0, 3, "b's open-ended range covers q too");

        a.unwatch(a_interests[2]);
        b.unwatch(open_ended);
        hub.publish(4, vec![put("p/z", 1, 4)]);
        assert!(a.try_recv().is_none() && b.try_recv().is_none());
        assert!(hub.registry().ranges.is_empty(), "nothing left behind");
    }

    #[test]
    fn a_revision_over_the_slot_bound_is_queued_without_its_events() {
        let hub = Hub::new(1);
        let sub = hub.subscribe();
        sub.watch(&KeyRange::from_request(b"\0", b"\0"));
        hub.publish(2, vec![put("small", 100, 2)]);
        hub.publish(
            3,
            vec![put("a", MAX_SLOT_BYTES / 2, 3), put("b", MAX_SLOT_BYTES / 2, 3)],
        );
        assert_eq!(revision(sub.try_recv()), (2, 1, false));
        assert_eq!(revision(sub.try_recv()), (3, 0, true));
    }

    #[test]
    fn a_full_queue_turns_into_one_gap_and_frees_what_it_held() {
        let hub = Hub::new(1);
        let sub = hub.subscribe();
        sub.watch(&KeyRange::Single(b"k".to_vec()));
        let last = 2 + QUEUE_REVISIONS as Revision + 10;
        for rev in 2..=last {
            hub.publish(rev, vec![put("k", 1000, rev)]);
        }
        assert!(matches!(sub.try_recv(), Some(Delivery::Gap(to)) if to == last));
        assert!(sub.try_recv().is_none());
        assert_eq!(hub.queued.load(Ordering::Relaxed), 0, "dropped revisions are not held");
        // After the gap, revisions queue again.
        hub.publish(last + 1, vec![put("k", 1, last + 1)]);
        assert_eq!(revision(sub.try_recv()).0, last + 1);
    }
}
