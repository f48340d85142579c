//! list: kube-apiserver's paginated LIST of a resource prefix (not in etcd's benchmark).
//!
//! Preloads `--key-count` keys under `--prefix` (`--preload-txn-ops` puts a Txn, from every
//! client), then each of `--total` lists reads the prefix as the apiserver's storage layer
//! does: pages of `--page-size` (`limit`) over
//! `[prefix, prefix_end)`, the first at the current revision, the rest at the first page's
//! revision and from the last key returned plus `\0`, until `more` is false; the keys are
//! counted and checked against the first page's `count`. Reports the whole-list time (the
//! headline) and every page's latency.

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clap::Args;

use super::report::{self, Recorder, Stats};
use super::{closed_loop, status_text, BenchError, Ctx, Limiter, Rng, Summary};
use crate::proto::etcdserverpb::{PutRequest, RangeRequest, TxnRequest};

#[derive(Args, Debug, Clone)]
pub struct ListArgs {
    /// Keys to preload under the prefix.
    #[arg(long, default_value_t = 10000)]
    pub key_count: u64,
    /// Keys a page (the range's limit), as kube-apiserver's default page of 500.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..))]
    pub page_size: i64,
    /// Total number of whole lists.
    #[arg(long, default_value_t = 100)]
    pub total: u64,
    /// Value size of the preloaded keys (each its own random value: one value repeated would
    /// flatter a store that compresses).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(0..=1 << 30))]
    pub val_size: u64,
    /// The prefix to preload and list.
    #[arg(long, default_value = "/registry/cairn-bench/")]
    pub prefix: String,
    /// List what is under the prefix already: no preload.
    #[arg(long)]
    pub no_preload: bool,
    /// Puts a preload Txn carries (1: one Put request a key). The default is etcd's
    /// --max-txn-ops default, the most a server takes without flags.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..))]
    pub preload_txn_ops: u64,
    /// Linearizable(l) or Serializable(s) pages.
    #[arg(long, default_value = "l", value_parser = ["l", "s"])]
    pub consistency: String,
    /// Maximum whole lists per second (0 is no limit).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
}

/// The key of preloaded object `i`: fixed-width decimal, so key order is number order.
fn object_key(prefix: &str, width: usize, i: u64) -> Vec<u8> {
    format!("{prefix}{i:0width$}").into_bytes()
}

impl ListArgs {
    pub fn validate(&self) -> Result<(), BenchError> {
        if self.prefix.is_empty() {
            return Err(super::usage_error("list", "--prefix must not be empty"));
        }
        Ok(())
    }
}

pub async fn list(ctx: &Ctx, a: ListArgs) -> Result<Summary, BenchError> {
    let kvs = ctx.kv_clients();
    let serializable = a.consistency == "s";
    let preloaded = if a.no_preload {
        None
    } else {
        Some(preload(ctx, &a).await?)
    };
    ctx.note(&format!(
        "bench with {} paginated list of {:?}, pages of {}",
        if serializable { "serializable" } else { "linearizable" },
        a.prefix,
        a.page_size
    ));

    let prefix = a.prefix.clone().into_bytes();
    let end = super::prefix_end(&prefix);
    let pages = Arc::new(Mutex::new(Recorder::default()));
    let keys_seen = Arc::new(Mutex::new(None::<(usize, usize)>));
    let (pages_by_op, keys_by_op, page_size) = (pages.clone(), keys_seen.clone(), a.page_size);
    let bar = ctx.progress(a.total);
    let run = closed_loop(
        ctx,
        a.total,
        Limiter::new(a.rate, 1),
        1,
        &bar,
        |_| (),
        move |c, ()| {
            let mut kv = kvs[c].clone();
            let (mut key, end) = (prefix.clone(), end.clone());
            let (pages, keys_seen) = (pages_by_op.clone(), keys_by_op.clone());
            async move {
                let mut revision = 0;
                let mut first_count = 0;
                let mut listed = 0usize;
                let mut page_count = 0usize;
                let mut page_lats = Recorder::default();
                let result = loop {
                    let request = RangeRequest {
                        key: key.clone(),
                        range_end: end.clone(),
                        limit: page_size,
                        revision,
                        serializable,
                        ..Default::default()
                    };
                    let start = Instant::now();
                    let resp = kv.range(request).await;
                    let took = start.elapsed();
                    let resp = match resp {
                        Ok(r) => r.into_inner(),
                        Err(s) => {
                            let e = status_text(&s);
                            page_lats.failure(e.clone());
                            break Err(e);
                        }
                    };
                    page_lats.success(took);
                    page_count += 1;
                    if revision == 0 {
                        revision = resp.header.map_or(0, |h| h.revision);
                        first_count = resp.count;
                    }
                    listed += resp.kvs.len();
                    match resp.kvs.last() {
                        Some(last) if resp.more => {
                            key = last.key.to_vec();
                            key.push(0);
                        }
                        _ => break Ok(()),
                    }
                };
                pages.lock().unwrap_or_else(|e| e.into_inner()).merge(page_lats);
                let result = result.and_then(|()| {
                    if listed as i64 == first_count {
                        *keys_seen.lock().unwrap_or_else(|e| e.into_inner()) = Some((listed, page_count));
                        Ok(())
                    } else {
                        Err(format!(
                            "list returned {listed} keys, its first page counted {first_count}"
                        ))
                    }
                });
                (0, result)
            }
        },
    )
    .await;
    bar.finish();

    let lists = super::kv::one(run.slots).stats(run.elapsed);
    let pages = std::mem::take(&mut *pages.lock().unwrap_or_else(|e| e.into_inner())).stats(run.elapsed);
    let (keys, pages_per_list) = keys_seen.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or((0, 0));
    let p = ctx.precision();
    let text = format!(
        "Keys a list: {keys} in {pages_per_list} pages\n\nWhole-list summary:\n{}\nPer-page summary:\n{}",
        lists.text(p),
        pages.text(p)
    );
    Ok(Summary {
        text,
        headline: lists.clone(),
        parts: vec![("list", lists), ("page", pages)],
        extra: [
            ("keys_per_list", keys.to_string()),
            ("pages_per_list", pages_per_list.to_string()),
        ]
        .into_iter()
        .chain(preloaded.map(|secs| ("preload_seconds", report::json_number(secs))))
        .collect(),
    })
}

/// Puts `--key-count` keys under the prefix with every client, `--preload-txn-ops` a
/// request; returns the seconds it took. A failure stops the benchmark (a list of a
/// half-loaded prefix measures nothing).
async fn preload(ctx: &Ctx, a: &ListArgs) -> Result<f64, BenchError> {
    let (mut rng, val_size) = (Rng::new(), a.val_size as usize);
    let width = a.key_count.saturating_sub(1).to_string().len().max(8);
    let prefix = a.prefix.clone();
    let (key_count, ops) = (a.key_count, a.preload_txn_ops);
    let requests = batches(key_count, ops);
    let kvs = ctx.kv_clients();
    let bar = ctx.progress(requests);
    let run = if ops == 1 {
        closed_loop(
            ctx,
            requests,
            None,
            1,
            &bar,
            move |i| PutRequest {
                key: object_key(&prefix, width, i),
                value: rng.bytes(val_size),
                ..Default::default()
            },
            move |c, put| {
                let mut kv = kvs[c].clone();
                async move { (0, kv.put(put).await.map(drop).map_err(|s| status_text(&s))) }
            },
        )
        .await
    } else {
        closed_loop(
            ctx,
            requests,
            None,
            1,
            &bar,
            // Puts only, no compares: the Txn applies unconditionally, as a batch of puts.
            move |i| TxnRequest {
                success: batch(i, ops, key_count)
                    .map(|k| super::kv::put_op(object_key(&prefix, width, k), rng.bytes(val_size)))
                    .collect(),
                ..Default::default()
            },
            move |c, txn| {
                let mut kv = kvs[c].clone();
                async move { (0, kv.txn(txn).await.map(drop).map_err(|s| status_text(&s))) }
            },
        )
        .await
    };
    bar.finish();
    let stats = super::kv::one(run.slots).stats(run.elapsed);
    check_preload(&stats, a)?;
    ctx.note(&format!(
        "Preloaded {} keys of {} bytes under {:?} in {:.4} secs ({} a request).",
        a.key_count, a.val_size, a.prefix, stats.total, ops
    ));
    Ok(stats.total)
}

fn check_preload(stats: &Stats, a: &ListArgs) -> Result<(), BenchError> {
    if stats.error_count() == 0 {
        return Ok(());
    }
    let (error, n) = stats.errors.first().cloned().unwrap_or_default();
    Err(BenchError::Fatal(format!(
        "preload failed: {} of {} requests failed (most often, {n} times: {error})",
        stats.error_count(),
        batches(a.key_count, a.preload_txn_ops)
    )))
}

/// Requests that preload `keys` keys at `ops` a request (the last one may carry fewer).
fn batches(keys: u64, ops: u64) -> u64 {
    keys.div_ceil(ops)
}

/// The key numbers request `i` of a preload at `ops` a request puts.
fn batch(i: u64, ops: u64, keys: u64) -> Range<u64> {
    let start = i.saturating_mul(ops).min(keys);
    start..start.saturating_add(ops).min(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_keys_sort_as_numbers() {
        let keys: Vec<Vec<u8>> = [0, 9, 10, 99_999_999]
            .iter()
            .map(|&i| object_key("/p/", 8, i))
            .collect();
        assert_eq!(keys[0], b"/p/00000000");
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn preload_batches_cover_every_key_once() {
        assert_eq!(batches(0, 128), 0);
        assert_eq!(batches(1, 128), 1);
        assert_eq!(batches(128, 128), 1);
        assert_eq!(batches(129, 128), 2);
        assert_eq!(batches(1_000_000, 128), 7813);
        assert_eq!(batches(7, 1), 7);
        for (keys, ops) in [(1_000u64, 128u64), (129, 128), (128, 128), (5, 1), (10, 3), (2, 5)] {
            let mut next = 0;
            for i in 0..batches(keys, ops) {
                let b = batch(i, ops, keys);
                assert_eq!(b.start, next, "{keys} keys, {ops} ops, request {i}");
                assert!(!b.is_empty() && b.end - b.start <= ops, "{b:?}");
                next = b.end;
            }
            assert_eq!(next, keys, "{keys} keys at {ops} a request");
        }
        // The last request carries the rest.
        assert_eq!(batch(7812, 128, 1_000_000), 999_936..1_000_000);
        assert_eq!(batch(u64::MAX, u64::MAX, 10), 10..10);
    }
}
