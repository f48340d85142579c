//! list: kube-apiserver's paginated LIST of a resource prefix (not in etcd's benchmark).
//!
//! Preloads `--key-count` keys under `--prefix`, then each of `--total` lists reads the
//! prefix as the apiserver's storage layer does: pages of `--page-size` (`limit`) over
//! `[prefix, prefix_end)`, the first at the current revision, the rest at the first page's
//! revision and from the last key returned plus `\0`, until `more` is false; the keys are
//! counted and checked against the first page's `count`. Reports the whole-list time (the
//! headline) and every page's latency.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use clap::Args;

use super::report::Recorder;
use super::{closed_loop, status_text, BenchError, Ctx, Limiter, Rng, Summary};
use crate::proto::etcdserverpb::{PutRequest, RangeRequest};

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
    /// Value size of the preloaded keys.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(0..=1 << 30))]
    pub val_size: u64,
    /// The prefix to preload and list.
    #[arg(long, default_value = "/registry/cairn-bench/")]
    pub prefix: String,
    /// List what is under the prefix already: no preload.
    #[arg(long)]
    pub no_preload: bool,
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
    if !a.no_preload {
        preload(ctx, &a).await?;
    }
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
        extra: vec![
            ("keys_per_list", keys.to_string()),
            ("pages_per_list", pages_per_list.to_string()),
        ],
    })
}

/// Puts `--key-count` keys under the prefix with every client; a failure stops the
/// benchmark (a list of a half-loaded prefix measures nothing).
async fn preload(ctx: &Ctx, a: &ListArgs) -> Result<(), BenchError> {
    let value = Rng::new().bytes(a.val_size as usize);
    let width = a.key_count.saturating_sub(1).to_string().len().max(8);
    let prefix = a.prefix.clone();
    let kvs = ctx.kv_clients();
    let bar = ctx.progress(a.key_count);
    let run = closed_loop(
        ctx,
        a.key_count,
        None,
        1,
        &bar,
        move |i| PutRequest {
            key: object_key(&prefix, width, i),
            value: value.clone(),
            ..Default::default()
        },
        move |c, put| {
            let mut kv = kvs[c].clone();
            async move { (0, kv.put(put).await.map(drop).map_err(|s| status_text(&s))) }
        },
    )
    .await;
    bar.finish();
    let stats = super::kv::one(run.slots).stats(run.elapsed);
    if stats.error_count() > 0 {
        let (error, n) = stats.errors.first().cloned().unwrap_or_default();
        return Err(BenchError::Fatal(format!(
            "preload failed: {} of {} puts failed (most often, {n} times: {error})",
            stats.error_count(),
            a.key_count
        )));
    }
    ctx.note(&format!(
        "Preloaded {} keys of {} bytes under {:?} in {:.4} secs.",
        a.key_count, a.val_size, a.prefix, stats.total
    ));
    Ok(())
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
}
