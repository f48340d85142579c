//! etcd's server flags and `ETCD_*` variables, parsed and validated into a typed `Config`.
//! No I/O here.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser};
use url::Url;

/// The etcd version whose API and behaviour Cairn implements (reported by Status).
pub const ETCD_VERSION: &str = "3.6.0";
/// The cluster version Cairn announces (etcd's `enabled capabilities for version`).
pub const CLUSTER_VERSION: &str = "3.6";

const DEFAULT_CLIENT_URL: &str = "http://localhost:2379";
const DEFAULT_PEER_URL: &str = "http://localhost:2380";

/// Flags by their etcd names. Values default as etcd's do.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "cairn",
    about = "Cairn: an etcd v3 compatible key-value server",
    disable_version_flag = true,
    override_usage = "cairn [flags]"
)]
pub struct Flags {
    /// Print the version and exit.
    #[arg(long, action = ArgAction::SetTrue)]
    pub version: bool,

    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,
    /// Path to the data directory (default: `<name>.etcd`).
    #[arg(long = "data-dir", env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Path to a dedicated write-ahead-log directory (RocksDB's WAL goes there).
    #[arg(long = "wal-dir", env = "ETCD_WAL_DIR", default_value = "")]
    pub wal_dir: String,
    /// URLs to listen on for client traffic (comma-separated).
    #[arg(long = "listen-client-urls", env = "ETCD_LISTEN_CLIENT_URLS", default_value = DEFAULT_CLIENT_URL)]
    pub listen_client_urls: String,
    /// Client URLs advertised to the rest of the cluster.
    #[arg(long = "advertise-client-urls", env = "ETCD_ADVERTISE_CLIENT_URLS", default_value = DEFAULT_CLIENT_URL)]
    pub advertise_client_urls: String,
    /// URLs to listen on for peer traffic.
    #[arg(long = "listen-peer-urls", env = "ETCD_LISTEN_PEER_URLS", default_value = DEFAULT_PEER_URL)]
    pub listen_peer_urls: String,
    /// Peer URLs advertised to the rest of the cluster.
    #[arg(long = "initial-advertise-peer-urls", env = "ETCD_INITIAL_ADVERTISE_PEER_URLS", default_value = DEFAULT_PEER_URL)]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster configuration for bootstrapping (`name=peerURL,...`).
    #[arg(long = "initial-cluster", env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Initial cluster state (`new` or `existing`).
    #[arg(
        long = "initial-cluster-state",
        env = "ETCD_INITIAL_CLUSTER_STATE",
        default_value = "new"
    )]
    pub initial_cluster_state: String,
    /// Initial cluster token for the etcd cluster during bootstrap.
    #[arg(
        long = "initial-cluster-token",
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long = "heartbeat-interval", env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long = "election-timeout", env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,
    /// Number of committed transactions to trigger a snapshot.
    #[arg(long = "snapshot-count", env = "ETCD_SNAPSHOT_COUNT", default_value_t = 100_000)]
    pub snapshot_count: u64,
    /// Accepted for etcd compatibility; no space quota is enforced yet (the value is ignored).
    #[arg(long = "quota-backend-bytes", env = "ETCD_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    pub quota_backend_bytes: i64,
    /// Maximum client request size in bytes the server will accept.
    #[arg(
        long = "max-request-bytes",
        env = "ETCD_MAX_REQUEST_BYTES",
        default_value_t = 1_572_864
    )]
    pub max_request_bytes: u32,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long = "max-txn-ops", env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: u32,
    /// Maximum concurrent streams that each client can open at a time.
    #[arg(
        long = "max-concurrent-streams",
        env = "ETCD_MAX_CONCURRENT_STREAMS",
        default_value_t = u32::MAX
    )]
    pub max_concurrent_streams: u32,
    /// Interpret 'auto-compaction-retention' one of: periodic|revision.
    #[arg(
        long = "auto-compaction-mode",
        env = "ETCD_AUTO_COMPACTION_MODE",
        default_value = "periodic"
    )]
    pub auto_compaction_mode: String,
    /// Auto compaction retention for mvcc key value store. 0 means disable auto compaction.
    #[arg(
        long = "auto-compaction-retention",
        env = "ETCD_AUTO_COMPACTION_RETENTION",
        default_value = "0"
    )]
    pub auto_compaction_retention: String,
    /// Logger: `zap` (structured JSON, etcd's default).
    #[arg(long, env = "ETCD_LOGGER", default_value = "zap")]
    pub logger: String,
    /// Log level: debug, info, warn, error, panic, or fatal.
    #[arg(long = "log-level", env = "ETCD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Where to write logs: `default` or `stderr`, or `stdout`.
    #[arg(long = "log-outputs", env = "ETCD_LOG_OUTPUTS", default_value = "default")]
    pub log_outputs: String,
    /// Additional URLs to listen on that will respond to both /metrics and /health.
    #[arg(long = "listen-metrics-urls", env = "ETCD_LISTEN_METRICS_URLS", default_value = "")]
    pub listen_metrics_urls: String,
    /// Peer TLS using automatically generated certificates.
    #[arg(long = "peer-auto-tls", env = "ETCD_PEER_AUTO_TLS", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = parse_go_bool)]
    pub peer_auto_tls: bool,
    /// Path to the peer server TLS cert file.
    #[arg(long = "peer-cert-file", env = "ETCD_PEER_CERT_FILE", default_value = "")]
    pub peer_cert_file: String,
    /// Path to the peer server TLS key file.
    #[arg(long = "peer-key-file", env = "ETCD_PEER_KEY_FILE", default_value = "")]
    pub peer_key_file: String,
    /// Path to the peer server TLS trusted CA file.
    #[arg(long = "peer-trusted-ca-file", env = "ETCD_PEER_TRUSTED_CA_FILE", default_value = "")]
    pub peer_trusted_ca_file: String,
    /// Enable peer client cert authentication.
    #[arg(long = "peer-client-cert-auth", env = "ETCD_PEER_CLIENT_CERT_AUTH", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = parse_go_bool)]
    pub peer_client_cert_auth: bool,
    /// Path to the client server TLS cert file.
    #[arg(long = "cert-file", env = "ETCD_CERT_FILE", default_value = "")]
    pub cert_file: String,
    /// Path to the client server TLS key file.
    #[arg(long = "key-file", env = "ETCD_KEY_FILE", default_value = "")]
    pub key_file: String,
    /// Path to the client server TLS trusted CA file.
    #[arg(long = "trusted-ca-file", env = "ETCD_TRUSTED_CA_FILE", default_value = "")]
    pub trusted_ca_file: String,
    /// Enable client cert authentication.
    #[arg(long = "client-cert-auth", env = "ETCD_CLIENT_CERT_AUTH", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = parse_go_bool)]
    pub client_cert_auth: bool,
    /// Client TLS using generated certificates.
    #[arg(long = "auto-tls", env = "ETCD_AUTO_TLS", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = parse_go_bool)]
    pub auto_tls: bool,
    /// Accept etcd v2 API requests (removed in etcd 3.6; only `false` is accepted).
    #[arg(long = "enable-v2", env = "ETCD_ENABLE_V2", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = parse_go_bool)]
    pub enable_v2: bool,
    /// Duration of periodic watch progress notifications (etcd 3.6 name).
    #[arg(long = "watch-progress-notify-interval", env = "ETCD_WATCH_PROGRESS_NOTIFY_INTERVAL", value_parser = parse_go_duration)]
    pub watch_progress_notify_interval: Option<Duration>,
    /// Duration of periodic watch progress notifications (etcd 3.5 name).
    #[arg(long = "experimental-watch-progress-notify-interval", env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL", value_parser = parse_go_duration)]
    pub experimental_watch_progress_notify_interval: Option<Duration>,
    /// Check the database against peers' hashes before serving (etcd 3.5 name). A single
    /// member has no peer to compare with, so the check always passes.
    #[arg(long = "experimental-initial-corrupt-check", env = "ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = parse_go_bool)]
    pub experimental_initial_corrupt_check: bool,
    /// Checkpoint leases' remaining TTLs through raft. etcd's default is off; Cairn's is on,
    /// so a restart neither forgets nor resets how long a lease has left.
    #[arg(long = "experimental-enable-lease-checkpoint", env = "ETCD_EXPERIMENTAL_ENABLE_LEASE_CHECKPOINT", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", value_parser = parse_go_bool)]
    pub experimental_enable_lease_checkpoint: bool,
    /// Keep checkpointed TTLs across restarts. Cairn always does; accepted for etcd's scripts.
    #[arg(long = "experimental-enable-lease-checkpoint-persist", env = "ETCD_EXPERIMENTAL_ENABLE_LEASE_CHECKPOINT_PERSIST", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", value_parser = parse_go_bool)]
    pub experimental_enable_lease_checkpoint_persist: bool,
    /// How often leases' remaining TTLs are checkpointed (Cairn's default 5s; etcd's 5m).
    #[arg(long = "experimental-lease-checkpoint-interval", env = "ETCD_EXPERIMENTAL_LEASE_CHECKPOINT_INTERVAL", value_parser = parse_go_duration)]
    pub experimental_lease_checkpoint_interval: Option<Duration>,
    /// Reject reconfiguration requests that would cause quorum loss.
    #[arg(long = "strict-reconfig-check", env = "ETCD_STRICT_RECONFIG_CHECK", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", value_parser = parse_go_bool)]
    pub strict_reconfig_check: bool,
}

/// Go's `strconv.ParseBool`, which etcd's boolean flags use.
fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        other => Err(format!("invalid boolean value {other:?}")),
    }
}

/// Go's `time.ParseDuration`: a sequence of decimal numbers with units (`ns`, `us`, `µs`,
/// `ms`, `s`, `m`, `h`), such as `10m`, `1.5s` or `1h2m`.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || format!("invalid duration {s:?}");
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * seconds;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// Go's flag package accepts `-flag` as well as `--flag`; etcd scripts use both.
pub fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            let single_dash_long = a.starts_with('-') && !a.starts_with("--") && a.len() > 2;
            if i > 0 && single_dash_long && a.as_bytes()[1].is_ascii_alphabetic() {
                format!("-{a}")
            } else {
                a
            }
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub wal_dir: Option<PathBuf>,
    pub listen_client_urls: Vec<Url>,
    pub advertise_client_urls: Vec<String>,
    pub listen_peer_urls: Vec<Url>,
    pub initial_advertise_peer_urls: Vec<String>,
    /// Member name → peer URLs, in the order given.
    pub initial_cluster: Vec<(String, Vec<String>)>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    pub snapshot_count: u64,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// HTTP/2 streams one client connection may have open at once.
    pub max_concurrent_streams: u32,
    pub log_level: LogLevel,
    pub log_to_stdout: bool,
    pub peer_auto_tls: bool,
    /// Period of watch progress notifications (etcd's default 10 minutes, at least 100 ms).
    pub watch_progress_notify_interval: Duration,
    /// Period of lease remaining-TTL checkpoints; `None` when disabled.
    pub lease_checkpoint_interval: Option<Duration>,
}

/// etcd's default progress-notification period.
const DEFAULT_PROGRESS_NOTIFY: Duration = Duration::from_secs(600);
/// A shorter period would turn notifications into a busy loop.
const MIN_PROGRESS_NOTIFY: Duration = Duration::from_millis(100);
/// Cairn's lease checkpoint period: the most a restart can add to a lease past half its TTL.
const DEFAULT_LEASE_CHECKPOINT: Duration = Duration::from_secs(5);
/// Checkpoints record whole seconds.
const MIN_LEASE_CHECKPOINT: Duration = Duration::from_secs(1);

fn parse_urls(flag: &str, value: &str) -> Result<Vec<Url>, ConfigError> {
    let mut out = Vec::new();
    for raw in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let url = Url::parse(raw).or_else(|e| err(format!("--{flag}: invalid URL {raw:?}: {e}")))?;
        match url.scheme() {
            "http" | "https" | "unix" | "unixs" => {}
            other => {
                return err(format!(
                    "--{flag}: URL scheme must be http, https, unix, or unixs: {other}"
                ))
            }
        }
        if url.host_str().is_none() {
            return err(format!("--{flag}: URL {raw:?} has no host"));
        }
        out.push(url);
    }
    if out.is_empty() {
        return err(format!("--{flag} must not be empty"));
    }
    Ok(out)
}

fn url_strings(urls: &[Url]) -> Vec<String> {
    // etcd prints URLs as given, without the trailing slash `Url` adds to an empty path.
    urls.iter()
        .map(|u| u.as_str().strip_suffix('/').unwrap_or(u.as_str()).to_string())
        .collect()
}

fn parse_initial_cluster(value: &str) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    for part in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((name, url)) = part.split_once('=') else {
            return err(format!("--initial-cluster: {part:?} is not of the form name=URL"));
        };
        let url = url_strings(&parse_urls("initial-cluster", url)?).remove(0);
        match members.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url),
            None => members.push((name.to_string(), vec![url])),
        }
    }
    Ok(members)
}

impl Config {
    pub fn from_flags(f: Flags) -> Result<Config, ConfigError> {
        let listen_client_urls = parse_urls("listen-client-urls", &f.listen_client_urls)?;
        let advertise_client_urls = url_strings(&parse_urls("advertise-client-urls", &f.advertise_client_urls)?);
        let listen_peer_urls = parse_urls("listen-peer-urls", &f.listen_peer_urls)?;
        let initial_advertise_peer_urls = url_strings(&parse_urls(
            "initial-advertise-peer-urls",
            &f.initial_advertise_peer_urls,
        )?);
        let initial_cluster = match &f.initial_cluster {
            Some(v) => parse_initial_cluster(v)?,
            None => vec![(f.name.clone(), initial_advertise_peer_urls.clone())],
        };
        let Some((_, own_peer_urls)) = initial_cluster.iter().find(|(n, _)| *n == f.name) else {
            return err(format!(
                "couldn't find local name {:?} in the initial cluster configuration",
                f.name
            ));
        };
        let mut own = own_peer_urls.clone();
        let mut advertised = initial_advertise_peer_urls.clone();
        own.sort();
        advertised.sort();
        if own != advertised {
            return err(format!(
                "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={}",
                f.name,
                own_peer_urls.join(","),
                initial_advertise_peer_urls.join(",")
            ));
        }
        if initial_cluster.len() > 1 {
            return err("multi-member clusters are not supported yet: --initial-cluster must name only this member");
        }
        let initial_cluster_state = match f.initial_cluster_state.as_str() {
            "new" => ClusterState::New,
            "existing" => ClusterState::Existing,
            other => {
                return err(format!(
                    "--initial-cluster-state: invalid value {other:?} (new or existing)"
                ))
            }
        };
        if f.heartbeat_interval == 0 || f.election_timeout == 0 {
            return err("--heartbeat-interval and --election-timeout must be positive");
        }
        if f.election_timeout < 5 * f.heartbeat_interval {
            return err(format!(
                "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
                f.election_timeout, f.heartbeat_interval
            ));
        }
        if f.election_timeout > 50_000 {
            return err(format!(
                "--election-timeout[{}ms] is too long, and should be set less than 50000ms",
                f.election_timeout
            ));
        }
        if f.max_txn_ops == 0 {
            return err("--max-txn-ops must be positive");
        }
        match f.auto_compaction_mode.as_str() {
            "periodic" | "revision" => {}
            other => {
                return err(format!(
                    "--auto-compaction-mode: unknown mode {other:?} (periodic or revision)"
                ))
            }
        }
        if f.auto_compaction_retention.trim() != "0" && !f.auto_compaction_retention.trim().is_empty() {
            return err("--auto-compaction-retention: auto compaction is not supported yet (only 0 is accepted)");
        }
        match f.logger.as_str() {
            "zap" | "capnslog" => {}
            other => return err(format!("--logger: unknown logger {other:?} (zap)")),
        }
        let log_level = match f.log_level.as_str() {
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warn" => LogLevel::Warn,
            "error" | "dpanic" | "panic" | "fatal" => LogLevel::Error,
            other => return err(format!("--log-level: unknown level {other:?}")),
        };
        let log_to_stdout = match f.log_outputs.as_str() {
            "default" | "stderr" => false,
            "stdout" => true,
            other => {
                return err(format!(
                    "--log-outputs: unsupported output {other:?} (default, stderr or stdout)"
                ))
            }
        };
        if !f.listen_metrics_urls.is_empty() {
            return err("--listen-metrics-urls: metrics endpoints are not supported yet");
        }
        let client_tls = !f.cert_file.is_empty()
            || !f.key_file.is_empty()
            || !f.trusted_ca_file.is_empty()
            || f.client_cert_auth
            || f.auto_tls
            || listen_client_urls
                .iter()
                .any(|u| u.scheme() == "https" || u.scheme() == "unixs");
        if client_tls {
            return err("client TLS (--cert-file, --key-file, --trusted-ca-file, --client-cert-auth, --auto-tls, https client URLs) is not supported yet");
        }
        if f.enable_v2 {
            return err("--enable-v2: the v2 API is not supported (etcd 3.6 removed it)");
        }
        let watch_progress_notify_interval = f
            .watch_progress_notify_interval
            .or(f.experimental_watch_progress_notify_interval)
            .unwrap_or(DEFAULT_PROGRESS_NOTIFY)
            .max(MIN_PROGRESS_NOTIFY);
        let lease_checkpoint_interval = f.experimental_enable_lease_checkpoint.then(|| {
            f.experimental_lease_checkpoint_interval
                .unwrap_or(DEFAULT_LEASE_CHECKPOINT)
                .max(MIN_LEASE_CHECKPOINT)
        });
        let data_dir = f
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", f.name)));
        Ok(Config {
            name: f.name,
            data_dir,
            wal_dir: (!f.wal_dir.is_empty()).then(|| PathBuf::from(f.wal_dir)),
            listen_client_urls,
            advertise_client_urls,
            listen_peer_urls,
            initial_advertise_peer_urls,
            initial_cluster,
            initial_cluster_state,
            initial_cluster_token: f.initial_cluster_token,
            heartbeat_interval: Duration::from_millis(f.heartbeat_interval),
            election_timeout: Duration::from_millis(f.election_timeout),
            snapshot_count: f.snapshot_count.max(1),
            max_request_bytes: f.max_request_bytes as usize,
            max_txn_ops: f.max_txn_ops as usize,
            max_concurrent_streams: f.max_concurrent_streams,
            log_level,
            log_to_stdout,
            peer_auto_tls: f.peer_auto_tls,
            watch_progress_notify_interval,
            lease_checkpoint_interval,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let argv = normalize_args(std::iter::once("cairn".to_string()).chain(args.iter().map(|s| s.to_string())));
        let flags = Flags::try_parse_from(argv).map_err(|e| e.to_string())?;
        Config::from_flags(flags).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_match_etcd() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir, PathBuf::from("default.etcd"));
        assert_eq!(c.listen_client_urls[0].as_str(), "http://localhost:2379/");
        assert_eq!(
            c.initial_cluster,
            vec![("default".to_string(), vec!["http://localhost:2380".to_string()])]
        );
        assert_eq!(c.max_request_bytes, 1_572_864);
        assert_eq!(c.max_txn_ops, 128);
        assert_eq!(c.max_concurrent_streams, u32::MAX);
        assert_eq!(
            parse(&["--max-concurrent-streams=100"]).unwrap().max_concurrent_streams,
            100
        );
        assert_eq!(c.election_timeout, Duration::from_millis(1000));
    }

    #[test]
    fn go_style_flags_and_bools() {
        let c = parse(&["-name", "n1", "--peer-auto-tls", "--data-dir=/tmp/x"]).unwrap();
        assert_eq!(c.name, "n1");
        assert!(c.peer_auto_tls);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert!(!parse(&["--peer-auto-tls=false"]).unwrap().peer_auto_tls);
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_go_duration("1h2m3.5s"), Ok(Duration::from_millis(3_723_500)));
        assert_eq!(parse_go_duration("100ms"), Ok(Duration::from_millis(100)));
        assert!(parse_go_duration("10").is_err());
        assert!(parse_go_duration("ten s").is_err());
        let c = parse(&["--experimental-watch-progress-notify-interval", "1s"]).unwrap();
        assert_eq!(c.watch_progress_notify_interval, Duration::from_secs(1));
        let c = parse(&["--watch-progress-notify-interval=1ms"]).unwrap();
        assert_eq!(c.watch_progress_notify_interval, MIN_PROGRESS_NOTIFY);
        assert_eq!(
            parse(&[]).unwrap().watch_progress_notify_interval,
            DEFAULT_PROGRESS_NOTIFY
        );
    }

    #[test]
    fn lease_checkpoints_are_on_by_default() {
        assert_eq!(
            parse(&[]).unwrap().lease_checkpoint_interval,
            Some(DEFAULT_LEASE_CHECKPOINT)
        );
        let c = parse(&["--experimental-lease-checkpoint-interval=2s"]).unwrap();
        assert_eq!(c.lease_checkpoint_interval, Some(Duration::from_secs(2)));
        let c = parse(&["--experimental-enable-lease-checkpoint=false"]).unwrap();
        assert_eq!(c.lease_checkpoint_interval, None);
    }

    #[test]
    fn bad_flags_are_errors() {
        assert!(parse(&["--no-such-flag"]).is_err());
        assert!(parse(&["--heartbeat-interval", "abc"]).is_err());
        assert!(parse(&["--initial-cluster-state", "maybe"]).is_err());
        assert!(parse(&["--listen-client-urls", "localhost:2379"]).is_err());
        assert!(
            parse(&["--name", "x", "--initial-cluster", "default=http://localhost:2380"])
                .unwrap_err()
                .contains("couldn't find local name")
        );
        assert!(parse(&["--election-timeout", "100"]).is_err());
    }
}
