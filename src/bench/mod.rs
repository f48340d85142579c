//! `cairn bench`: a load generator for etcd's gRPC API, modelled on etcd's
//! `tools/benchmark` (v3.5/v3.6) so that its numbers compare with etcd's own: the same
//! workloads and flag names and defaults, the same request shapes (down to the benchmark's
//! varint keys), clients spread over connections round-robin, and etcd's report layout.
//!
//! Layout: this file has the global flags, the dispatch and the machinery every workload
//! shares (connections, the closed request loop, the rate limiter, keys, the progress bar);
//! `kv` has put, range, txn-put and txn-mixed; `watch` has watch and watch-latency; `fanout`
//! has watch-fanout; `lease` has lease-keepalive; `list` has kube-apiserver's paginated
//! list; `ready` times a server's start; `report` has the statistics and their text and JSON
//! renderings; `plot` draws the side-by-side runner's charts from its JSON (read with `serde_json`).
//!
//! It talks to the server through the crate's own generated tonic clients, never through an
//! in-process shortcut, so it measures any etcd v3 endpoint (`cairn` or `etcd`) alike.

mod fanout;
mod kv;
mod lease;
mod list;
mod plot;
mod ready;
mod report;
mod watch;

use std::ffi::OsString;
use std::future::Future;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tonic::transport::{Channel, Endpoint};

use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::lease_client::LeaseClient;
use crate::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::proto::etcdserverpb::watch_client::WatchClient;
use report::{Precision, Recorder, Stats};

/// The largest message a client takes, as etcd's clientv3 (`MaxCallRecvMsgSize`).
const MAX_RECV_MESSAGE: usize = i32::MAX as usize;

/// True when the process was started as `cairn bench ...`: the first argument is `bench`.
/// etcd's server takes no positional argument, so this never shadows a server command line.
pub fn is_invocation(mut args: impl Iterator<Item = OsString>) -> bool {
    args.nth(1).is_some_and(|a| a == "bench")
}

/// Runs `cairn bench`; `args` start at `bench` (the stand-in for a program name). Exits 2 on
/// a usage error, 1 when the benchmark cannot run (no connection), 0 otherwise: failed
/// requests are counted and reported, as etcd's benchmark does, not turned into an exit code.
pub fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = match BenchArgs::try_parse_from(args) {
        Ok(args) => args,
        Err(e) => return clap_exit(&e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(BenchError::Usage(e)) => clap_exit(&e),
        Err(BenchError::Fatal(msg)) => {
            eprintln!("cairn bench: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn clap_exit(e: &clap::Error) -> ExitCode {
    let _ = e.print();
    if e.use_stderr() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

/// `cairn bench`'s command line: global flags, then a workload.
#[derive(Parser, Debug)]
#[command(
    name = "cairn bench",
    bin_name = "cairn bench",
    about = "A low-level benchmark for etcd v3 servers (cairn or etcd), after etcd's tools/benchmark",
    subcommand_required = true,
    arg_required_else_help = true,
    disable_version_flag = true
)]
pub struct BenchArgs {
    #[command(flatten)]
    pub global: GlobalFlags,
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// etcd benchmark's persistent flags (accepted before or after the subcommand, as cobra's).
#[derive(Args, Debug, Clone)]
pub struct GlobalFlags {
    /// gRPC endpoints (comma-separated, `host:port` or `http://host:port`).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379", global = true)]
    pub endpoints: Vec<String>,
    /// Total number of gRPC connections.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub conns: u32,
    /// Total number of gRPC clients (concurrent requests), spread over the connections.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub clients: u32,
    /// Print one JSON object on stdout instead of the text report.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bar (there is none either when stderr is not a terminal).
    #[arg(long, global = true)]
    pub no_progress: bool,
    /// Use full floating point precision (Go's %g) in the text report.
    #[arg(long, global = true)]
    pub precise: bool,
    /// Dial timeout for client connections (Go duration, e.g. 5s; 0 waits for the OS).
    #[arg(long, default_value = "0s", value_parser = parse_go_duration, global = true)]
    pub dial_timeout: Duration,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Benchmark put.
    Put(kv::PutArgs),
    /// Benchmark range.
    Range(kv::RangeArgs),
    /// Benchmark txn-put.
    TxnPut(kv::TxnPutArgs),
    /// Benchmark a mixed load of txn-put & txn-range.
    TxnMixed(kv::TxnMixedArgs),
    /// Benchmark watch: create watchers, then measure the delivery of put events to them.
    Watch(watch::WatchArgs),
    /// Benchmark the latency from a put to its watch event.
    WatchLatency(watch::WatchLatencyArgs),
    /// Benchmark lease keepalive.
    LeaseKeepalive(lease::LeaseKeepaliveArgs),
    /// Benchmark kube-apiserver's paginated list of a prefix (not in etcd's benchmark).
    List(list::ListArgs),
    /// Benchmark the delivery of puts to many prefix and single-key watchers (not in etcd's
    /// benchmark).
    WatchFanout(fanout::WatchFanoutArgs),
    /// Time until the first endpoint serves a serializable range (not in etcd's benchmark).
    Ready(ready::ReadyArgs),
    /// Draw bench-vs-etcd's SVG charts from its JSON results (no server involved).
    Plot(plot::PlotArgs),
}

impl BenchCommand {
    /// The checks clap cannot make (flags against each other), before any connection.
    pub fn validate(&self) -> Result<(), BenchError> {
        match self {
            BenchCommand::Put(a) => a.validate(),
            BenchCommand::TxnPut(a) => a.validate(),
            BenchCommand::TxnMixed(a) => a.validate(),
            BenchCommand::Watch(a) => a.validate(),
            BenchCommand::List(a) => a.validate(),
            BenchCommand::WatchFanout(a) => a.validate(),
            BenchCommand::Range(_)
            | BenchCommand::WatchLatency(_)
            | BenchCommand::LeaseKeepalive(_)
            | BenchCommand::Ready(_)
            | BenchCommand::Plot(_) => Ok(()),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            BenchCommand::Put(_) => "put",
            BenchCommand::Range(_) => "range",
            BenchCommand::TxnPut(_) => "txn-put",
            BenchCommand::TxnMixed(_) => "txn-mixed",
            BenchCommand::Watch(_) => "watch",
            BenchCommand::WatchLatency(_) => "watch-latency",
            BenchCommand::LeaseKeepalive(_) => "lease-keepalive",
            BenchCommand::List(_) => "list",
            BenchCommand::WatchFanout(_) => "watch-fanout",
            BenchCommand::Ready(_) => "ready",
            BenchCommand::Plot(_) => "plot",
        }
    }
}

/// Why `cairn bench` stopped short.
#[derive(Debug)]
pub enum BenchError {
    /// A bad combination of flags: printed as clap prints its own errors, exit status 2.
    Usage(clap::Error),
    /// The benchmark could not run (no connection, a setup request failed): exit status 1.
    Fatal(String),
}

/// A usage error in the context of subcommand `sub` (its usage line follows the message).
pub(crate) fn usage_error(sub: &str, msg: impl std::fmt::Display) -> BenchError {
    let mut cmd = BenchArgs::command();
    cmd.build();
    let err = match cmd.find_subcommand_mut(sub) {
        Some(sub) => sub.error(ErrorKind::ValueValidation, msg),
        None => cmd.error(ErrorKind::ValueValidation, msg),
    };
    BenchError::Usage(err)
}

async fn run(args: BenchArgs) -> Result<(), BenchError> {
    let name = args.command.name();
    let json = args.global.json;
    args.command.validate()?;
    let summary = match args.command {
        BenchCommand::Plot(a) => {
            print!("{}", plot::plot(&a)?);
            return Ok(());
        }
        // Before the server serves, so without the workloads' connections.
        BenchCommand::Ready(a) => ready::ready(&args.global, a).await?,
        workload => workload.run(&Ctx::connect(args.global).await?).await?,
    };
    if json {
        println!("{}", summary.json(name));
    } else {
        print!("{}", summary.text);
    }
    Ok(())
}

impl BenchCommand {
    /// Runs a workload over the connections of `ctx`.
    async fn run(self, ctx: &Ctx) -> Result<Summary, BenchError> {
        match self {
            BenchCommand::Put(a) => kv::put(ctx, a).await,
            BenchCommand::Range(a) => kv::range(ctx, a).await,
            BenchCommand::TxnPut(a) => kv::txn_put(ctx, a).await,
            BenchCommand::TxnMixed(a) => kv::txn_mixed(ctx, a).await,
            BenchCommand::Watch(a) => watch::watch(ctx, a).await,
            BenchCommand::WatchLatency(a) => watch::watch_latency(ctx, a).await,
            BenchCommand::LeaseKeepalive(a) => lease::lease_keepalive(ctx, a).await,
            BenchCommand::List(a) => list::list(ctx, a).await,
            BenchCommand::WatchFanout(a) => fanout::watch_fanout(ctx, a).await,
            // `run` starts these without connections.
            other @ (BenchCommand::Ready(_) | BenchCommand::Plot(_)) => Err(BenchError::Fatal(format!(
                "{} runs without the workloads' connections",
                other.name()
            ))),
        }
    }
}

/// What a workload hands back: its text report (etcd's, printed as is) and the statistics
/// behind it for `--json`.
pub(crate) struct Summary {
    pub text: String,
    /// The report the JSON object's top-level fields describe.
    pub headline: Stats,
    /// Named reports for workloads with more than one (each also under `"reports"`).
    pub parts: Vec<(&'static str, Stats)>,
    /// Further top-level JSON members: (name, JSON value).
    pub extra: Vec<(&'static str, String)>,
}

impl Summary {
    pub fn single(text: String, stats: Stats) -> Summary {
        Summary {
            text,
            headline: stats,
            parts: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// One JSON object: the benchmark's name, the headline report's fields (`count`,
    /// `errors`, `requests_per_sec`, `total`, `average`, `p50`, `p90`, `p99`, `p99_9`, ...;
    /// times in seconds), any extra members, then `reports` when there are several.
    pub fn json(&self, name: &str) -> String {
        let mut s = format!(
            "{{\"benchmark\":{},{}",
            report::json_string(name),
            self.headline.json_fields()
        );
        for (key, value) in &self.extra {
            s.push_str(&format!(",{}:{value}", report::json_string(key)));
        }
        if !self.parts.is_empty() {
            s.push_str(",\"reports\":{");
            for (i, (key, stats)) in self.parts.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&format!("{}:{{{}}}", report::json_string(key), stats.json_fields()));
            }
            s.push('}');
        }
        s.push('}');
        s
    }
}

/// The connections and global settings every workload runs with.
pub(crate) struct Ctx {
    pub global: GlobalFlags,
    conns: Vec<Channel>,
}

impl Ctx {
    /// Dials `--conns` connections, connection `i` to endpoint `i mod endpoints`, as etcd's
    /// benchmark hands endpoints out.
    async fn connect(global: GlobalFlags) -> Result<Ctx, BenchError> {
        if global.endpoints.iter().all(|e| e.trim().is_empty()) {
            return Err(BenchError::Usage(
                BenchArgs::command().error(ErrorKind::ValueValidation, "--endpoints names no endpoint"),
            ));
        }
        let mut conns = Vec::with_capacity(global.conns as usize);
        for i in 0..global.conns as usize {
            conns.push(dial(&endpoint_of(&global.endpoints, i), global.dial_timeout).await?);
        }
        Ok(Ctx { global, conns })
    }

    /// One more connection, to the next endpoint in turn (etcd's `mustCreateConn`).
    pub async fn dial_extra(&self) -> Result<Channel, BenchError> {
        dial(
            &endpoint_of(&self.global.endpoints, self.conns.len()),
            self.global.dial_timeout,
        )
        .await
    }

    pub fn clients(&self) -> usize {
        self.global.clients as usize
    }

    /// Client `i`'s connection: clients go round-robin over the connections.
    pub fn channel(&self, client: usize) -> Channel {
        self.conns[client % self.conns.len()].clone()
    }

    pub fn kv(&self, client: usize) -> KvClient<Channel> {
        KvClient::new(self.channel(client)).max_decoding_message_size(MAX_RECV_MESSAGE)
    }

    /// One KV client per `--clients`.
    pub fn kv_clients(&self) -> Arc<Vec<KvClient<Channel>>> {
        Arc::new((0..self.clients()).map(|c| self.kv(c)).collect())
    }

    pub fn watch(&self, client: usize) -> WatchClient<Channel> {
        WatchClient::new(self.channel(client)).max_decoding_message_size(MAX_RECV_MESSAGE)
    }

    pub fn lease(&self, client: usize) -> LeaseClient<Channel> {
        LeaseClient::new(self.channel(client)).max_decoding_message_size(MAX_RECV_MESSAGE)
    }

    pub fn maintenance(&self, client: usize) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.channel(client)).max_decoding_message_size(MAX_RECV_MESSAGE)
    }

    pub fn precision(&self) -> Precision {
        if self.global.precise {
            Precision::Full
        } else {
            Precision::Fixed
        }
    }

    /// A progress bar on stderr over `len` steps; hidden under `--no-progress` or when stderr
    /// is not a terminal.
    pub fn progress(&self, len: u64) -> ProgressBar {
        if self.global.no_progress || !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        // etcd's bar format is "Bom !": B, then o's, the head m, blanks, and !.
        if let Ok(style) = ProgressStyle::with_template("{pos}/{len} B{wide_bar}! {percent}% {elapsed_precise}") {
            bar.set_style(style.progress_chars("om "));
        }
        bar
    }

    /// A line etcd's benchmark prints before it starts (text mode only: `--json` keeps stdout
    /// to the one object).
    pub fn note(&self, line: &str) {
        if !self.global.json {
            println!("{line}");
        }
    }
}

fn endpoint_of(endpoints: &[String], i: usize) -> String {
    let eps: Vec<&str> = endpoints.iter().map(|e| e.trim()).filter(|e| !e.is_empty()).collect();
    eps[i % eps.len()].to_string()
}

async fn dial(endpoint: &str, timeout: Duration) -> Result<Channel, BenchError> {
    let url = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    if !url.starts_with("http://") {
        return Err(BenchError::Fatal(format!(
            "endpoint {endpoint}: only plain http endpoints are supported (no TLS)"
        )));
    }
    let mut ep = Endpoint::from_shared(url)
        .map_err(|e| BenchError::Fatal(format!("bad endpoint {endpoint}: {}", error_chain(&e))))?
        .tcp_nodelay(true)
        // grpc-go's client grows its flow-control windows with the bandwidth-delay product;
        // the fixed 64 KiB default would throttle large ranges.
        .http2_adaptive_window(true);
    if !timeout.is_zero() {
        ep = ep.connect_timeout(timeout);
    }
    ep.connect()
        .await
        .map_err(|e| BenchError::Fatal(format!("dial error: {endpoint}: {}", error_chain(&e))))
}

/// An error and its sources, joined: tonic's transport errors say little on their own.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    let mut last = s.clone();
    while let Some(inner) = source {
        // hyper-util repeats a cause's text at two levels: say it once.
        let text = inner.to_string();
        if text != last {
            s.push_str(": ");
            s.push_str(&text);
        }
        last = text;
        source = inner.source();
    }
    s
}

/// A failed call's text as etcd's benchmark reports it: clientv3 turns etcd's own errors into
/// their message (`etcdserver: request timed out`), others read as grpc-go prints a status.
pub(crate) fn status_text(s: &tonic::Status) -> String {
    let msg = s.message();
    let etcd_error = ["etcdserver: ", "mvcc: ", "auth: "].iter().any(|p| msg.starts_with(p));
    if etcd_error {
        msg.to_string()
    } else {
        format!("rpc error: code = {:?} desc = {msg}", s.code())
    }
}

/// A limit of `rate` operations a second with bursts of `burst`, shared by every client:
/// golang.org/x/time/rate's limiter as etcd's benchmark uses it (`Wait` reserves the next
/// slot, so waiters queue in order). GCRA: each operation moves the theoretical arrival time
/// on by 1/rate; one may start once that time is within the burst's tolerance of now.
pub(crate) struct Limiter {
    interval: Duration,
    tolerance: Duration,
    tat: Mutex<Instant>,
}

impl Limiter {
    /// `None` for a rate of 0: no limit.
    pub fn new(rate: u64, burst: u64) -> Option<Arc<Limiter>> {
        if rate == 0 {
            return None;
        }
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        Some(Arc::new(Limiter {
            interval,
            tolerance: interval * (burst.max(1) - 1).min(u32::MAX as u64) as u32,
            tat: Mutex::new(Instant::now()),
        }))
    }

    pub async fn wait(&self) {
        let start = {
            let mut tat = self.tat.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let earliest = tat.checked_sub(self.tolerance).unwrap_or(now);
            *tat = (*tat).max(now) + self.interval;
            earliest.max(now)
        };
        tokio::time::sleep_until(start.into()).await;
    }
}

/// The result of a closed-loop run: one recorder per report slot, and the wall time.
pub(crate) struct Run {
    pub slots: Vec<Recorder>,
    pub elapsed: Duration,
}

/// etcd's benchmark loop: `--clients` workers take requests `0..total` in order from one
/// generator (so keys come out as etcd's single generator goroutine makes them), wait on the
/// rate limiter, and time the call. `op(client, request)` makes the call and says which
/// report slot (of `slots`) it counts in.
pub(crate) async fn closed_loop<T, G, F, Fut>(
    ctx: &Ctx,
    total: u64,
    limiter: Option<Arc<Limiter>>,
    slots: usize,
    bar: &ProgressBar,
    generate: G,
    op: F,
) -> Run
where
    T: Send + 'static,
    G: FnMut(u64) -> T + Send + 'static,
    F: Fn(usize, T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = (usize, Result<(), String>)> + Send,
{
    let source = Arc::new(Mutex::new((0u64, generate)));
    let op = Arc::new(op);
    let started = Instant::now();
    let mut workers = Vec::with_capacity(ctx.clients());
    for client in 0..ctx.clients() {
        let source = source.clone();
        let op = op.clone();
        let limiter = limiter.clone();
        let bar = bar.clone();
        workers.push(tokio::spawn(async move {
            let mut recorders = vec![Recorder::default(); slots];
            loop {
                let request = {
                    let mut source = source.lock().unwrap_or_else(|e| e.into_inner());
                    let (next, generate) = &mut *source;
                    if *next >= total {
                        break;
                    }
                    let i = *next;
                    *next += 1;
                    generate(i)
                };
                if let Some(limiter) = &limiter {
                    limiter.wait().await;
                }
                let start = Instant::now();
                let (slot, result) = op(client, request).await;
                recorders[slot.min(slots - 1)].record(start.elapsed(), result);
                bar.inc(1);
            }
            recorders
        }));
    }
    let mut merged = vec![Recorder::default(); slots];
    for worker in workers {
        match worker.await {
            Ok(recorders) => {
                for (m, r) in merged.iter_mut().zip(recorders) {
                    m.merge(r);
                }
            }
            Err(e) => merged[0].failure(format!("benchmark worker failed: {e}")),
        }
    }
    Run {
        slots: merged,
        elapsed: started.elapsed(),
    }
}

/// Go's `binary.PutVarint` into the head of `buf`, leaving the bytes after it as they were,
/// exactly as etcd's benchmark reuses one key buffer. The caller has checked it fits
/// (`check_key_space`); a value that would not is cut at the buffer's end.
pub(crate) fn put_varint(buf: &mut [u8], x: i64) -> usize {
    let mut ux = ((x << 1) ^ (x >> 63)) as u64;
    let mut i = 0;
    while ux >= 0x80 && i < buf.len() {
        buf[i] = ux as u8 | 0x80;
        ux >>= 7;
        i += 1;
    }
    if i < buf.len() {
        buf[i] = ux as u8;
        i += 1;
    }
    i
}

/// How many bytes Go's `PutVarint` takes for `x`.
pub(crate) fn varint_len(x: i64) -> usize {
    let mut ux = ((x << 1) ^ (x >> 63)) as u64;
    let mut n = 1;
    while ux >= 0x80 {
        ux >>= 7;
        n += 1;
    }
    n
}

/// etcd's benchmark writes key numbers `0..key_space_size` as varints into `key_size` bytes
/// (and panics when one does not fit); here that is a usage error up front.
pub(crate) fn check_key_space(sub: &str, key_size: u64, key_space_size: u64) -> Result<(), BenchError> {
    let need = varint_len(key_space_size.saturating_sub(1).min(i64::MAX as u64) as i64);
    if (key_size as usize) < need {
        return Err(usage_error(
            sub,
            format!(
                "--key-size {key_size} cannot hold keys up to --key-space-size {key_space_size} (needs {need} bytes)"
            ),
        ));
    }
    Ok(())
}

/// etcd's prefix range end (clientv3's `GetPrefixRangeEnd`): the prefix with its last byte
/// below 0xff incremented and the rest dropped; `\0` (to the end of the key space) when every
/// byte is 0xff or the prefix is empty.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A small fast PRNG (SplitMix64): keys and values need no more, and etcd's `math/rand` is
/// not cryptographic either.
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new() -> Rng {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Rng(now ^ (std::process::id() as u64).rotate_left(32))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(n);
        out
    }
}

/// A Go duration (`time.ParseDuration`): `300ms`, `1.5s`, `1m30s`, `0`.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?} (e.g. 500ms, 5s, 1m30s)");
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() || t.starts_with('-') {
        return Err(bad());
    }
    let mut rest = t.strip_prefix('+').unwrap_or(t);
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let (num, tail) = rest.split_at(num_len);
        let value: f64 = num.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{normalize_args, Flags};

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        BenchArgs::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
    }

    #[test]
    fn global_flags_before_the_subcommand() {
        let a = parse(&[
            "--endpoints",
            "127.0.0.1:1,127.0.0.1:2",
            "--conns",
            "2",
            "--clients",
            "8",
            "--json",
            "--no-progress",
            "put",
            "--total",
            "10",
        ])
        .unwrap();
        assert_eq!(a.global.endpoints, ["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!((a.global.conns, a.global.clients), (2, 8));
        assert!(a.global.json && a.global.no_progress && !a.global.precise);
        match a.command {
            BenchCommand::Put(p) => assert_eq!(p.total, 10),
            other => panic!("parsed as {other:?}"),
        }
        // cobra's persistent flags work after the subcommand too.
        let a = parse(&["put", "--clients", "3"]).unwrap();
        assert_eq!(a.global.clients, 3);
    }

    #[test]
    fn etcds_defaults() {
        let a = parse(&["put", "--total", "10"]).unwrap();
        assert_eq!(a.global.endpoints, ["127.0.0.1:2379"]);
        assert_eq!((a.global.conns, a.global.clients), (1, 1));
        assert_eq!(a.global.dial_timeout, Duration::ZERO);
        let BenchCommand::Put(p) = a.command else { panic!() };
        assert_eq!((p.total, p.key_size, p.val_size, p.key_space_size), (10, 8, 8, 1));
        assert!(!p.sequential_keys);
        assert_eq!((p.rate, p.compact_index_delta), (0, 1000));

        let BenchCommand::Range(r) = parse(&["range", "foo"]).unwrap().command else {
            panic!()
        };
        assert_eq!(
            (r.key.as_deref(), r.total, r.consistency.as_str()),
            (Some("foo"), 10000, "l")
        );
        let BenchCommand::TxnPut(t) = parse(&["txn-put"]).unwrap().command else {
            panic!()
        };
        assert_eq!((t.txn_ops, t.total, t.key_space_size), (1, 10000, 1));
        let BenchCommand::TxnMixed(t) = parse(&["txn-mixed"]).unwrap().command else {
            panic!()
        };
        assert_eq!((t.rw_ratio, t.limit, t.consistency.as_str()), (1.0, 1000, "l"));
        let BenchCommand::Watch(w) = parse(&["watch"]).unwrap().command else {
            panic!()
        };
        assert_eq!(
            (w.streams, w.watch_per_stream, w.put_total, w.key_size),
            (10, 100, 1000, 32)
        );
        let BenchCommand::WatchLatency(w) = parse(&["watch-latency"]).unwrap().command else {
            panic!()
        };
        assert_eq!(
            (w.streams, w.watchers_per_stream, w.put_total, w.put_rate),
            (10, 10, 1000, 100)
        );
        let BenchCommand::LeaseKeepalive(l) = parse(&["lease-keepalive"]).unwrap().command else {
            panic!()
        };
        assert_eq!(l.total, 10000);
        let BenchCommand::List(l) = parse(&["list"]).unwrap().command else {
            panic!()
        };
        assert_eq!((l.page_size, l.preload_txn_ops), (500, 128));
        let BenchCommand::Ready(r) = parse(&["ready"]).unwrap().command else {
            panic!()
        };
        assert_eq!(
            (r.interval, r.attempt_timeout),
            (Duration::from_millis(10), Duration::from_millis(100))
        );
        assert_eq!(r.since_unix_nanos, None);
        let BenchCommand::Plot(p) = parse(&["plot"]).unwrap().command else {
            panic!()
        };
        assert_eq!(p.workloads, ["put-1", "put-64", "put-256"]);
        assert_eq!(p.throughput_out, std::path::Path::new("docs/bench-put-throughput.svg"));
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for args in [
            &[][..],
            &["put", "--total", "many"],
            &["put", "--key-space-size", "0"],
            &["--clients", "0", "put"],
            &["range"],
            &["range", "k", "--consistency", "x"],
            &["range", "k", "--count-only", "--keys-only"],
            &["list", "--preload-txn-ops", "0"],
            &["ready", "--interval", "soon"],
            &["no-such-workload"],
            &["--dial-timeout", "soon", "put"],
        ] {
            let e = parse(args).err().unwrap_or_else(|| panic!("{args:?} parsed"));
            assert!(e.use_stderr(), "{args:?}: {e}");
        }
        assert!(!parse(&["--help"]).unwrap_err().use_stderr());
        assert!(!parse(&["put", "--help"]).unwrap_err().use_stderr());
        let BenchError::Usage(e) = check_key_space("put", 1, 100).unwrap_err() else {
            panic!()
        };
        assert!(e.to_string().contains("--key-size 1"), "{e}");
        assert!(check_key_space("put", 1, 64).is_ok());
        // Checks across flags run before any connection.
        for args in [
            &["put", "--key-size", "1", "--key-space-size", "1000"][..],
            &["txn-put", "--txn-ops", "5"],
            &["watch", "--key-size", "1", "--key-space-size", "100"],
            &["list", "--prefix", ""],
            &["watch-fanout", "--prefix", ""],
        ] {
            let cmd = parse(args).unwrap().command;
            assert!(matches!(cmd.validate(), Err(BenchError::Usage(_))), "{args:?}");
        }
        assert!(parse(&["txn-put", "--txn-ops", "5", "--key-space-size", "5"])
            .unwrap()
            .command
            .validate()
            .is_ok());
    }

    #[test]
    fn only_bench_goes_to_bench() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>().into_iter();
        assert!(is_invocation(args(&["cairn", "bench", "put"])));
        assert!(!is_invocation(args(&["cairn"])));
        assert!(!is_invocation(args(&["cairn", "--name", "bench"])));
        assert!(!is_invocation(args(&["cairn", "--version"])));
        // The server's etcd flags still parse as before.
        let argv = [
            "cairn",
            "--name",
            "bench",
            "--data-dir",
            "/tmp/x",
            "-listen-client-urls",
            "http://127.0.0.1:2379",
            "--heartbeat-interval",
            "50",
        ];
        let flags = Flags::try_parse_from(normalize_args(argv.iter().map(|a| a.to_string()))).unwrap();
        assert_eq!(flags.name, "bench");
        assert_eq!(flags.heartbeat_interval, 50);
        assert_eq!(flags.listen_client_urls, "http://127.0.0.1:2379");
        assert!(Flags::try_parse_from(["cairn", "--version"]).unwrap().version);
    }

    #[test]
    fn varints_are_gos() {
        let mut buf = [0u8; 8];
        assert_eq!(put_varint(&mut buf, 0), 1);
        assert_eq!(buf, [0; 8]);
        assert_eq!(put_varint(&mut buf, 1), 1);
        assert_eq!(buf[0], 2);
        assert_eq!(put_varint(&mut buf, -1), 1);
        assert_eq!(buf[0], 1);
        assert_eq!(put_varint(&mut buf, 64), 2);
        assert_eq!(&buf[..2], &[0x80, 0x01]);
        // The buffer is reused: a shorter varint leaves the old tail, as in etcd's benchmark.
        put_varint(&mut buf, 3);
        assert_eq!(&buf[..2], &[6, 0x01]);
        assert_eq!((varint_len(63), varint_len(64), varint_len(i64::MAX)), (1, 2, 10));
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_go_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_go_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_go_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_go_duration("1.5h").unwrap(), Duration::from_secs(5400));
        for bad in ["", "5", "-1s", "5 s", "1d", "s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rng_stays_in_range() {
        let mut r = Rng::new();
        for _ in 0..1000 {
            assert!(r.below(7) < 7);
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
        assert_eq!(r.bytes(13).len(), 13);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn limiter_spaces_requests() {
        let limiter = Limiter::new(100, 1).unwrap();
        let start = Instant::now();
        for _ in 0..6 {
            limiter.wait().await;
        }
        // The first goes at once, then one each 10 ms.
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(49) && waited < Duration::from_secs(1),
            "{waited:?}"
        );
        assert!(Limiter::new(0, 1).is_none());
        // A burst goes at once.
        let limiter = Limiter::new(1, 5).unwrap();
        let start = Instant::now();
        for _ in 0..5 {
            limiter.wait().await;
        }
        assert!(start.elapsed() < Duration::from_millis(500));
    }
}
