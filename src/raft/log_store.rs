//! openraft's log storage on the `raft_log` and `raft_meta` column families.
//!
//! Keys are big-endian indexes, so byte order is log order.
//!
//! An append writes its entries and fsyncs the write-ahead log on the log's I/O thread,
//! then reports them durable through openraft's callback. openraft 0.9 awaits each append's
//! flush before it does anything else (`RaftCore::append_to_log`), so no second append can
//! arrive to share the fsync: a separate syncer thread would only add a hand-off per write.
//! Sharing one fsync among concurrent proposals happens above openraft: `raft::proposer`
//! batches them into one entry.
//!
//! Every read and write of the log runs on the log's own I/O thread (`raft::io`), never on
//! the blocking pool client reads use, except reads of the entries appended last: openraft's
//! core reads every committed entry back before applying it, and waits for the read, so
//! those come from a small copy in memory ([`Recent`]), without a hop to the I/O thread or
//! a decode.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard};

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

/// How a failed blocking task is reported.
const JOIN_FAILED: fn(&std::io::Error) -> StorageIOError<u64> = |e| StorageIOError::write_logs(e);

#[derive(Clone)]
pub struct LogStore {
    engine: Engine,
    io: IoThread,
    recent: Arc<Mutex<Recent>>,
}

/// The entries appended last, at most this many, or this many encoded bytes (one entry
/// over it is not kept): enough for openraft to read back what it applies next.
const RECENT_ENTRIES: usize = 64;
const RECENT_BYTES: usize = 8 << 20;

/// A copy of the last appended entries, consecutive indexes ending at the last one, each
/// with its encoded size.
#[derive(Default)]
struct Recent {
    entries: VecDeque<(typ::Entry, usize)>,
    bytes: usize,
}

impl Recent {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn push(&mut self, entry: typ::Entry, size: usize) {
        let follows = self
            .entries
            .back()
            .is_none_or(|(last, _)| last.log_id.index.checked_add(1) == Some(entry.log_id.index));
        if !follows {
            self.clear();
        }
        if size > RECENT_BYTES {
            return self.clear();
        }
        self.entries.push_back((entry, size));
        self.bytes += size;
        while self.entries.len() > RECENT_ENTRIES || self.bytes > RECENT_BYTES {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Entries `[start, end)` if all of them are here (`end` `None`: to the last one).
    fn get(&self, start: u64, end: Option<u64>) -> Option<Vec<typ::Entry>> {
        let first = self.first_index()?;
        let next = first + self.entries.len() as u64;
        let end = end.unwrap_or(next).min(next);
        if start < first || start > end {
            return None;
        }
        let (from, to) = ((start - first) as usize, (end - first) as usize);
        Some(self.entries.range(from..to).map(|(e, _)| e.clone()).collect())
    }

    /// Forgets entries from `index` on (a truncated log).
    fn truncate(&mut self, index: u64) {
        while self.entries.back().is_some_and(|(e, _)| e.log_id.index >= index) {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// Forgets entries up to `index` (a purged log).
    fn purge(&mut self, index: u64) {
        while self.first_index().is_some_and(|i| i <= index) {
            self.pop_front();
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

impl LogStore {
    /// Fails only if the I/O thread cannot be started.
    pub fn new(engine: Engine) -> std::io::Result<Self> {
        let io = IoThread::spawn("raft-log-io")?;
        Ok(LogStore {
            engine,
            io,
            recent: Arc::default(),
        })
    }

    fn recent(&self) -> MutexGuard<'_, Recent> {
        // A panic while holding the lock stops the member (fail-stop); the copy stays valid.
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
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
        if let Some(entries) = self.recent().get(start, end) {
            return Ok(entries);
        }
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
        let mut appended = Vec::new();
        for entry in entries {
            let raw = entry_to_bytes(&entry);
            batch.put(Cf::RaftLog, &index_key(entry.log_id.index), &raw);
            appended.push((entry, raw.len()));
        }
        // Written (readable at once), then made durable; openraft hears of the fsync's
        // outcome through the callback, a failure of which is fatal to the member.
        let engine = self.engine.clone();
        self.io
            .run(JOIN_FAILED, move || {
                fail::fail_point!("raft-log-append", |_| Err(write_err(storage::Error::Engine(
                    "log append failed (failpoint raft-log-append)".into()
                ))));
                engine.write(batch, false).map_err(write_err)?;
                callback.log_io_completed(sync(&engine).map_err(|e| std::io::Error::other(e.to_string())));
                Ok(())
            })
            .await?;
        let mut recent = self.recent();
        for (entry, size) in appended {
            recent.push(entry, size);
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: typ::LogId) -> Result<(), typ::StorageError> {
        let mut batch = WriteBatch::new(&self.engine);
        batch.delete_range(Cf::RaftLog, &index_key(log_id.index), &index_key(u64::MAX));
        batch.delete(Cf::RaftLog, &index_key(u64::MAX));
        self.recent().truncate(log_id.index);
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
        self.recent().purge(log_id.index);
        let engine = self.engine.clone();
        self.io
            .run(JOIN_FAILED, move || engine.write(batch, true).map_err(write_err))
            .await
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(index: u64) -> typ::Entry {
        typ::Entry {
            log_id: typ::LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn indexes(entries: Option<Vec<typ::Entry>>) -> Option<Vec<u64>> {
        entries.map(|es| es.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn recent_entries_answer_only_ranges_they_hold_whole() {
        let mut r = Recent::default();
        assert_eq!(indexes(r.get(1, None)), None, "empty: read the log");
        for i in 5..=8 {
            r.push(entry(i), 10);
        }
        assert_eq!(indexes(r.get(6, Some(8))), Some(vec![6, 7]));
        assert_eq!(indexes(r.get(7, None)), Some(vec![7, 8]));
        assert_eq!(
            indexes(r.get(5, Some(100))),
            Some(vec![5, 6, 7, 8]),
            "nothing past the last"
        );
        assert_eq!(indexes(r.get(4, Some(6))), None, "4 is not here");
        assert_eq!(indexes(r.get(9, None)), Some(vec![]), "nothing after the last entry");

        r.truncate(7);
        assert_eq!(indexes(r.get(5, None)), Some(vec![5, 6]));
        r.purge(5);
        assert_eq!(indexes(r.get(6, None)), Some(vec![6]));
        assert_eq!(r.bytes, 10);
        // A gap (entries appended after a truncation elsewhere): start again from it.
        r.push(entry(9), 10);
        assert_eq!(indexes(r.get(6, None)), None);
        assert_eq!(indexes(r.get(9, None)), Some(vec![9]));
    }

    #[test]
    fn recent_entries_stay_within_their_bounds() {
        let mut r = Recent::default();
        for i in 1..=(RECENT_ENTRIES as u64 + 10) {
            r.push(entry(i), 1);
        }
        assert_eq!(r.entries.len(), RECENT_ENTRIES);
        assert_eq!(r.first_index(), Some(11));
        r.push(entry(RECENT_ENTRIES as u64 + 11), RECENT_BYTES - 1);
        assert_eq!(r.bytes, RECENT_BYTES);
        assert_eq!(r.entries.len(), 2, "the big entry pushed all but one out");
        r.push(entry(RECENT_ENTRIES as u64 + 12), RECENT_BYTES + 1);
        assert!(
            r.entries.is_empty() && r.bytes == 0,
            "an entry over the bound is not kept"
        );
    }
}
