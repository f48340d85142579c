//! ready: how long a server takes until it serves (not in etcd's benchmark; issue 18's
//! restart goal). Polls the first endpoint every `--interval` with a fresh connection and a
//! serializable Range of `--key`, each attempt cut at `--attempt-timeout`, until one answers;
//! the time counts from `--since-unix-nanos` (when the caller started the server) or from
//! this command's start. A serializable Range is what a client can do once the server
//! serves, without waiting for a leader's read index.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use tokio::time::MissedTickBehavior;

use super::report::{json_number, Stats};
use super::{dial, endpoint_of, parse_go_duration, status_text, BenchError, GlobalFlags, Summary};
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::RangeRequest;

#[derive(Args, Debug, Clone)]
pub struct ReadyArgs {
    /// The key each attempt reads (it need not exist).
    #[arg(long, default_value = "cairn-bench-ready")]
    pub key: String,
    /// Time between attempts (Go duration).
    #[arg(long, default_value = "10ms", value_parser = parse_go_duration)]
    pub interval: Duration,
    /// Limit of one attempt, dial and Range (Go duration).
    #[arg(long, default_value = "100ms", value_parser = parse_go_duration)]
    pub attempt_timeout: Duration,
    /// Give up when not serving after this long (Go duration).
    #[arg(long, default_value = "120s", value_parser = parse_go_duration)]
    pub timeout: Duration,
    /// Count from this instant, in nanoseconds since the Unix epoch (`date +%s%N` taken just
    /// before the server started), rather than from this command's start.
    #[arg(long)]
    pub since_unix_nanos: Option<u64>,
}

pub async fn ready(global: &GlobalFlags, a: ReadyArgs) -> Result<Summary, BenchError> {
    let endpoint = endpoint_of(&global.endpoints, 0);
    let origin = a
        .since_unix_nanos
        .map_or_else(SystemTime::now, |n| UNIX_EPOCH + Duration::from_nanos(n));
    let mut ticks = tokio::time::interval(a.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut attempts = 0u64;
    let waited = loop {
        ticks.tick().await;
        attempts += 1;
        let result = match tokio::time::timeout(a.attempt_timeout, attempt(&endpoint, &a.key, a.attempt_timeout)).await
        {
            Ok(r) => r,
            Err(_) => Err(format!("no answer in {:?}", a.attempt_timeout)),
        };
        // A clock stepped back reads as no time at all rather than as an error.
        let waited = SystemTime::now().duration_since(origin).unwrap_or_default();
        match result {
            Ok(()) => break waited,
            Err(e) if waited >= a.timeout => {
                return Err(BenchError::Fatal(format!(
                    "{endpoint} not serving after {waited:?} ({attempts} attempts; the last: {e})"
                )))
            }
            Err(_) => {}
        }
    };
    let secs = waited.as_secs_f64();
    let stats = Stats::new(vec![secs], HashMap::new(), waited);
    Ok(Summary {
        text: format!("Serving after {secs:.4} secs ({attempts} attempts).\n"),
        headline: stats,
        parts: Vec::new(),
        extra: vec![("ready_seconds", json_number(secs)), ("attempts", attempts.to_string())],
    })
}

/// One try: a fresh connection and a serializable Range.
async fn attempt(endpoint: &str, key: &str, timeout: Duration) -> Result<(), String> {
    let channel = dial(endpoint, timeout).await.map_err(|e| match e {
        BenchError::Fatal(msg) => msg,
        BenchError::Usage(e) => e.to_string(),
    })?;
    let request = RangeRequest {
        key: key.as_bytes().to_vec(),
        serializable: true,
        ..Default::default()
    };
    KvClient::new(channel)
        .range(request)
        .await
        .map(drop)
        .map_err(|s| status_text(&s))
}
