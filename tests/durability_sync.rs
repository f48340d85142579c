//! Every acknowledged put was on disk first: its bytes were written to RocksDB's write-ahead
//! log, and an fsync/fdatasync of that log file started after that write and returned before
//! the client got its answer.
//!
//! `tests/durability.rs` kills the server with SIGKILL, which keeps the page cache: it would
//! pass with no fsync at all. A power cut is what loses unsynced writes, and a test cannot
//! cut the power, so this one watches the syscalls instead: the real `cairn` binary runs
//! under `strace`, which records, with wall-clock times, every write to a file and every
//! fsync, and the file each was made on (`-y`). The client records, on the same clock
//! (`CLOCK_REALTIME`, strace's absolute timestamps), when it sent each put and when the
//! answer came. The order is causal, not a race: strace stamps a syscall's entry and exit
//! while the calling thread is stopped, so a write stamped as returned really returned
//! before anything it led to (the log's fdatasync, the reply) happened.
//!
//! Removing the fsync (`sync(&engine)` in `LogStore::append`) makes both tests fail: the puts
//! are written to the log and answered with no sync of it in between.
//!
//! `strace` is required: without it the tests fail, they do not skip.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use common::Node;

/// Nanoseconds since the Unix epoch: the clock strace's absolute timestamps use.
fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos()
}

/// The command the server runs under: strace, following every thread, writing to `trace`.
/// Panics, rather than skipping, when strace cannot run.
fn strace_wrapper(trace: &Path) -> Vec<String> {
    match Command::new("strace").arg("-V").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`strace -V` failed ({}): this test needs a working strace to see the server's fsyncs",
            out.status
        ),
        Err(e) => panic!(
            "strace not found ({e}): this test needs it to see the server's fsyncs; install it \
             (Debian: apt-get install strace)"
        ),
    }
    [
        "strace",
        "-f",
        // Only the traced syscalls stop the server; the rest run at full speed.
        "--seccomp-bpf",
        "--absolute-timestamps=format:unix,precision:ns",
        "--syscall-times=ns",
        // File descriptors with their paths: which file was written or synced.
        "-y",
        // Whole buffers, so a put's key is found in the log write that carries it.
        "-s",
        "1000000",
        "-qq",
        "-e",
        "signal=none",
        "-e",
        "trace=write,pwrite64,writev,pwritev,pwritev2,fsync,fdatasync,sync_file_range,syncfs,sync",
        "-o",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([trace.display().to_string(), "--".to_string()])
    .collect()
}

/// One completed syscall from the trace.
#[derive(Debug)]
struct Call {
    name: String,
    /// The path of its first argument's file descriptor (`-y`), empty if none.
    path: String,
    /// Its arguments as strace printed them.
    args: String,
    ok: bool,
    start: u128,
    end: u128,
}

/// `1796664777.949909123` → nanoseconds.
fn parse_ns(s: &str) -> Option<u128> {
    let (secs, frac) = s.split_once('.')?;
    let frac = format!("{frac:0<9}");
    Some(secs.parse::<u128>().ok()? * 1_000_000_000 + frac.get(..9)?.parse::<u128>().ok()?)
}

/// Parses `ARGS) = RET <DURATION>`, the part of a call after its opening parenthesis.
fn finish_call(name: &str, start: u128, text: &str) -> Option<Call> {
    let (args, result) = text.rsplit_once(") = ")?;
    let (ret, duration) = result.rsplit_once(" <")?;
    let duration = duration.strip_suffix('>')?;
    let ret = ret.split_whitespace().next()?;
    // The first argument is the descriptor: `12</path/to/file>`.
    let path = args
        .split_once('<')
        .filter(|(fd, _)| fd.chars().all(|c| c.is_ascii_digit()))
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(path, _)| path.to_string())
        .unwrap_or_default();
    Some(Call {
        name: name.to_string(),
        path,
        args: args.to_string(),
        ok: !ret.starts_with('-') && ret != "?",
        start,
        end: start + parse_ns(duration)?,
    })
}

/// The completed calls of an strace `-f` output, in order of entry. A call another thread
/// interrupted is split in two lines, `name(args <unfinished ...>` and
/// `<... name resumed>rest`, joined here by thread id.
fn parse_trace(text: &str) -> Vec<Call> {
    let mut pending: HashMap<&str, (&str, String, u128)> = HashMap::new();
    let mut calls = Vec::new();
    for line in text.lines() {
        let Some((tid, rest)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let Some((ts, body)) = rest.trim_start().split_once(' ') else {
            continue;
        };
        let Some(start) = parse_ns(ts) else {
            continue;
        };
        if let Some(resumed) = body.strip_prefix("<... ") {
            let Some((name, tail)) = resumed.split_once(" resumed>") else {
                continue;
            };
            if let Some((first_name, head, first_start)) = pending.remove(tid) {
                if first_name == name {
                    calls.extend(finish_call(name, first_start, &format!("{head}{tail}")));
                }
            }
        } else if let Some(head) = body.strip_suffix(" <unfinished ...>") {
            if let Some((name, args)) = head.split_once('(') {
                pending.insert(tid, (name, args.to_string(), start));
            }
        } else if let Some((name, args)) = body.split_once('(') {
            calls.extend(finish_call(name, start, args));
        }
    }
    calls.sort_by_key(|c| c.start);
    calls
}

/// RocksDB's write-ahead log files: `NNNNNN.log` directly in `dir`.
fn is_wal(path: &str, dir: &Path) -> bool {
    let path = Path::new(path);
    path.parent() == Some(dir)
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".log"))
            .is_some_and(|stem| !stem.is_empty() && stem.chars().all(|c| c.is_ascii_digit()))
}

fn is_write(call: &Call) -> bool {
    matches!(
        call.name.as_str(),
        "write" | "pwrite64" | "writev" | "pwritev" | "pwritev2"
    )
}

/// Only these make written data durable; `sync_file_range` does not (no metadata, no
/// device cache flush), so it is not counted.
fn is_sync(call: &Call) -> bool {
    matches!(call.name.as_str(), "fsync" | "fdatasync")
}

/// One acknowledged put: its key (unique, and no key is part of another) and when it was
/// sent and answered.
struct Put {
    key: String,
    sent: u128,
    acked: u128,
}

/// What the trace shows about the write-ahead log in `wal_dir`.
struct WalTrace {
    writes: Vec<Call>,
    syncs: Vec<Call>,
}

impl WalTrace {
    fn read(trace: &Path, wal_dir: &Path) -> WalTrace {
        let text = std::fs::read_to_string(trace).expect("read the strace output");
        // strace prints the file's real path.
        let wal_dir = wal_dir.canonicalize().expect("the WAL directory exists");
        let (mut writes, mut syncs) = (Vec::new(), Vec::new());
        for call in parse_trace(&text) {
            if call.ok && is_wal(&call.path, &wal_dir) {
                if is_write(&call) {
                    writes.push(call);
                } else if is_sync(&call) {
                    syncs.push(call);
                }
            }
        }
        assert!(
            !writes.is_empty(),
            "strace saw no write to a WAL file in {}: is the trace ({}) complete?",
            wal_dir.display(),
            trace.display()
        );
        WalTrace { writes, syncs }
    }

    /// Panics unless the put's key was written to a WAL file, after the put was sent, and
    /// a sync of that file started after the write returned and returned before the ack.
    /// Returns the sync's index in `self.syncs`.
    fn check(&self, put: &Put) -> usize {
        let ms = |t: u128| format!("{:.3} ms", t.saturating_sub(put.sent) as f64 / 1e6);
        // Its raft entry: the first write carrying the key (applying it writes the key again,
        // later).
        let write = self
            .writes
            .iter()
            .find(|w| w.start >= put.sent && w.args.contains(&put.key))
            .unwrap_or_else(|| {
                panic!(
                    "acknowledged put {} (answered after {}) was never seen written to the WAL",
                    put.key,
                    ms(put.acked)
                )
            });
        assert!(
            write.end <= put.acked,
            "put {} was acknowledged ({}) before its WAL write returned ({})",
            put.key,
            ms(put.acked),
            ms(write.end)
        );
        self.syncs
            .iter()
            .position(|s| s.path == write.path && s.start >= write.end && s.end <= put.acked)
            .unwrap_or_else(|| {
                let later = self.syncs.iter().find(|s| s.path == write.path && s.start >= write.end);
                panic!(
                    "put {} was acknowledged without being synced: written to {} after {} \
                     (returned after {}), acknowledged after {}, but no fsync/fdatasync of that \
                     file started after the write and returned before the ack (next sync of \
                     it: {}; {} WAL syncs in the whole trace)",
                    put.key,
                    write.path,
                    ms(write.start),
                    ms(write.end),
                    ms(put.acked),
                    later.map_or("none".into(), |s| format!("{} {}..{}", s.name, ms(s.start), ms(s.end))),
                    self.syncs.len(),
                )
            })
    }
}

/// Puts `key` and records when it was sent and answered.
async fn timed_put(client: &mut etcd_client::Client, key: String) -> Put {
    let sent = now_ns();
    client
        .put(key.as_str(), "value-without-keys", None)
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
    Put {
        key,
        sent,
        acked: now_ns(),
    }
}

/// A node under strace, its trace file, and where its write-ahead log is.
fn traced_node(tmp: &Path, wal_dir: Option<&Path>) -> (Node, PathBuf, PathBuf) {
    let trace = tmp.join("strace.out");
    let wal_flag = wal_dir.map(|d| d.display().to_string());
    let extra: Vec<&str> = match &wal_flag {
        Some(dir) => vec!["--wal-dir", dir.as_str()],
        None => Vec::new(),
    };
    let node = Node::start_under(&strace_wrapper(&trace), &extra);
    // RocksDB lives in member/db; its log is there unless --wal-dir moves it.
    let wal = wal_dir.map_or_else(|| node.data_dir().join("member").join("db"), Path::to_path_buf);
    (node, trace, wal)
}

/// One put at a time: each answer waits for its own fsync, so there are at least as many
/// syncs of the log as puts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sequential_put_is_synced_before_its_ack() {
    const PUTS: usize = 200;
    let tmp = tempfile::tempdir().expect("temp dir");
    let (mut node, trace, wal) = traced_node(tmp.path(), None);
    let mut client = node.client().await;
    let started = Instant::now();
    let mut puts = Vec::new();
    for i in 0..PUTS {
        puts.push(timed_put(&mut client, format!("seq-put-{i:05}")).await);
    }
    let elapsed = started.elapsed();
    // Stopping the server ends strace, which then has written the whole trace.
    node.kill9();

    let log = WalTrace::read(&trace, &wal);
    let mut used = Vec::new();
    for put in &puts {
        used.push(log.check(put));
    }
    let (first, last) = (puts[0].sent, puts[PUTS - 1].acked);
    let during = log.syncs.iter().filter(|s| s.start >= first && s.end <= last).count();
    assert!(
        during >= PUTS,
        "{PUTS} sequential puts were acknowledged with only {during} syncs of the WAL between them"
    );
    used.dedup();
    assert_eq!(used.len(), PUTS, "two sequential puts were covered by one sync");
    eprintln!(
        "{PUTS} sequential puts in {elapsed:?} under strace, each after its own WAL sync; \
         {during} WAL syncs during them"
    );
}

/// Bursts of concurrent puts (through `--wal-dir`): each answer comes after a sync that
/// began once the put was written; concurrent puts may share one (group commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_concurrent_put_is_synced_before_its_ack() {
    const IN_FLIGHT: usize = 32;
    const BURSTS: usize = 4;
    let tmp = tempfile::tempdir().expect("temp dir");
    let wal_dir = tmp.path().join("wal");
    let (mut node, trace, wal) = traced_node(tmp.path(), Some(&wal_dir));
    let client = node.client().await;
    let started = Instant::now();
    let mut puts = Vec::new();
    for burst in 0..BURSTS {
        let tasks: Vec<_> = (0..IN_FLIGHT)
            .map(|i| {
                // Clones share one connection: the puts are in flight on it together.
                let mut client = client.clone();
                tokio::spawn(async move { timed_put(&mut client, format!("burst-{burst}-put-{i:03}")).await })
            })
            .collect();
        for task in tasks {
            puts.push(task.await.expect("put task"));
        }
    }
    let elapsed = started.elapsed();
    node.kill9();

    let log = WalTrace::read(&trace, &wal);
    for put in &puts {
        log.check(put);
    }
    let first = puts.iter().map(|p| p.sent).min().expect("puts");
    let last = puts.iter().map(|p| p.acked).max().expect("puts");
    let within = |c: &&Call| c.start >= first && c.end <= last;
    eprintln!(
        "{} puts in {BURSTS} bursts of {IN_FLIGHT} in {elapsed:?} under strace, each after a WAL \
         sync; {} WAL writes and {} WAL syncs during them",
        puts.len(),
        log.writes.iter().filter(within).count(),
        log.syncs.iter().filter(within).count()
    );
}

#[test]
fn parses_interleaved_strace_lines() {
    let trace = "\
101  1700000000.000000100 fdatasync(7</d/000004.log> <unfinished ...>
102  1700000000.000000200 write(9</d/000004.log>, \"k1\\22\", 3) = 3 <0.000000010>
101  1700000000.000001000 <... fdatasync resumed>) = 0 <0.000000950>
103  1700000000.000002000 fsync(8</d/MANIFEST-000005>) = -1 EIO (Input/output error) <0.000000005>
101  1700000000.000003000 +++ exited with 0 +++
";
    let calls = parse_trace(trace);
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[0].name, "fdatasync");
    assert_eq!(calls[0].path, "/d/000004.log");
    assert_eq!(
        (calls[0].start, calls[0].end),
        (1_700_000_000_000_000_100, 1_700_000_000_000_001_050)
    );
    assert!(calls[0].ok);
    assert_eq!(calls[1].name, "write");
    assert!(calls[1].args.contains("k1"));
    assert!(!calls[2].ok);
    assert!(is_wal("/d/000004.log", Path::new("/d")));
    assert!(!is_wal("/d/LOG", Path::new("/d")));
    assert!(!is_wal("/d/x/000004.log", Path::new("/d")));
}
