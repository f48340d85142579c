//! Compaction: dropping every version that no read at or above the compacted revision can see.
//!
//! Compacting to `C` keeps, per key, the newest version at or below `C` unless it is a
//! tombstone, and everything above `C`. etcd's two halves, as etcd splits them:
//!
//! - **Logical**, in apply ([`schedule`]): `C` becomes the compacted revision in the entry's
//!   batch, so from then on reads and watches below `C` answer "compacted", identically on
//!   every member.
//! - **Physical**, in the background ([`Compactor`]): a thread of its own removes the
//!   superseded versions in bounded steps ([`step`]), each one RocksDB batch, so a compaction
//!   of millions of versions never stalls apply (etcd's does, under its backend lock).
//!
//! Only keys changed since the previous compaction can hold newly superseded versions, so
//! the `rev` column family (changes in revision order) names exactly the keys to visit.
//! Visited `rev` entries below `C` are deleted with their step: what is left below `C` is
//! what is still to do, so a restart resumes where the last step ended. Steps never race
//! apply: apply writes only above `C`, and each key's deletions are in one batch, so a read
//! at or above `C` sees every key either before or after its step.

use std::collections::BTreeSet;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use tokio::sync::watch;

use super::key::{after_all_versions, decode_rev_key, kv_key, rev_key, user_key_prefix};
use super::store::{is_tombstone, read_i64, Revisions};
use super::{Revision, NEVER_COMPACTED};
use crate::storage::schema::meta;
use crate::storage::{self, Cf, Cursor, Engine, ReadView, WriteBatch};

/// Keys visited per step: with `STEP_SCAN`, bounds one step's reads, its batch and how long
/// it runs.
const STEP_KEYS: usize = 1000;
/// `rev` entries scanned per step, at most (many changes to few keys).
const STEP_SCAN: usize = 10_000;
/// A key's superseded versions deleted one by one before the rest go in one range deletion.
const POINT_DELETES: usize = 64;
/// A pause between steps, leaving the disk and the cores to the foreground.
const STEP_PAUSE: Duration = Duration::from_millis(2);

/// The logical half, in apply: records `to` as the compacted revision in `batch`.
pub fn schedule(batch: &mut WriteBatch, to: Revision) {
    batch.put(Cf::Meta, meta::COMPACTED_REV, &to.to_be_bytes());
}

/// The revision up to which compaction is physically done.
pub fn finished(view: &impl ReadView) -> storage::Result<Revision> {
    read_i64(view, meta::COMPACT_FINISHED, NEVER_COMPACTED)
}

/// What one [`step`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do: the compacted revision is physically done.
    Idle,
    /// More to do; the next step starts at this `rev` key.
    Progress(Vec<u8>),
    /// The compaction to this revision is physically done.
    Finished(Revision),
}

/// Removes the versions that one key no longer needs at `target`: every version older than
/// its newest at or below `target`, and that one too if it is a tombstone. Older versions
/// beyond `POINT_DELETES` go in one range deletion, so a key with a million versions costs
/// a step no more than one with two.
fn compact_key(engine: &Engine, batch: &mut WriteBatch, key: &[u8], target: Revision) -> storage::Result<()> {
    let prefix = user_key_prefix(key);
    let same_key = |raw: &[u8]| raw.starts_with(&prefix) && raw.len() == prefix.len() + 8;
    let mut cur = engine.cursor(Cf::Kv);
    cur.seek(&kv_key(key, target));
    if !cur.valid() || !same_key(cur.key()) {
        return cur.status();
    }
    if is_tombstone(cur.value())? {
        batch.delete(Cf::Kv, cur.key());
    }
    cur.next();
    let mut deleted = 0;
    while cur.valid() && same_key(cur.key()) {
        if deleted == POINT_DELETES {
            batch.delete_range(Cf::Kv, cur.key(), &after_all_versions(&prefix));
            break;
        }
        batch.delete(Cf::Kv, cur.key());
        deleted += 1;
        cur.next();
    }
    cur.status()
}

/// One bounded step of the physical compaction, from the `rev` key `from` (empty: the
/// start): visits up to `max_keys` keys (scanning at most ten `rev` entries per key allowed),
/// writes their deletions and drops the visited `rev` entries below the target in one batch.
pub fn step(engine: &Engine, from: &[u8], max_keys: usize) -> storage::Result<Step> {
    let target = Revisions::read(engine)?.compacted;
    if target <= finished(engine)? {
        return Ok(Step::Idle);
    }
    let mut keys = BTreeSet::new();
    let mut scanned = 0;
    let mut resume = None;
    let mut cur = engine.cursor(Cf::Rev);
    cur.seek(from);
    while cur.valid() {
        let (main, _) = decode_rev_key(cur.key()).ok_or_else(|| storage::Error::corrupt(Cf::Rev, "malformed key"))?;
        if main > target {
            break;
        }
        let key = cur
            .value()
            .get(1..)
            .ok_or_else(|| storage::Error::corrupt(Cf::Rev, "empty value"))?;
        if scanned >= max_keys * (STEP_SCAN / STEP_KEYS) || (keys.len() >= max_keys && !keys.contains(key)) {
            resume = Some(cur.key().to_vec());
            break;
        }
        keys.insert(key.to_vec());
        scanned += 1;
        cur.next();
    }
    cur.status()?;

    let mut batch = WriteBatch::new(engine);
    for key in &keys {
        compact_key(engine, &mut batch, key, target)?;
    }
    // Entries at the target revision stay: watch history may start there.
    let below_target = rev_key(target, 0);
    let visited_end = match &resume {
        Some(next) if next.as_slice() < below_target.as_slice() => next.as_slice(),
        _ => below_target.as_slice(),
    };
    batch.delete_range(Cf::Rev, &rev_key(0, 0), visited_end);
    let outcome = match resume {
        Some(next) => Step::Progress(next),
        None => {
            batch.put(Cf::Meta, meta::COMPACT_FINISHED, &target.to_be_bytes());
            Step::Finished(target)
        }
    };
    // Not synced: a lost step is redone from what is left in `rev` (the compacted revision
    // itself is applied state, recovered from the raft log).
    engine.write(batch, false)?;
    Ok(outcome)
}

/// The physical half: a thread running [`step`]s whenever a compaction is behind, and the
/// revision up to which it is done, for `physical` requests to wait on. Clones share the
/// thread; dropping the last one stops it after its current step and joins it, so it never
/// outlives the storage it works on.
#[derive(Clone)]
pub struct Compactor {
    inner: Arc<Inner>,
}

/// `Option`s only so that `drop` can close the wake queue before joining the thread.
struct Inner {
    wake: Option<mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    finished: watch::Receiver<Revision>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Compactor {
    /// Starts the thread; it first finishes a compaction a restart interrupted. A storage
    /// error ends it after reporting to `fatal` (the member must stop: its state can no
    /// longer be trusted).
    pub fn start(engine: Engine, fatal: impl Fn(String) + Send + 'static) -> std::io::Result<Self> {
        let done = finished(&engine).map_err(std::io::Error::other)?;
        let (finished_tx, finished_rx) = watch::channel(done);
        let (wake_tx, wake_rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("mvcc-compactor".into())
            .spawn(move || run(&engine, &wake_rx, &finished_tx, &fatal))?;
        let _ = wake_tx.try_send(());
        Ok(Compactor {
            inner: Arc::new(Inner {
                wake: Some(wake_tx),
                thread: Some(thread),
                finished: finished_rx,
            }),
        })
    }

    /// A compaction was applied: start on it (a wake already pending covers it).
    pub fn wake(&self) {
        if let Some(wake) = &self.inner.wake {
            let _ = wake.try_send(());
        }
    }

    /// Waits until compaction is physically done up to `rev` (etcd's `physical`).
    pub async fn wait_finished(&self, rev: Revision) {
        let mut finished = self.inner.finished.clone();
        // An error means the thread ended on a fatal error: the member is stopping.
        if finished.wait_for(|done| *done >= rev).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn run(engine: &Engine, wake: &mpsc::Receiver<()>, finished: &watch::Sender<Revision>, fatal: &dyn Fn(String)) {
    let mut from = Vec::new();
    loop {
        match step(engine, &from, STEP_KEYS) {
            Ok(Step::Idle) => {
                from.clear();
                if wake.recv().is_err() {
                    return;
                }
            }
            Ok(Step::Progress(next)) => {
                from = next;
                if let Err(mpsc::TryRecvError::Disconnected) = wake.try_recv() {
                    return;
                }
                std::thread::sleep(STEP_PAUSE);
            }
            Ok(Step::Finished(rev)) => {
                from.clear();
                finished.send_replace(rev);
            }
            Err(e) => {
                fatal(format!("compaction failed: {e}"));
                return;
            }
        }
    }
}
