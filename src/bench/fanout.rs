//! watch-fanout: many watchers of one prefix plus many single-key watchers, then puts to the
//! watched keys (not in etcd's benchmark; issue 18's watch goal).
//!
//! `--prefix-streams` × `--prefix-watchers-per-stream` watchers watch all of `--prefix`;
//! `--key-streams` × `--key-watchers-per-stream` watchers each watch one key of their own
//! under it (`<prefix><8-digit number>`). Every stream is created first, its watchers one
//! after the other as clientv3 creates them, streams round-robin over the connections. Then
//! `--put-total` puts from the `--clients` go to the single-watched keys in turn, so each
//! put is one event for every prefix watcher and for one key watcher: a server that wakes
//! only the streams whose watchers match wakes the prefix streams and one key stream a put.
//! Reports the watch creations, the puts, and the events: delivered a second from the first
//! put to the last event (the headline rate), and from each put's send to each receipt.

use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use indicatif::ProgressBar;
use tonic::transport::Channel;

use super::report::Recorder;
use super::watch::{Events, PutPlan, WatchStream};
use super::{prefix_end, BenchError, Ctx, Rng, Summary};
use crate::proto::etcdserverpb::watch_client::WatchClient;
use crate::proto::etcdserverpb::WatchCreateRequest;

#[derive(Args, Debug, Clone)]
pub struct WatchFanoutArgs {
    /// The prefix the prefix watchers watch and the watched keys are under.
    #[arg(long, default_value = "/registry/cairn-fanout/")]
    pub prefix: String,
    /// Watch streams of prefix watchers.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub prefix_streams: u64,
    /// Prefix watchers per stream.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub prefix_watchers_per_stream: u64,
    /// Watch streams of single-key watchers.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub key_streams: u64,
    /// Single-key watchers per stream (each on a key of its own).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub key_watchers_per_stream: u64,
    /// Number of put requests.
    #[arg(long, default_value_t = 1000)]
    pub put_total: u64,
    /// Number of keys to put per second (0 is no limit).
    #[arg(long, default_value_t = 0)]
    pub put_rate: u64,
    /// Value size of the puts.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(0..=1 << 30))]
    pub val_size: u64,
}

impl WatchFanoutArgs {
    pub fn validate(&self) -> Result<(), BenchError> {
        if self.prefix.is_empty() {
            return Err(super::usage_error("watch-fanout", "--prefix must not be empty"));
        }
        Ok(())
    }

    fn prefix_watchers(&self) -> u64 {
        self.prefix_streams * self.prefix_watchers_per_stream
    }

    fn key_watchers(&self) -> u64 {
        self.key_streams * self.key_watchers_per_stream
    }

    /// The create requests of every stream: the prefix streams first.
    fn stream_plans(&self, keys: &[Vec<u8>]) -> Vec<Vec<WatchCreateRequest>> {
        let prefix = self.prefix.as_bytes().to_vec();
        let whole_prefix = WatchCreateRequest {
            range_end: prefix_end(&prefix),
            key: prefix,
            ..Default::default()
        };
        let prefix_streams =
            (0..self.prefix_streams).map(|_| vec![whole_prefix.clone(); self.prefix_watchers_per_stream as usize]);
        let key_streams = keys.chunks(self.key_watchers_per_stream as usize).map(|chunk| {
            chunk
                .iter()
                .map(|k| WatchCreateRequest {
                    key: k.clone(),
                    ..Default::default()
                })
                .collect()
        });
        prefix_streams.chain(key_streams).collect()
    }
}

/// The single-watched key number `i`.
fn watched_key(prefix: &str, i: u64) -> Vec<u8> {
    format!("{prefix}{i:08}").into_bytes()
}

pub async fn watch_fanout(ctx: &Ctx, a: WatchFanoutArgs) -> Result<Summary, BenchError> {
    let keys: Vec<Vec<u8>> = (0..a.key_watchers()).map(|i| watched_key(&a.prefix, i)).collect();
    let plans = a.stream_plans(&keys);
    let watchers = a.prefix_watchers() + a.key_watchers();

    let bar = ctx.progress(watchers);
    let started = Instant::now();
    let created = futures::future::join_all(
        plans
            .into_iter()
            .enumerate()
            .map(|(s, plan)| create_stream(ctx.watch(s), plan, bar.clone())),
    )
    .await;
    let creation_elapsed = started.elapsed();
    bar.finish();
    let mut creation = Recorder::default();
    let mut streams = Vec::with_capacity(created.len());
    for (stream, rec) in created {
        creation.merge(rec);
        streams.extend(stream);
    }
    if creation.failures() > 0 {
        // Events would be missing for watchers that do not exist: nothing to measure.
        let stats = creation.stats(creation_elapsed);
        let (error, n) = stats.errors.first().cloned().unwrap_or_default();
        return Err(BenchError::Fatal(format!(
            "{} of {watchers} watch creations failed (most often, {n} times: {error})",
            stats.error_count()
        )));
    }
    let creation = creation.stats(creation_elapsed);

    // Each key has one key watcher, and every prefix watcher sees every put.
    let per_key = a.prefix_watchers() + 1;
    let expected = a.put_total * per_key;
    let bar = ctx.progress(expected);
    let events = Events::start(streams, expected, &bar);
    let key_count = keys.len();
    let puts = PutPlan {
        keys: Arc::new(keys),
        events_per_key: Arc::new(vec![per_key; key_count]),
        value: Rng::new().bytes(a.val_size as usize),
        total: a.put_total,
        rate: a.put_rate,
    };
    let (put_stats, events) = puts.run(ctx, events, expected).await;
    bar.finish();

    let p = ctx.precision();
    let text = format!(
        "Watchers: {} on prefix {:?}, {} on single keys, over {} streams\n\n\
         Watch creation summary:\n{}\nPut summary:\n{}\nWatch events received summary:\n{}",
        a.prefix_watchers(),
        a.prefix,
        a.key_watchers(),
        a.prefix_streams + a.key_streams,
        creation.text(p),
        put_stats.text(p),
        events.text(p)
    );
    Ok(Summary {
        text,
        headline: events.clone(),
        parts: vec![("creation", creation), ("events", events), ("put", put_stats)],
        extra: vec![
            ("watchers", watchers.to_string()),
            ("events_expected", expected.to_string()),
        ],
    })
}

/// Opens one stream and creates its watchers one after the other; the stream is `None` when
/// not even the first watcher could be created.
async fn create_stream(
    client: WatchClient<Channel>,
    plan: Vec<WatchCreateRequest>,
    bar: ProgressBar,
) -> (Option<WatchStream>, Recorder) {
    let mut rec = Recorder::default();
    let mut stream: Option<WatchStream> = None;
    for create in plan {
        let start = Instant::now();
        let result = match stream.as_mut() {
            Some(s) => s.create(create).await,
            None => WatchStream::open(client.clone(), create).await.map(|s| {
                stream = Some(s);
            }),
        };
        rec.record(start.elapsed(), result);
        bar.inc(1);
    }
    (stream, rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> WatchFanoutArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cmd {
            #[command(flatten)]
            a: WatchFanoutArgs,
        }
        Cmd::parse_from(std::iter::once("watch-fanout").chain(extra.iter().copied())).a
    }

    #[test]
    fn issue_18s_shape_by_default() {
        let a = args(&[]);
        assert_eq!((a.prefix_watchers(), a.key_watchers()), (1_000, 10_000));
        let keys: Vec<Vec<u8>> = (0..a.key_watchers()).map(|i| watched_key(&a.prefix, i)).collect();
        let plans = a.stream_plans(&keys);
        assert_eq!(plans.len(), 110);
        assert!(plans.iter().all(|p| p.len() == 100));
        let prefix = &plans[0][0];
        assert_eq!(prefix.key, b"/registry/cairn-fanout/");
        assert_eq!(prefix.range_end, b"/registry/cairn-fanout0");
        // Every key watcher has a key of its own, under the prefix.
        let mut single: Vec<&[u8]> = plans[10..].iter().flatten().map(|c| c.key.as_slice()).collect();
        assert!(plans[10..].iter().flatten().all(|c| c.range_end.is_empty()));
        assert!(single.iter().all(|k| k.starts_with(b"/registry/cairn-fanout/")));
        single.sort();
        single.dedup();
        assert_eq!(single.len(), 10_000);
    }

    #[test]
    fn no_prefix_streams() {
        let a = args(&[
            "--prefix-streams",
            "0",
            "--key-streams",
            "3",
            "--key-watchers-per-stream",
            "2",
        ]);
        let keys: Vec<Vec<u8>> = (0..a.key_watchers()).map(|i| watched_key(&a.prefix, i)).collect();
        let plans = a.stream_plans(&keys);
        assert_eq!(plans.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 2]);
        assert_eq!(plans[2][1].key, b"/registry/cairn-fanout/00000005");
    }
}
