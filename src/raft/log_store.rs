//! openraft's log storage on the `raft_log` and `raft_meta` column families.
//!
//! Keys are big-endian indexes, so byte order is log order.
//!
//! An append writes its entries at once (readable on return, as openraft requires) without
//! waiting for the disk, and hands openraft's durability callback to one syncer thread. The
//! syncer takes every callback waiting, fsyncs the write-ahead log once, and only then
//! reports them durable. A group could hold several appends, but openraft 0.9 awaits each
//! flush before its next append, so today every append pays its own fsync: sharing one
//! fsync among concurrent proposals happens above openraft: `raft::proposer` batches them
//! into one entry.
//!
//! Every read and write of the log runs on the log's own I/O thread (`raft::io`), never on
//! the blocking pool client reads use.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{OptionalSend, StorageIOError};
use prost::Message;

use super::codec::{decode, entry_from_bytes, entry_to_bytes, log_id_from_pb, log_id_to_pb, vote_from_pb, vote_to_pb};
use super::io::IoThread;
use super::{typ, TypeConfig};

use crate::proto::cairnpb;
use crate::storage::schema::raft_meta;
use crate::storage::{self, Cf, Cursor, Engine, ReadView, WriteBatch};

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn read_err(e: storage::Error) -> typ::StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: storage::Error) -> typ::StorageError {
    StorageIOError::write_logs(&e).into()
}

/// Appends waiting for the syncer at most; beyond that, appending waits (backpressure).
const SYNC_QUEUE: usize = 4096;

/// How a failed blocking task is reported.
const JOIN_FAILED: fn(&std::io::Error) -> StorageIOError<u64> = |e| StorageIOError::write_logs(e);

#[derive(Clone)]
pub struct LogStore {
    engine: Engine,
    io: IoThread,
    syncer: Arc<Syncer>,
}

/// The syncer thread and its queue, shared by every clone of the store. Dropping the last
/// clone closes the queue and joins the thread, so the thread never outlives the store
/// holding RocksDB open: a process exiting while it did crashed in RocksDB's teardown.
struct Syncer {
    queue: Option<std::sync::mpsc::SyncSender<LogFlushed<TypeConfig>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Syncer {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            // Ends after the group in hand (one fsync) once the queue is closed.
            let _ = thread.join();
        }
    }
}

/// One fsync of the write-ahead log (the `raft-log-fsync` failpoint fails it).
fn sync(engine: &Engine) -> storage::Result<()> {
    fail::fail_point!("raft-log-fsync", |_| Err(storage::Error::Engine(
        "fsync failed (failpoint raft-log-fsync)".into()
    )));
    engine.sync_wal()
}

/// Reports appends durable in groups, one fsync per group. Ends when the queue closes.
fn run_syncer(engine: Engine, waiting: std::sync::mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = waiting.recv() {
        let mut group = vec![first];
        group.extend(waiting.try_iter());
        let result = sync(&engine);
        for flushed in group {
            flushed.log_io_completed(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            });
        }
    }
}

impl LogStore {
    /// Fails only if the syncer or I/O thread cannot be started.
    pub fn new(engine: Engine) -> std::io::Result<Self> {
        let io = IoThread::spawn("raft-log-io")?;
        let (queue, waiting) = std::sync::mpsc::sync_channel(SYNC_QUEUE);
        let sync_engine = engine.clone();
        let thread = std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || run_syncer(sync_engine, waiting))?;
        let syncer = Arc::new(Syncer {
            queue: Some(queue),
            thread: Some(thread),
        });
        Ok(LogStore { engine, io, syncer })
    }
}

// Free functions over the engine, not methods: a job on the I/O thread must not hold a
// `LogStore` clone, whose drop could be the last and join the thread from itself.

fn last_purged(engine: &Engine) -> storage::Result<Option<typ::LogId>> {
    engine
        .get(Cf::RaftMeta, raft_meta::LAST_PURGED)?
        .map(|raw| decode::<cairnpb::LogId>(Cf::RaftMeta, &raw).map(|id| log_id_from_pb(&id)))
        .transpose()
}

fn last_entry_id(engine: &Engine) -> storage::Result<Option<typ::LogId>> {
    // Indexes are big-endian: the last key is the newest entry.
    let mut cur = engine.cursor(Cf::RaftLog);
    cur.seek_to_last();
    if cur.valid() {
        return Ok(Some(entry_from_bytes(cur.value())?.log_id));
    }
    cur.status()?;
    Ok(None)
}

fn read_range(engine: &Engine, start: u64, end: Option<u64>) -> storage::Result<Vec<typ::Entry>> {
    let mut out = Vec::new();
    let mut cur = engine.cursor(Cf::RaftLog);
    cur.seek(&index_key(start));
    while cur.valid() {
        let index = u64::from_be_bytes(
            cur.key()
                .try_into()
                .map_err(|_| storage::Error::corrupt(Cf::RaftLog, "key is not 8 bytes"))?,
        );
        if end.is_some_and(|end| index >= end) {
            break;
        }
        out.push(entry_from_bytes(cur.value())?);
        cur.next();
    }
    cur.status()?;
    Ok(out)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<typ::Entry>, typ::StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => Some(i.saturating_add(1)),
            Bound::Excluded(&i) => Some(i),
            Bound::Unbounded => None,
        };
        let engine = self.engine.clone();
        self.io
            .run(JOIN_FAILED, move || read_range(&engine, start, end).map_err(read_err))
            .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, typ::StorageError> {
        let engine = self.engine.clone();
        self.io
            .run(JOIN_FAILED, move || {
                let last_purged_log_id = last_purged(&engine).map_err(read_err)?;
                let last_log_id = last_entry_id(&engine).map_err(read_err)?.or(last_purged_log_id);
                Ok(LogState {
                    last_purged_log_id,
                    last_log_id,
                })
            })
            .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &typ::Vote) -> Result<(), typ::StorageError> {
        let engine = self.engine.clone();
        let raw = vote_to_pb(vote).encode_to_vec();
        self.io
            .run(JOIN_FAILED, move || {
                let mut batch = WriteBatch::new(&engine);
                batch.put(Cf::RaftMeta, raft_meta::VOTE, &raw);
                engine
                    .write(batch, true)
                    .map_err(|e| StorageIOError::write_vote(&e).into())
            })
            .await
    }

    async fn read_vote(&mut self) -> Result<Option<typ::Vote>, typ::StorageError> {
        self.engine
            .get(Cf::RaftMeta, raft_meta::VOTE)
            .and_then(|raw| {
                raw.map(|raw| decode::<cairnpb::Vote>(Cf::RaftMeta, &raw).map(|v| vote_from_pb(&v)))
                    .transpose()
            })
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<typ::LogId>) -> Result<(), typ::StorageError> {
        // Not synced: a lost `committed` only means re-deriving it from the leader on restart.
        let mut batch = WriteBatch::new(&self.engine);
        match committed {
            Some(id) => batch.put(Cf::RaftMeta, raft_meta::COMMITTED, &log_id_to_pb(&id).encode_to_vec()),
            None => batch.delete(Cf::RaftMeta, raft_meta::COMMITTED),
        }
        self.engine.write(batch, false).map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<typ::LogId>, typ::StorageError> {
        self.engine
            .get(Cf::RaftMeta, raft_meta::COMMITTED)
            .and_then(|raw| {
                raw.map(|raw| decode::<cairnpb::LogId>(Cf::RaftMeta, &raw).map(|id| log_id_from_pb(&id)))
                    .transpose()
            })
            .map_err(read_err)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), typ::StorageError>
    where
        I: IntoIterator<Item = typ::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::new(&self.engine);
        for entry in entries {
            batch.put(Cf::RaftLog, &index_key(entry.log_id.index), &entry_to_bytes(&entry));
        }
        // Written now (readable at once), durable when the syncer's next fsync completes.
        // Handing over the callback blocks only when SYNC_QUEUE appends already wait.
        let engine = self.engine.clone();
        let syncer = self.syncer.clone();
        self.io
            .run(JOIN_FAILED, move || {
                fail::fail_point!("raft-log-append", |_| Err(write_err(storage::Error::Engine(
                    "log append failed (failpoint raft-log-append)".into()
                ))));
                engine.write(batch, false).map_err(write_err)?;
                syncer
                    .queue
                    .as_ref()
                    .ok_or(())
                    .and_then(|queue| queue.send(callback).map_err(|_| ()))
                    .map_err(|()| write_err(crate::storage::Error::Engine("raft log syncer stopped".into())))
            })
            .await
    }

    async fn truncate(&mut self, log_id: typ::LogId) -> Result<(), typ::StorageError> {
        let mut batch = WriteBatch::new(&self.engine);
        batch.delete_range(Cf::RaftLog, &index_key(log_id.index), &index_key(u64::MAX));
        batch.delete(Cf::RaftLog, &index_key(u64::MAX));
        let engine = self.engine.clone();
        self.io
            .run(JOIN_FAILED, move || engine.write(batch, true).map_err(write_err))
            .await
    }

    async fn purge(&mut self, log_id: typ::LogId) -> Result<(), typ::StorageError> {
        // Record the purge point first (same batch), so a crash never leaves a hole unexplained.
        let mut batch = WriteBatch::new(&self.engine);
        batch.put(
            Cf::RaftMeta,
            raft_meta::LAST_PURGED,
            &log_id_to_pb(&log_id).encode_to_vec(),
        );
        batch.delete_range(Cf::RaftLog, &index_key(0), &index_key(log_id.index.saturating_add(1)));
        let engine = self.engine.clone();
        self.io
            .run(JOIN_FAILED, move || engine.write(batch, true).map_err(write_err))
            .await
    }
}
