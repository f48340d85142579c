//! The watch workloads.
//!
//! - `watch` (etcd's `watch`): `--streams` watch streams over the clients, each with
//!   `--watch-per-stream` watchers on keys taken in turn from `--watched-key-total` keys;
//!   first the creation of every watcher is timed, then `--put-total` puts go to the watched
//!   keys and every event delivered is counted. The events report's rate is etcd's number
//!   (events delivered a second); its latencies are from each put's send to each watcher's
//!   receipt of its event (etcd's own per-event latency is ~0 and means nothing).
//! - `watch-latency` (etcd 3.6's): `--streams` × `--watchers-per-stream` watchers on one key,
//!   `--put-total` puts at `--put-rate` from a connection of their own; reports the puts and,
//!   per watcher and put, the time from the put's answer to the watcher's event (0 when the
//!   event came first).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::ProgressBar;
use tokio::sync::{mpsc, watch as signal, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

use super::report::{Recorder, Stats};
use super::{check_key_space, closed_loop, status_text, BenchError, Ctx, Limiter, Rng, Summary};
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::watch_client::WatchClient;
use crate::proto::etcdserverpb::{watch_request, PutRequest, WatchCreateRequest, WatchRequest, WatchResponse};

/// How long to wait for more events once the puts are done and no event has come.
const EVENT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    /// Total watch streams.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub streams: u64,
    /// Total watchers per stream.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub watch_per_stream: u64,
    /// Total number of keys to be watched.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub watched_key_total: u64,
    /// Number of keys to put per second (0 is no limit).
    #[arg(long, default_value_t = 0)]
    pub put_rate: u64,
    /// Number of put requests.
    #[arg(long, default_value_t = 1000)]
    pub put_total: u64,
    /// Key size of watch request.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub key_size: u64,
    /// Maximum possible keys.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub key_space_size: u64,
    /// Use sequential keys.
    #[arg(long)]
    pub sequential_keys: bool,
}

impl WatchArgs {
    pub fn validate(&self) -> Result<(), BenchError> {
        check_key_space("watch", self.key_size, self.key_space_size)
    }
}

pub async fn watch(ctx: &Ctx, a: WatchArgs) -> Result<Summary, BenchError> {
    let mut rng = Rng::new();
    let watched: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..a.watched_key_total)
            .map(|i| {
                let mut k = vec![0u8; a.key_size as usize];
                let n = if a.sequential_keys {
                    i % a.key_space_size
                } else {
                    rng.below(a.key_space_size)
                };
                super::put_varint(&mut k, n as i64);
                k
            })
            .collect(),
    );

    // Watch creation: each stream creates its watchers one after the other, as clientv3
    // does, on keys handed out in turn.
    let bar = ctx.progress(a.streams * a.watch_per_stream);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let creations = futures::future::join_all((0..a.streams as usize).map(|s| {
        let client = ctx.watch(s % ctx.clients());
        let (next, watched, bar) = (next.clone(), watched.clone(), bar.clone());
        async move {
            let mut rec = Recorder::default();
            let mut stream: Option<WatchStream> = None;
            let mut keys = Vec::new();
            for _ in 0..a.watch_per_stream {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let key = watched[(i % watched.len() as u64) as usize].clone();
                let create = WatchCreateRequest {
                    key: key.clone(),
                    ..Default::default()
                };
                let start = Instant::now();
                let result = match stream.as_mut() {
                    Some(s) => s.create(create).await,
                    None => WatchStream::open(client.clone(), create).await.map(|s| {
                        stream = Some(s);
                    }),
                };
                if result.is_ok() {
                    keys.push(key);
                }
                rec.record(start.elapsed(), result);
                bar.inc(1);
            }
            (stream, keys, rec)
        }
    }))
    .await;
    let creation_elapsed = started.elapsed();
    bar.finish();

    let mut creation = Recorder::default();
    let mut streams = Vec::new();
    let mut watchers: HashMap<Vec<u8>, u64> = HashMap::new();
    for (stream, keys, rec) in creations {
        creation.merge(rec);
        streams.extend(stream);
        for k in keys {
            *watchers.entry(k).or_default() += 1;
        }
    }
    let creation = creation.stats(creation_elapsed);

    // Events: puts to the watched keys, each delivered to every watcher of its key.
    let per_put: Arc<Vec<u64>> = Arc::new(watched.iter().map(|k| watchers.get(k).copied().unwrap_or(0)).collect());
    let events_total: u64 = (0..a.put_total)
        .map(|i| per_put[(i % watched.len() as u64) as usize])
        .sum();
    let bar = ctx.progress(events_total);
    let events = Events::start(streams, events_total, &bar);
    let puts = PutPlan {
        keys: watched,
        events_per_key: per_put,
        value: b"data".to_vec(),
        total: a.put_total,
        rate: a.put_rate,
    };
    let (put_stats, events) = puts.run(ctx, events, events_total).await;
    bar.finish();

    let p = ctx.precision();
    let text = format!(
        "Watch creation summary:\n{}Watch events received summary:\n{}",
        creation.text(p),
        events.text(p)
    );
    Ok(Summary {
        text,
        headline: events.clone(),
        parts: vec![("creation", creation), ("events", events), ("put", put_stats)],
        extra: vec![("events_expected", events_total.to_string())],
    })
}

/// Puts that feed watchers: put `i` goes to `keys[i mod keys]`, whose event
/// `events_per_key` watchers expect.
pub(super) struct PutPlan {
    pub keys: Arc<Vec<Vec<u8>>>,
    pub events_per_key: Arc<Vec<u64>>,
    pub value: Vec<u8>,
    pub total: u64,
    /// Puts a second (0 is no limit).
    pub rate: u64,
}

impl PutPlan {
    /// Makes the puts from every client while `events` receive, waits for the events, and
    /// returns the puts' report and the events' (latency: each put's send to each watcher's
    /// receipt of its event; rate: events a second from the first put to the last event).
    pub async fn run(self, ctx: &Ctx, events: Events, expected: u64) -> (Stats, Stats) {
        let sent: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
        let lost = Arc::new(AtomicU64::new(0));
        let kvs = ctx.kv_clients();
        let (sent_by_op, lost_by_op) = (sent.clone(), lost.clone());
        let (remaining, done) = (events.remaining.clone(), events.done.clone());
        let PutPlan {
            keys,
            events_per_key,
            value,
            total,
            rate,
        } = self;
        let key_count = keys.len() as u64;
        let started = Instant::now();
        let puts = closed_loop(
            ctx,
            total,
            Limiter::new(rate, 1),
            1,
            &ProgressBar::hidden(),
            move |i| (i % key_count) as usize,
            move |c, k| {
                let mut kv = kvs[c].clone();
                let put = PutRequest {
                    key: keys[k].clone(),
                    value: value.clone(),
                    ..Default::default()
                };
                let (sent, remaining, done, lost) =
                    (sent_by_op.clone(), remaining.clone(), done.clone(), lost_by_op.clone());
                let expected = events_per_key[k];
                async move {
                    let start = Instant::now();
                    match kv.put(put).await {
                        Ok(r) => {
                            let rev = r.into_inner().header.map_or(0, |h| h.revision);
                            sent.lock().unwrap_or_else(|e| e.into_inner()).insert(rev, start);
                            (0, Ok(()))
                        }
                        Err(s) => {
                            // No event will come for it: stop waiting for them.
                            lost.fetch_add(expected, Ordering::Relaxed);
                            if remaining.fetch_sub(expected as i64, Ordering::AcqRel) <= expected as i64 {
                                done.notify_one();
                            }
                            (0, Err(status_text(&s)))
                        }
                    }
                }
            },
        )
        .await;
        let put_stats = super::kv::one(puts.slots).stats(puts.elapsed);
        let received = events.finish().await;
        let elapsed = started.elapsed();
        let sent = std::mem::take(&mut *sent.lock().unwrap_or_else(|e| e.into_inner()));
        let expected = expected.saturating_sub(lost.load(Ordering::Relaxed));
        let events = received.report(|rev| sent.get(&rev).copied(), expected);
        (put_stats, events.stats(elapsed))
    }
}

#[derive(Args, Debug, Clone)]
pub struct WatchLatencyArgs {
    /// Total watch streams.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub streams: u64,
    /// Total watchers per stream.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub watchers_per_stream: u64,
    /// PrevKV enabled on watch requests.
    #[arg(long)]
    pub prevkv: bool,
    /// Total number of put requests.
    #[arg(long, default_value_t = 1000)]
    pub put_total: u64,
    /// Number of keys to put per second (0 is no limit).
    #[arg(long, default_value_t = 100)]
    pub put_rate: u64,
    /// Key size of watch response.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub key_size: u64,
    /// Value size of watch response.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(0..=1 << 30))]
    pub val_size: u64,
}

pub async fn watch_latency(ctx: &Ctx, a: WatchLatencyArgs) -> Result<Summary, BenchError> {
    let mut rng = Rng::new();
    let key = rng.bytes(a.key_size as usize);
    let value = rng.bytes(a.val_size as usize);
    let create = WatchCreateRequest {
        key: key.clone(),
        prev_kv: a.prevkv,
        ..Default::default()
    };
    let opened = futures::future::join_all((0..a.streams as usize).map(|s| {
        let client = ctx.watch(s % ctx.clients());
        let create = create.clone();
        async move {
            let mut stream = WatchStream::open(client, create.clone()).await?;
            for _ in 1..a.watchers_per_stream {
                stream.create(create.clone()).await?;
            }
            Ok::<_, String>(stream)
        }
    }))
    .await;
    let mut streams = Vec::with_capacity(opened.len());
    for s in opened {
        streams.push(s.map_err(|e| BenchError::Fatal(format!("cannot create watchers: {e}")))?);
    }
    let watchers = a.streams * a.watchers_per_stream;
    let expected = watchers * a.put_total;

    let mut put_client = KvClient::new(ctx.dial_extra().await?);
    let bar = ctx.progress(expected);
    let events = Events::start(streams, expected, &bar);
    let limiter = Limiter::new(a.put_rate, a.put_rate);
    let mut puts = Recorder::default();
    let mut answered: HashMap<i64, Instant> = HashMap::with_capacity(a.put_total as usize);
    let started = Instant::now();
    for _ in 0..a.put_total {
        if let Some(l) = &limiter {
            l.wait().await;
        }
        let start = Instant::now();
        let put = PutRequest {
            key: key.clone(),
            value: value.clone(),
            ..Default::default()
        };
        match put_client.put(put).await {
            Ok(r) => {
                let end = Instant::now();
                puts.success(end - start);
                answered.insert(r.into_inner().header.map_or(0, |h| h.revision), end);
            }
            Err(s) => {
                events.abort();
                return Err(BenchError::Fatal(format!(
                    "Failed to Put for watch latency benchmark: {}",
                    status_text(&s)
                )));
            }
        }
    }
    let put_stats = puts.stats(started.elapsed());
    let received = events.finish().await;
    let elapsed = started.elapsed();
    bar.finish();
    let watch_stats = received
        .report(|rev| answered.get(&rev).copied(), expected)
        .stats(elapsed);

    let p = ctx.precision();
    let text = format!(
        "\nPut summary:\n{}\nWatch events summary:\n{}",
        put_stats.text(p),
        watch_stats.text(p)
    );
    Ok(Summary {
        text,
        headline: watch_stats.clone(),
        parts: vec![("put", put_stats), ("watch", watch_stats)],
        extra: vec![("watchers", watchers.to_string())],
    })
}

/// One Watch RPC and the sending half that keeps it open.
pub(super) struct WatchStream {
    tx: mpsc::Sender<WatchRequest>,
    rx: Streaming<WatchResponse>,
}

impl WatchStream {
    /// Opens a stream whose first request creates a watcher, and waits until it is created.
    /// The request goes before the call: etcd's server sends no headers until it answers.
    pub async fn open(mut client: WatchClient<Channel>, create: WatchCreateRequest) -> Result<WatchStream, String> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(create_request(create))
            .await
            .map_err(|_| "watch request not sent".to_string())?;
        let rx = client
            .watch(ReceiverStream::new(rx))
            .await
            .map_err(|s| status_text(&s))?
            .into_inner();
        let mut stream = WatchStream { tx, rx };
        stream.created().await?;
        Ok(stream)
    }

    /// Creates one more watcher and waits until the server confirms it.
    pub async fn create(&mut self, create: WatchCreateRequest) -> Result<(), String> {
        self.tx
            .send(create_request(create))
            .await
            .map_err(|_| "watch stream closed".to_string())?;
        self.created().await
    }

    async fn created(&mut self) -> Result<(), String> {
        loop {
            match self.rx.message().await {
                Ok(Some(r)) if r.canceled => return Err(format!("watch canceled: {}", r.cancel_reason)),
                Ok(Some(r)) if r.created => return Ok(()),
                Ok(Some(_)) => continue,
                Ok(None) => return Err("watch stream closed".into()),
                Err(s) => return Err(status_text(&s)),
            }
        }
    }
}

fn create_request(create: WatchCreateRequest) -> WatchRequest {
    WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
    }
}

/// The receiving side: one task a stream, each noting every event's revision and arrival.
pub(super) struct Events {
    remaining: Arc<AtomicI64>,
    done: Arc<Notify>,
    stop: signal::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<Received>>,
}

/// What the streams received: (mod revision, arrival) per event, and stream failures.
#[derive(Default)]
struct Received {
    events: Vec<(i64, Instant)>,
    errors: Vec<String>,
}

impl Events {
    pub fn start(streams: Vec<WatchStream>, expected: u64, bar: &ProgressBar) -> Events {
        let remaining = Arc::new(AtomicI64::new(expected as i64));
        let done = Arc::new(Notify::new());
        if expected == 0 {
            done.notify_one();
        }
        let (stop, stopped) = signal::channel(false);
        let tasks = streams
            .into_iter()
            .map(|stream| {
                let (remaining, done, mut stopped, bar) =
                    (remaining.clone(), done.clone(), stopped.clone(), bar.clone());
                tokio::spawn(async move {
                    // The sender stays here: dropping it would end the stream.
                    let WatchStream { tx, mut rx } = stream;
                    let mut got = Received::default();
                    loop {
                        tokio::select! {
                            _ = stopped.changed() => break,
                            msg = rx.message() => match msg {
                                Ok(Some(resp)) => {
                                    let now = Instant::now();
                                    for ev in &resp.events {
                                        got.events.push((ev.kv.as_ref().map_or(0, |kv| kv.mod_revision), now));
                                        bar.inc(1);
                                        if remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                                            done.notify_one();
                                        }
                                    }
                                    if resp.canceled {
                                        got.errors.push(format!("watch canceled: {}", resp.cancel_reason));
                                        break;
                                    }
                                }
                                Ok(None) => {
                                    got.errors.push("watch stream closed".into());
                                    break;
                                }
                                Err(s) => {
                                    got.errors.push(status_text(&s));
                                    break;
                                }
                            }
                        }
                    }
                    drop(tx);
                    got
                })
            })
            .collect();
        Events {
            remaining,
            done,
            stop,
            tasks,
        }
    }

    /// Waits until every expected event came, or none came for `EVENT_IDLE_TIMEOUT`, then
    /// stops the streams and gathers what they received.
    async fn finish(self) -> Received {
        loop {
            let before = self.remaining.load(Ordering::Acquire);
            if before <= 0 {
                break;
            }
            if tokio::time::timeout(EVENT_IDLE_TIMEOUT, self.done.notified())
                .await
                .is_ok()
            {
                break;
            }
            if self.remaining.load(Ordering::Acquire) == before {
                break;
            }
        }
        let _ = self.stop.send(true);
        let mut all = Received::default();
        for task in self.tasks {
            match task.await {
                Ok(got) => {
                    all.events.extend(got.events);
                    all.errors.extend(got.errors);
                }
                Err(e) => all.errors.push(format!("watch receiver failed: {e}")),
            }
        }
        all
    }

    fn abort(self) {
        let _ = self.stop.send(true);
    }
}

impl Received {
    /// Latencies from each event's put (`origin` of its revision: `None` for an event of no
    /// put of ours) to its arrival; each of `expected` events that did not come, and each
    /// stream failure, is an error. An event that came before its origin (a put's answer can
    /// trail its event) counts as 0, as in etcd's watch-latency.
    fn report(self, origin: impl Fn(i64) -> Option<Instant>, expected: u64) -> Recorder {
        let mut rec = Recorder::default();
        let mut matched = 0u64;
        for (rev, at) in self.events {
            if let Some(from) = origin(rev) {
                matched += 1;
                rec.success(at.saturating_duration_since(from));
            }
        }
        for _ in matched..expected {
            rec.failure("watch event not received".into());
        }
        for e in self.errors {
            rec.failure(e);
        }
        rec
    }
}
