//! etcd's Watch service: one task per stream owns its watchers, feeds synced watchers from
//! the hub's queue and lets the others catch up from history in bounded batches.
//!
//! The hub queues to a stream only the revisions that change a key one of its watchers
//! covers (`Subscription::watch`), in order, or a gap marker once the queue overflowed.
//! `stream_rev` is the revision up to which the stream has seen everything the hub had for
//! it: each queued revision moves it on, and so does the hub's current revision read before
//! the queue is drained (`sync_to_current`: a revision is queued before it is announced).
//!
//! A watcher's `next` is the first revision it has not been sent. It is *synced* when
//! `next > stream_rev`: it has everything up to there and takes the following revisions
//! from the queue. Otherwise it reads history until it passes `stream_rev`. Revisions below
//! a watcher's `next` are skipped, so nothing is sent twice; a gap leaves the synced
//! watchers behind `stream_rev`, so they read the gap from history.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use prost::Message;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{blocking, Header};
use crate::mvcc::history::{History, HistoryLimits};
use crate::mvcc::view::StoreView;
use crate::mvcc::{Event, EventType, KeyRange, KeyValue, Revision};
use crate::proto::etcdserverpb::watch_server::Watch;
use crate::proto::etcdserverpb::{
    watch_create_request::FilterType, watch_request, ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse,
};
use crate::watch::{Delivery, Hub, Interest, RevisionEvents, Subscription};

/// Responses buffered towards one client before the stream task waits for it.
const OUTBOUND_RESPONSES: usize = 16;
/// One history read: etcd's 1000 revisions per response, plus bounds etcd lacks.
const HISTORY_LIMITS: HistoryLimits = HistoryLimits {
    revisions: 1000,
    events: 100_000,
    bytes: 2 << 20,
    scanned: 1_000_000,
};
/// One revision's events, whatever their size (reads cut only between revisions).
const ONE_REVISION: HistoryLimits = HistoryLimits {
    revisions: 1,
    ..HISTORY_LIMITS
};
/// etcd's `InvalidWatchID`.
const INVALID_WATCH_ID: i64 = -1;
const ERR_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
const ERR_EMPTY_RANGE: &str = "mvcc: watcher range is empty";

#[derive(Clone)]
pub struct WatchService {
    view: StoreView,
    hub: Hub,
    header: Header,
    progress_interval: Duration,
    fragment_bytes: usize,
}

impl WatchService {
    pub fn new(view: StoreView, hub: Hub, header: Header, progress_interval: Duration, fragment_bytes: usize) -> Self {
        WatchService {
            view,
            hub,
            header,
            progress_interval,
            fragment_bytes,
        }
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ReceiverStream<Result<WatchResponse, Status>>;

    async fn watch(&self, request: Request<Streaming<WatchRequest>>) -> Result<Response<Self::WatchStream>, Status> {
        let inbound = request.into_inner();
        let (out, rx) = mpsc::channel(OUTBOUND_RESPONSES);
        let stream = StreamTask {
            sub: Arc::new(self.hub.subscribe()),
            svc: self.clone(),
            out,
            watchers: BTreeMap::new(),
            next_auto_id: 0,
            // No watcher yet, so nothing to miss: everything so far is seen.
            stream_rev: self.hub.current(),
            pending_progress: 0,
        };
        tokio::spawn(stream.run(inbound));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct Watcher {
    /// Told its history was compacted: it gets nothing more, but keeps its id (and blocks
    /// progress answers) until the client cancels it, as in etcd.
    compacted: bool,
    range: KeyRange,
    /// Its entry in the hub's index, removed with it.
    interest: Interest,
    next: Revision,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    /// Nothing sent since the last progress tick (etcd elides the next notification after
    /// an event).
    idle: bool,
    fragment: bool,
}

impl Watcher {
    /// The events of one batch this watcher wants, shaped as it asked.
    fn select(&self, events: &[Event]) -> Vec<Event> {
        events
            .iter()
            .filter(|e| e.kv.as_ref().is_some_and(|kv| self.range.contains(&kv.key)))
            .filter(|e| {
                let put = e.r#type == EventType::Put as i32;
                !(put && self.no_put || !put && self.no_delete)
            })
            .map(|e| {
                // etcd sends no previous version for a create, nor when not asked. Keys and
                // values are `Bytes`: every watcher shares the revision's buffers.
                let create = e.r#type == EventType::Put as i32
                    && e.kv.as_ref().is_some_and(|kv| kv.create_revision == kv.mod_revision);
                Event {
                    r#type: e.r#type,
                    kv: e.kv.clone(),
                    prev_kv: if self.prev_kv && !create {
                        e.prev_kv.clone()
                    } else {
                        None
                    },
                }
            })
            .collect()
    }
}

/// Why a stream stopped: the client went away. Nothing to report to it.
struct Closed;

struct StreamTask {
    sub: Arc<Subscription>,
    svc: WatchService,
    out: mpsc::Sender<Result<WatchResponse, Status>>,
    watchers: BTreeMap<i64, Watcher>,
    next_auto_id: i64,
    stream_rev: Revision,
    /// Progress requests waiting for every watcher to be synced.
    pending_progress: usize,
}

impl StreamTask {
    async fn run(mut self, mut inbound: Streaming<WatchRequest>) {
        let sub = self.sub.clone();
        let mut ticker = tokio::time::interval(self.svc.progress_interval);
        ticker.reset();
        let mut inbound_open = true;
        loop {
            let behind = self.first_behind();
            let step = tokio::select! {
                biased;
                msg = inbound.message(), if inbound_open => match msg {
                    Ok(Some(req)) => self.handle_request(req).await,
                    // A client that closes its sending side still receives events, as with etcd.
                    Ok(None) => { inbound_open = false; Ok(()) }
                    Err(_) => Err(Closed),
                },
                () = std::future::ready(()), if behind.is_some() => match behind {
                    Some(id) => self.catch_up(id).await,
                    None => Ok(()),
                },
                delivery = sub.recv() => self.deliver(delivery).await,
                _ = ticker.tick() => self.progress_tick().await,
                () = self.out.closed() => Err(Closed),
            };
            if step.is_err() {
                return;
            }
            if self.pending_progress > 0 && self.answer_progress_if_synced().await.is_err() {
                return;
            }
        }
    }

    /// A watcher that still has history to read.
    fn first_behind(&self) -> Option<i64> {
        self.watchers
            .iter()
            .find(|(_, w)| !w.compacted && w.next <= self.stream_rev)
            .map(|(id, _)| *id)
    }

    /// Every live watcher has been sent everything up to `stream_rev`.
    fn all_synced(&self) -> bool {
        self.watchers.values().all(|w| w.compacted || w.next > self.stream_rev)
    }

    fn header(&self, revision: Revision) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.svc.header.cluster_id,
            member_id: self.svc.header.member_id,
            revision,
            raft_term: self.svc.header.raft_term(),
        })
    }

    async fn send(&self, resp: WatchResponse) -> Result<(), Closed> {
        self.out.send(Ok(resp)).await.map_err(|_| Closed)
    }

    /// Sends events, split as etcd's `sendFragments` splits them when the watcher asked for
    /// fragments and the response exceeds the request size limit.
    async fn send_events(&self, id: i64, fragment: bool, revision: Revision, events: Vec<Event>) -> Result<(), Closed> {
        let whole = WatchResponse {
            header: self.header(revision),
            watch_id: id,
            events,
            ..Default::default()
        };
        let limit = self.svc.fragment_bytes;
        if !fragment || whole.encoded_len() < limit || whole.events.len() < 2 {
            return self.send(whole).await;
        }
        let mut rest = whole.events.into_iter().peekable();
        while rest.peek().is_some() {
            let mut part = WatchResponse {
                header: whole.header,
                watch_id: id,
                fragment: true,
                ..Default::default()
            };
            while let Some(event) = rest.peek() {
                part.events.push(event.clone());
                if part.events.len() > 1 && part.encoded_len() >= limit {
                    part.events.pop();
                    break;
                }
                rest.next();
            }
            part.fragment = rest.peek().is_some();
            self.send(part).await?;
        }
        Ok(())
    }

    async fn handle_request(&mut self, req: WatchRequest) -> Result<(), Closed> {
        match req.request_union {
            Some(watch_request::RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(watch_request::RequestUnion::CancelRequest(c)) => {
                if let Some(w) = self.watchers.remove(&c.watch_id) {
                    self.sub.unwatch(w.interest);
                    let resp = WatchResponse {
                        header: self.header(self.svc.hub.current()),
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    };
                    self.send(resp).await?;
                }
                Ok(())
            }
            Some(watch_request::RequestUnion::ProgressRequest(_)) => {
                // etcd announces progress on behalf of the watchers it has; with none, it
                // sends nothing. A compacted watcher will never be synced, so no answer can
                // be owed while one is there (etcd drops the request too). Otherwise the
                // request waits for watchers still catching up, where etcd would drop it.
                let compacted = self.watchers.values().any(|w| w.compacted);
                if !self.watchers.is_empty() && !compacted {
                    self.pending_progress += 1;
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, c: WatchCreateRequest) -> Result<(), Closed> {
        let current = self.svc.hub.current();
        // etcd's conventions: an empty key is the smallest key; "\0" as range end means
        // every key from `key` on.
        let key = if c.key.is_empty() { vec![0] } else { c.key.clone() };
        let range = KeyRange::from_request(&key, &c.range_end);
        let error = match &range {
            KeyRange::Span { start, end: Some(end) } if start >= end => Some(ERR_EMPTY_RANGE),
            _ if c.watch_id != 0 && self.watchers.contains_key(&c.watch_id) => Some(ERR_DUPLICATE_ID),
            _ => None,
        };
        if let Some(reason) = error {
            let resp = WatchResponse {
                header: self.header(current),
                watch_id: INVALID_WATCH_ID,
                created: true,
                canceled: true,
                cancel_reason: reason.to_string(),
                ..Default::default()
            };
            return self.send(resp).await;
        }
        let id = if c.watch_id != 0 {
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_auto_id) {
                self.next_auto_id += 1;
            }
            self.next_auto_id += 1;
            self.next_auto_id - 1
        };
        // Registered before the stream catches up with the hub's current revision: every
        // later revision touching the range is queued to it.
        let interest = self.sub.watch(&range);
        self.sync_to_current().await?;
        let current = self.stream_rev;
        let filters = |f: FilterType| c.filters.contains(&(f as i32));
        let watcher = Watcher {
            compacted: false,
            range,
            interest,
            // A negative start is below any compacted revision, as etcd treats it.
            next: if c.start_revision != 0 {
                c.start_revision
            } else {
                current + 1
            },
            prev_kv: c.prev_kv,
            no_put: filters(FilterType::Noput),
            no_delete: filters(FilterType::Nodelete),
            progress_notify: c.progress_notify,
            idle: true,
            fragment: c.fragment,
        };
        // A watcher starting after `stream_rev` is synced: everything from its start will be
        // queued (or found missing and read from history); one starting at or before it
        // reads history first.
        self.watchers.insert(id, watcher);
        let resp = WatchResponse {
            header: self.header(current),
            watch_id: id,
            created: true,
            ..Default::default()
        };
        self.send(resp).await
    }

    async fn deliver(&mut self, delivery: Delivery) -> Result<(), Closed> {
        match delivery {
            Delivery::Revision(rev) => self.deliver_live(&rev).await,
            // Dropped revisions: the synced watchers fall behind and read them from history.
            Delivery::Gap(to) => {
                self.stream_rev = self.stream_rev.max(to);
                Ok(())
            }
        }
    }

    /// Catches up with the hub: reads its current revision, then takes everything queued
    /// (all revisions up to that one for this stream are queued by then), then moves the
    /// synced watchers on to it.
    async fn sync_to_current(&mut self) -> Result<(), Closed> {
        let current = self.svc.hub.current();
        while let Some(delivery) = self.sub.try_recv() {
            self.deliver(delivery).await?;
        }
        if current > self.stream_rev {
            for w in self.watchers.values_mut() {
                if !w.compacted && w.next > self.stream_rev {
                    w.next = w.next.max(current + 1);
                }
            }
            self.stream_rev = current;
        }
        Ok(())
    }

    /// The watchers synced before `revision` that have not had it (a watcher that read
    /// history past it has).
    fn due(&self, revision: Revision) -> impl Iterator<Item = (&i64, &Watcher)> {
        let synced_after = self.stream_rev;
        self.watchers
            .iter()
            .filter(move |(_, w)| !w.compacted && w.next > synced_after && w.next <= revision)
    }

    async fn deliver_live(&mut self, rev: &RevisionEvents) -> Result<(), Closed> {
        if rev.revision <= self.stream_rev {
            return Ok(());
        }
        if rev.spilled {
            return self.deliver_spilled(rev.revision).await;
        }
        let due: Vec<i64> = self.due(rev.revision).map(|(id, _)| *id).collect();
        let mut sends = Vec::new();
        for id in due {
            let Some(w) = self.watchers.get_mut(&id) else {
                continue;
            };
            w.next = rev.revision + 1;
            let events = w.select(&rev.events);
            if !events.is_empty() {
                w.idle = false;
                sends.push((id, w.fragment, w.prev_kv, events));
            }
        }
        // Watchers behind (after a gap, or reading history) stay behind `stream_rev`.
        self.stream_rev = rev.revision;
        self.fill_deleted_prev(rev.revision, &mut sends).await;
        for (id, fragment, _, events) in sends {
            self.send_events(id, fragment, rev.revision, events).await?;
        }
        Ok(())
    }

    /// Deletes are applied without reading values, so their live events carry no previous
    /// version: for the watchers that asked for one, it is read here, once per key for all
    /// of them. As in etcd's watch stream, a failed read sends the event without it.
    async fn fill_deleted_prev(&self, revision: Revision, sends: &mut [(i64, bool, bool, Vec<Event>)]) {
        let lacking = |e: &Event| e.r#type == EventType::Delete as i32 && e.prev_kv.is_none();
        let keys: BTreeSet<Vec<u8>> = sends
            .iter()
            .filter(|(_, _, prev, _)| *prev)
            .flat_map(|(_, _, _, events)| events.iter().filter(|e| lacking(e)))
            .filter_map(|e| e.kv.as_ref().map(|kv| kv.key.to_vec()))
            .collect();
        if keys.is_empty() {
            return;
        }
        let view = self.svc.view.clone();
        let found = blocking(move || Ok(view.previous_versions(keys.into_iter().collect(), revision)?)).await;
        let prevs: BTreeMap<Vec<u8>, KeyValue> = match found {
            Ok(found) => found.into_iter().filter_map(|(k, kv)| kv.map(|kv| (k, kv))).collect(),
            Err(e) => {
                tracing::warn!(revision, error = %e, "reading the previous versions of deleted keys for watchers failed");
                return;
            }
        };
        for (_, _, _, events) in sends.iter_mut().filter(|(_, _, prev, _)| *prev) {
            for e in events.iter_mut().filter(|e| lacking(e)) {
                e.prev_kv = e.kv.as_ref().and_then(|kv| prevs.get(kv.key.as_ref()).cloned());
            }
        }
    }

    /// A revision too large to queue: each watcher due for it reads just that revision from
    /// storage and gets it exactly as it would have live (etcd sends it live, with the
    /// revision itself in the header). A watcher whose read fails or finds the revision
    /// compacted stays behind and goes through `catch_up`, which reports that.
    async fn deliver_spilled(&mut self, revision: Revision) -> Result<(), Closed> {
        let waiting: Vec<i64> = self.due(revision).map(|(id, _)| *id).collect();
        for id in waiting {
            let Some(w) = self.watchers.get(&id) else {
                continue;
            };
            let (view, range, prev) = (self.svc.view.clone(), w.range.clone(), w.prev_kv);
            let history = blocking(move || Ok(view.history(&range, revision, ONE_REVISION, prev)?)).await;
            let Ok(History::Events { events, .. }) = history else {
                continue;
            };
            let Some(w) = self.watchers.get_mut(&id) else {
                continue;
            };
            w.next = revision + 1;
            // The read runs on to the first revision with a match; only this one is due now.
            let this_revision: Vec<Event> = events
                .into_iter()
                .filter(|e| e.kv.as_ref().is_some_and(|kv| kv.mod_revision == revision))
                .collect();
            let events = w.select(&this_revision);
            let fragment = w.fragment;
            if !events.is_empty() {
                w.idle = false;
                self.send_events(id, fragment, revision, events).await?;
            }
        }
        self.stream_rev = revision;
        Ok(())
    }

    async fn catch_up(&mut self, id: i64) -> Result<(), Closed> {
        let Some(w) = self.watchers.get(&id) else {
            return Ok(());
        };
        let (view, range, from, prev) = (self.svc.view.clone(), w.range.clone(), w.next, w.prev_kv);
        let history = blocking(move || Ok(view.history(&range, from, HISTORY_LIMITS, prev)?)).await;
        match history {
            Err(e) => {
                // The read failed: the watcher cannot be served; tell the client, as a cancel.
                if let Some(w) = self.watchers.remove(&id) {
                    self.sub.unwatch(w.interest);
                }
                let resp = WatchResponse {
                    header: self.header(self.svc.hub.current()),
                    watch_id: id,
                    canceled: true,
                    cancel_reason: Status::from(e).message().to_string(),
                    ..Default::default()
                };
                self.send(resp).await
            }
            Ok(History::Compacted(compacted)) => {
                if let Some(w) = self.watchers.get_mut(&id) {
                    w.compacted = true;
                }
                let resp = WatchResponse {
                    header: self.header(0),
                    watch_id: id,
                    compact_revision: compacted,
                    canceled: true,
                    ..Default::default()
                };
                self.send(resp).await
            }
            Ok(History::Events { events, next, current }) => {
                let Some(w) = self.watchers.get_mut(&id) else {
                    return Ok(());
                };
                w.next = next.max(w.next);
                let events = w.select(&events);
                let fragment = w.fragment;
                if !events.is_empty() {
                    w.idle = false;
                    self.send_events(id, fragment, current, events).await?;
                }
                Ok(())
            }
        }
    }

    async fn progress_tick(&mut self) -> Result<(), Closed> {
        self.sync_to_current().await?;
        let stream_rev = self.stream_rev;
        let due: Vec<i64> = self
            .watchers
            .iter_mut()
            .filter(|(_, w)| w.progress_notify && !w.compacted)
            .filter_map(|(id, w)| {
                let notify = w.idle && w.next > stream_rev;
                w.idle = true;
                notify.then_some(*id)
            })
            .collect();
        for id in due {
            let resp = WatchResponse {
                header: self.header(stream_rev),
                watch_id: id,
                ..Default::default()
            };
            self.send(resp).await?;
        }
        Ok(())
    }

    /// Once every watcher has been sent every event up to `stream_rev`, that is the progress.
    async fn answer_progress_if_synced(&mut self) -> Result<(), Closed> {
        self.sync_to_current().await?;
        if !self.all_synced() {
            return Ok(());
        }
        while self.pending_progress > 0 {
            self.pending_progress -= 1;
            let resp = WatchResponse {
                header: self.header(self.stream_rev),
                watch_id: INVALID_WATCH_ID,
                ..Default::default()
            };
            self.send(resp).await?;
        }
        Ok(())
    }
}
