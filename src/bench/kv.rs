//! The KV workloads: put, range, txn-put and txn-mixed, as etcd's benchmark runs them.

use std::time::{Duration, Instant};

use clap::Args;
use tonic::transport::Channel;

use super::report::Recorder;
use super::{check_key_space, closed_loop, status_text, usage_error, BenchError, Ctx, Limiter, Rng, Summary};
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::{
    request_op, CompactionRequest, HashKvRequest, PutRequest, RangeRequest, RequestOp, StatusRequest, TxnRequest,
};

#[derive(Args, Debug, Clone)]
pub struct PutArgs {
    /// Key size of put request.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub key_size: u64,
    /// Value size of put request.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(0..=1 << 30))]
    pub val_size: u64,
    /// Maximum puts per second (0 is no limit).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Total number of put requests.
    #[arg(long, default_value_t = 10000)]
    pub total: u64,
    /// Maximum possible keys.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub key_space_size: u64,
    /// Use sequential keys.
    #[arg(long)]
    pub sequential_keys: bool,
    /// Interval to compact the database (Go duration, e.g. 5m; 0 never). Do not combine with
    /// the server's --auto-compaction-retention.
    #[arg(long, default_value = "0s", value_parser = super::parse_go_duration)]
    pub compact_interval: Duration,
    /// Delta between the current revision and the compact revision (e.g. current revision
    /// 10000, compact at 9000).
    #[arg(long, default_value_t = 1000)]
    pub compact_index_delta: i64,
    /// Check the first endpoint's HashKV after the run.
    #[arg(long)]
    pub check_hashkv: bool,
}

impl PutArgs {
    pub fn validate(&self) -> Result<(), BenchError> {
        check_key_space("put", self.key_size, self.key_space_size)
    }
}

pub async fn put(ctx: &Ctx, a: PutArgs) -> Result<Summary, BenchError> {
    let kvs = ctx.kv_clients();
    let mut rng = Rng::new();
    let value = rng.bytes(a.val_size as usize);
    let mut key = vec![0u8; a.key_size as usize];
    let (kss, sequential) = (a.key_space_size, a.sequential_keys);
    let generate = move |i: u64| {
        let n = if sequential { i % kss } else { rng.below(kss) };
        super::put_varint(&mut key, n as i64);
        PutRequest {
            key: key.clone(),
            value: value.clone(),
            ..Default::default()
        }
    };

    let compactor = (!a.compact_interval.is_zero())
        .then(|| tokio::spawn(compact_every(ctx.kv(0), a.compact_interval, a.compact_index_delta)));

    let bar = ctx.progress(a.total);
    let clients = kvs.clone();
    let run = closed_loop(
        ctx,
        a.total,
        Limiter::new(a.rate, 1),
        1,
        &bar,
        generate,
        move |c, req| {
            let mut kv = clients[c].clone();
            async move { (0, kv.put(req).await.map(drop).map_err(|s| status_text(&s))) }
        },
    )
    .await;
    bar.finish();
    if let Some(compactor) = compactor {
        compactor.abort();
    }

    let stats = one(run.slots).stats(run.elapsed);
    // etcd prints the put report with Println: one more newline than the report's own.
    let mut text = format!("{}\n", stats.text(ctx.precision()));
    let mut summary = Summary::single(String::new(), stats);
    if a.check_hashkv {
        let (hash_text, hash_json) = hash_kv(ctx).await?;
        text.push_str(&hash_text);
        summary.extra.push(("hashkv", hash_json));
    }
    summary.text = text;
    Ok(summary)
}

/// etcd's `--compact-interval`: every interval, compact to `delta` revisions behind the
/// current one (read from a get of `foo`). A failure is reported and the next one tried.
async fn compact_every(mut kv: KvClient<Channel>, interval: Duration, delta: i64) {
    loop {
        tokio::time::sleep(interval).await;
        let rev = match kv
            .range(RangeRequest {
                key: b"foo".to_vec(),
                ..Default::default()
            })
            .await
        {
            Ok(r) => r.into_inner().header.map_or(0, |h| h.revision),
            Err(s) => {
                eprintln!("cairn bench: compaction: range failed: {}", status_text(&s));
                continue;
            }
        };
        let revision = (rev - delta).max(0);
        if let Err(s) = kv
            .compact(CompactionRequest {
                revision,
                physical: false,
            })
            .await
        {
            eprintln!("cairn bench: compaction at {revision} failed: {}", status_text(&s));
        }
    }
}

/// etcd's `--check-hashkv`: the first endpoint's HashKV (asked twice, the first discarded, as
/// etcd's benchmark does) and its database size.
async fn hash_kv(ctx: &Ctx) -> Result<(String, String), BenchError> {
    let host = ctx
        .global
        .endpoints
        .first()
        .map(|e| e.trim().to_string())
        .unwrap_or_default();
    let mut m = ctx.maintenance(0);
    let start = Instant::now();
    let _ = m.hash_kv(HashKvRequest { revision: 0 }).await;
    let hash = m
        .hash_kv(HashKvRequest { revision: 0 })
        .await
        .map_err(|s| {
            BenchError::Fatal(format!(
                "Failed to get the hashkv of endpoint {host} ({})",
                status_text(&s)
            ))
        })?
        .into_inner()
        .hash;
    let took = start.elapsed();
    let db_size = m
        .status(StatusRequest {})
        .await
        .map_err(|s| {
            BenchError::Fatal(format!(
                "Failed to get the status of endpoint {host} ({})",
                status_text(&s)
            ))
        })?
        .into_inner()
        .db_size;
    let text = format!(
        "HashKV Summary:\n\tHashKV: {hash}\n\tEndpoint: {host}\n\tTime taken to get hashkv: {took:?}\n\tDB size: {}\n",
        humanize_bytes(db_size.max(0) as u64)
    );
    let json = format!(
        "{{\"hash\":{hash},\"endpoint\":{},\"seconds\":{},\"db_size\":{db_size}}}",
        super::report::json_string(&host),
        took.as_secs_f64()
    );
    Ok((text, json))
}

/// go-humanize's `Bytes`: SI units, one decimal below 10.
fn humanize_bytes(n: u64) -> String {
    if n < 10 {
        return format!("{n} B");
    }
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let e = e.min(UNITS.len() - 1);
    let v = ((n as f64) / 1000f64.powi(e as i32) * 10.0 + 0.5).floor() / 10.0;
    if v < 10.0 {
        format!("{v:.1} {}", UNITS[e])
    } else {
        format!("{v:.0} {}", UNITS[e])
    }
}

#[derive(Args, Debug, Clone)]
pub struct RangeArgs {
    /// The key to range over (or the prefix, under --prefix).
    #[arg(required_unless_present = "prefix")]
    pub key: Option<String>,
    /// The range end (exclusive).
    pub end: Option<String>,
    /// Maximum range requests per second (0 is no limit).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Total number of range requests.
    #[arg(long, default_value_t = 10000)]
    pub total: u64,
    /// Linearizable(l) or Serializable(s).
    #[arg(long, default_value = "l", value_parser = ["l", "s"])]
    pub consistency: String,
    /// Maximum number of results to return from range request (0 is no limit).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    pub limit: i64,
    /// Only returns the count of keys.
    #[arg(long, conflicts_with = "keys_only")]
    pub count_only: bool,
    /// Only returns the keys.
    #[arg(long)]
    pub keys_only: bool,
    /// Range over all keys with the given key as prefix.
    #[arg(long, conflicts_with = "end")]
    pub prefix: bool,
}

pub async fn range(ctx: &Ctx, a: RangeArgs) -> Result<Summary, BenchError> {
    let serializable = consistency_note(ctx, &a.consistency);
    let key = a.key.unwrap_or_default().into_bytes();
    let (key, range_end) = if a.prefix {
        if key.is_empty() {
            (vec![0], vec![0])
        } else {
            let end = super::prefix_end(&key);
            (key, end)
        }
    } else {
        (key, a.end.unwrap_or_default().into_bytes())
    };
    let request = RangeRequest {
        key,
        range_end,
        limit: a.limit,
        serializable,
        keys_only: a.keys_only,
        count_only: a.count_only,
        ..Default::default()
    };
    let kvs = ctx.kv_clients();
    let bar = ctx.progress(a.total);
    let run = closed_loop(
        ctx,
        a.total,
        Limiter::new(a.rate, 1),
        1,
        &bar,
        move |_| request.clone(),
        move |c, req| {
            let mut kv = kvs[c].clone();
            async move { (0, kv.range(req).await.map(drop).map_err(|s| status_text(&s))) }
        },
    )
    .await;
    bar.finish();
    let stats = one(run.slots).stats(run.elapsed);
    Ok(Summary::single(stats.text(ctx.precision()), stats))
}

/// Prints etcd's "bench with ... range" line; true for serializable.
fn consistency_note(ctx: &Ctx, consistency: &str) -> bool {
    let serializable = consistency == "s";
    ctx.note(if serializable {
        "bench with serializable range"
    } else {
        "bench with linearizable range"
    });
    serializable
}

#[derive(Args, Debug, Clone)]
pub struct TxnPutArgs {
    /// Key size of txn put.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub key_size: u64,
    /// Value size of txn put.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(0..=1 << 30))]
    pub val_size: u64,
    /// Number of puts per txn.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub txn_ops: u64,
    /// Maximum txns per second (0 is no limit).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Total number of txn requests.
    #[arg(long, default_value_t = 10000)]
    pub total: u64,
    /// Maximum possible keys.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub key_space_size: u64,
}

impl TxnPutArgs {
    pub fn validate(&self) -> Result<(), BenchError> {
        check_key_space("txn-put", self.key_size, self.key_space_size)?;
        if self.txn_ops > self.key_space_size {
            return Err(usage_error(
                "txn-put",
                format!(
                    "expected --txn-ops no larger than --key-space-size, got txn-ops({}) key-space-size({})",
                    self.txn_ops, self.key_space_size
                ),
            ));
        }
        Ok(())
    }
}

pub async fn txn_put(ctx: &Ctx, a: TxnPutArgs) -> Result<Summary, BenchError> {
    let mut rng = Rng::new();
    let value = rng.bytes(a.val_size as usize);
    let mut key = vec![0u8; a.key_size as usize];
    let (ops, kss) = (a.txn_ops, a.key_space_size);
    let generate = move |i: u64| {
        let success = (0..ops)
            .map(|j| {
                super::put_varint(&mut key, ((i.wrapping_mul(ops).wrapping_add(j)) % kss) as i64);
                put_op(key.clone(), value.clone())
            })
            .collect();
        TxnRequest {
            success,
            ..Default::default()
        }
    };
    let kvs = ctx.kv_clients();
    let bar = ctx.progress(a.total);
    let run = closed_loop(
        ctx,
        a.total,
        Limiter::new(a.rate, 1),
        1,
        &bar,
        generate,
        move |c, req| {
            let mut kv = kvs[c].clone();
            async move { (0, kv.txn(req).await.map(drop).map_err(|s| status_text(&s))) }
        },
    )
    .await;
    bar.finish();
    let stats = one(run.slots).stats(run.elapsed);
    Ok(Summary::single(format!("{}\n", stats.text(ctx.precision())), stats))
}

#[derive(Args, Debug, Clone)]
pub struct TxnMixedArgs {
    /// Accepted for etcd's `txn-mixed key [end-range]` and ignored, as etcd ignores them.
    #[arg(hide = true, num_args = 0..=2)]
    pub ignored: Vec<String>,
    /// Key size of mixed txn.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub key_size: u64,
    /// Value size of mixed txn.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(0..=1 << 30))]
    pub val_size: u64,
    /// Maximum txns per second (0 is no limit).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Total number of txn requests.
    #[arg(long, default_value_t = 10000)]
    pub total: u64,
    /// Read operation range end key. By default, a full range query with the default limit
    /// of 1000. (etcd's own benchmark overrides this flag with a full range; here it is used.)
    #[arg(long, default_value = "")]
    pub end_key: String,
    /// Read operation range result limit.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(0..))]
    pub limit: i64,
    /// Maximum possible keys.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub key_space_size: u64,
    /// Linearizable(l) or Serializable(s).
    #[arg(long, default_value = "l", value_parser = ["l", "s"])]
    pub consistency: String,
    /// Read/write ops ratio.
    #[arg(long, default_value_t = 1.0, value_parser = parse_ratio)]
    pub rw_ratio: f64,
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!("{s:?} is not a ratio (a number, 0 or more)")),
    }
}

const READ: usize = 0;
const WRITE: usize = 1;

impl TxnMixedArgs {
    pub fn validate(&self) -> Result<(), BenchError> {
        check_key_space("txn-mixed", self.key_size, self.key_space_size)
    }
}

pub async fn txn_mixed(ctx: &Ctx, a: TxnMixedArgs) -> Result<Summary, BenchError> {
    let serializable = consistency_note(ctx, &a.consistency);
    let mut rng = Rng::new();
    let value = rng.bytes(a.val_size as usize);
    let mut key = vec![0u8; a.key_size as usize];
    // clientv3's Get("", WithPrefix()) is the whole key space: from \0 to \0.
    let end = if a.end_key.is_empty() {
        vec![0]
    } else {
        a.end_key.clone().into_bytes()
    };
    let read = RangeRequest {
        key: vec![0],
        range_end: end,
        limit: a.limit,
        serializable,
        ..Default::default()
    };
    let read_share = a.rw_ratio / (1.0 + a.rw_ratio);
    let kss = a.key_space_size;
    let generate = move |i: u64| {
        let (slot, op) = if rng.unit() < read_share {
            let op = RequestOp {
                request: Some(request_op::Request::RequestRange(read.clone())),
            };
            (READ, op)
        } else {
            super::put_varint(&mut key, (i % kss) as i64);
            (WRITE, put_op(key.clone(), value.clone()))
        };
        let txn = TxnRequest {
            success: vec![op],
            ..Default::default()
        };
        (slot, txn)
    };
    let kvs = ctx.kv_clients();
    let bar = ctx.progress(a.total);
    let run = closed_loop(
        ctx,
        a.total,
        Limiter::new(a.rate, 1),
        2,
        &bar,
        generate,
        move |c, (slot, req)| {
            let mut kv = kvs[c].clone();
            async move { (slot, kv.txn(req).await.map(drop).map_err(|s| status_text(&s))) }
        },
    )
    .await;
    bar.finish();
    let mut slots = run.slots.into_iter();
    let (reads, writes) = (slots.next().unwrap_or_default(), slots.next().unwrap_or_default());
    let mut all = reads.clone();
    all.merge(writes.clone());
    let ops = |r: &Recorder| r.successes() as u64 + r.failures();
    let (read_ops, write_ops) = (ops(&reads), ops(&writes));
    let reads = reads.stats(run.elapsed);
    let writes = writes.stats(run.elapsed);
    let p = ctx.precision();
    let text = format!(
        "Total Read Ops: {read_ops}\nDetails:{}\nTotal Write Ops: {write_ops}\nDetails:{}\n",
        reads.text(p),
        writes.text(p)
    );
    Ok(Summary {
        text,
        headline: all.stats(run.elapsed),
        parts: vec![("read", reads), ("write", writes)],
        extra: vec![("read_ops", read_ops.to_string()), ("write_ops", write_ops.to_string())],
    })
}

pub(super) fn put_op(key: Vec<u8>, value: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key,
            value,
            ..Default::default()
        })),
    }
}

/// The only recorder of a one-slot run.
pub(super) fn one(slots: Vec<Recorder>) -> Recorder {
    slots.into_iter().next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanized_sizes() {
        assert_eq!(humanize_bytes(5), "5 B");
        assert_eq!(humanize_bytes(82_854), "83 kB");
        assert_eq!(humanize_bytes(1_234_567), "1.2 MB");
        assert_eq!(humanize_bytes(25_000_000), "25 MB");
    }
}
