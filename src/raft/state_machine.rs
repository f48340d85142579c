//! openraft's state machine on the `kv`, `rev` and `meta` column families.
//!
//! Each entry is applied as one RocksDB batch that also records its log id (etcd's
//! consistent index), so an entry's effects and the fact that it was applied are never
//! separated by a crash.
//!
//! Apply batches are not fsync'd on their own: the entry they apply is already durable in
//! the raft log, and RocksDB keeps one WAL for every column family, so the next synced raft
//! write (an append, or the purge that follows a snapshot) makes them durable too. A crash
//! before that loses only applied state whose log entries are still there to re-apply. This
//! saves one fsync per write against syncing both.

use std::io::{Cursor as IoCursor, Read};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, StorageIOError};
use prost::Message;

use super::codec::{decode, log_id_from_pb, log_id_to_pb, stored_membership_from_pb, stored_membership_to_pb};
use super::io::IoThread;
use super::{blocking, typ, RaftResponse, TypeConfig};
use crate::proto::cairnpb::{self, raft_request, RaftRequest};
use crate::storage::schema::meta;
use crate::storage::{self, Cf, Cursor, Engine, ReadView, WriteBatch};

/// The first requests of a slice, applied together: their writes in one batch, one answer
/// each in order (refused requests write nothing), and what the application tells its
/// observers once the batch is written.
pub struct Applied<E> {
    pub batch: WriteBatch,
    pub responses: Vec<RaftResponse>,
    pub effects: E,
}

/// The application's semantics, kept out of raft: how requests become writes, and who
/// hears about them. Raft adds the entry's log id to the batch and writes it.
pub trait Application: Send + Sync + 'static {
    type Effects: Send + 'static;
    /// Applies the first of `reqs` (never an empty slice), and as many of those after it as
    /// the application can write in the same batch: one RocksDB write for many requests of
    /// a group-commit entry. Each request's reads see the ones before it. An error is a
    /// storage fault, fatal to the member.
    fn apply(&self, engine: &Engine, reqs: &[RaftRequest]) -> storage::Result<Applied<Self::Effects>>;
    /// The batch is written: observers learn what it changed.
    fn applied(&self, effects: Self::Effects);
    /// A snapshot replaced the state: observers reload from it.
    fn reload(&self, engine: &Engine) -> storage::Result<()>;
}

fn sm_read_err(e: storage::Error) -> typ::StorageError {
    StorageIOError::read_state_machine(&e).into()
}

fn sm_write_err(e: storage::Error) -> typ::StorageError {
    StorageIOError::write_state_machine(&e).into()
}

/// How a failed blocking task is reported.
const JOIN_FAILED: fn(&std::io::Error) -> StorageIOError<u64> = |e| StorageIOError::write_state_machine(e);

pub struct StateMachine<A> {
    engine: Engine,
    /// Applies and snapshot installation run here, not on the blocking pool client reads use.
    io: IoThread,
    app: Arc<A>,
    /// The last snapshot built, if any: openraft asks for it again when a follower needs it.
    last_snapshot: Arc<Mutex<Option<typ::SnapshotMeta>>>,
}

fn applied_state_of(view: &impl ReadView) -> storage::Result<(Option<typ::LogId>, typ::StoredMembership)> {
    let last = view
        .get(Cf::Meta, meta::LAST_APPLIED)?
        .map(|raw| decode::<cairnpb::LogId>(Cf::Meta, &raw).map(|id| log_id_from_pb(&id)))
        .transpose()?;
    let membership = view
        .get(Cf::Meta, meta::MEMBERSHIP)?
        .map(|raw| decode::<cairnpb::StoredMembership>(Cf::Meta, &raw).map(|m| stored_membership_from_pb(&m)))
        .transpose()?
        .unwrap_or_default();
    Ok((last, membership))
}

/// Snapshot data: `[cf id][key len u32][key][value len u32][value]` for every record of the
/// state machine's column families.
fn dump(view: &impl ReadView) -> storage::Result<Vec<u8>> {
    let mut out = Vec::new();
    for cf in Cf::STATE_MACHINE {
        let mut cur = view.cursor(cf);
        cur.seek(&[]);
        while cur.valid() {
            out.push(cf.id());
            for part in [cur.key(), cur.value()] {
                out.extend_from_slice(&(part.len() as u32).to_be_bytes());
                out.extend_from_slice(part);
            }
            cur.next();
        }
        cur.status()?;
    }
    Ok(out)
}

fn load(engine: &Engine, data: &[u8]) -> storage::Result<WriteBatch> {
    let corrupt = || storage::Error::corrupt(Cf::Meta, "truncated snapshot");
    let mut batch = WriteBatch::new(engine);
    for cf in Cf::STATE_MACHINE {
        engine.clear_into(cf, &mut batch);
    }
    let mut r = IoCursor::new(data);
    let mut id = [0u8; 1];
    while r.read(&mut id).map_err(|_| corrupt())? == 1 {
        let cf = Cf::from_id(id[0])
            .filter(|cf| Cf::STATE_MACHINE.contains(cf))
            .ok_or_else(|| storage::Error::corrupt(Cf::Meta, "snapshot names an unknown column family"))?;
        let mut parts = [Vec::new(), Vec::new()];
        for part in &mut parts {
            let mut len = [0u8; 4];
            r.read_exact(&mut len).map_err(|_| corrupt())?;
            part.resize(u32::from_be_bytes(len) as usize, 0);
            r.read_exact(part).map_err(|_| corrupt())?;
        }
        batch.put(cf, &parts[0], &parts[1]);
    }
    Ok(batch)
}

/// Applies one entry and records it applied in the same RocksDB batch as its effects.
///
/// A batch entry (group commit) is applied in runs of requests the application writes
/// together (usually the whole entry), each run's batch also recording how far the entry got
/// (`meta::APPLIED_PART`); the last run's batch records the entry's log id instead. After a
/// crash in the middle, the entry is applied again from its first request not yet applied:
/// every request is applied exactly once, at the same revision on every member.
fn apply_entry<A: Application>(engine: &Engine, app: &A, entry: &typ::Entry) -> storage::Result<RaftResponse> {
    let log_id = log_id_to_pb(&entry.log_id);
    let mark_applied = |batch: &mut WriteBatch| batch.put(Cf::Meta, meta::LAST_APPLIED, &log_id.encode_to_vec());
    let requests = match &entry.payload {
        EntryPayload::Normal(RaftRequest {
            request: Some(raft_request::Request::Batch(batch)),
        }) => &batch.requests,
        EntryPayload::Normal(req) => {
            let applied = app.apply(engine, std::slice::from_ref(req))?;
            let response = checked_answers(applied.responses, 1)?.pop();
            let mut batch = applied.batch;
            mark_applied(&mut batch);
            engine.write(batch, false)?;
            app.applied(applied.effects);
            return response.ok_or_else(|| storage::Error::Engine("no answer".into()));
        }
        EntryPayload::Blank => {
            let mut batch = WriteBatch::new(engine);
            mark_applied(&mut batch);
            engine.write(batch, false)?;
            return Ok(RaftResponse::Empty(cairnpb::Blank {}));
        }
        EntryPayload::Membership(m) => {
            let mut batch = WriteBatch::new(engine);
            let stored = typ::StoredMembership::new(Some(entry.log_id), m.clone());
            batch.put(
                Cf::Meta,
                meta::MEMBERSHIP,
                &stored_membership_to_pb(&stored).encode_to_vec(),
            );
            mark_applied(&mut batch);
            engine.write(batch, false)?;
            return Ok(RaftResponse::Empty(cairnpb::Blank {}));
        }
    };
    let mut done = applied_part(engine, &log_id)?.min(requests.len());
    // Applied before a restart: nobody waits for their answers any more.
    let mut responses = vec![
        cairnpb::RaftResponse {
            response: Some(RaftResponse::Empty(cairnpb::Blank {})),
        };
        done
    ];
    while done < requests.len() {
        let rest = &requests[done..];
        let applied = app.apply(engine, rest)?;
        let answers = checked_answers(applied.responses, rest.len())?;
        done += answers.len();
        let mut batch = applied.batch;
        if done == requests.len() {
            mark_applied(&mut batch);
            batch.delete(Cf::Meta, meta::APPLIED_PART);
        } else {
            let part = cairnpb::AppliedPart {
                log_id: Some(log_id),
                done: u32::try_from(done).map_err(|_| storage::Error::corrupt(Cf::Meta, "batch too long"))?,
            };
            batch.put(Cf::Meta, meta::APPLIED_PART, &part.encode_to_vec());
        }
        engine.write(batch, false)?;
        app.applied(applied.effects);
        responses.extend(answers.into_iter().map(|r| cairnpb::RaftResponse { response: Some(r) }));
    }
    if requests.is_empty() {
        let mut batch = WriteBatch::new(engine);
        mark_applied(&mut batch);
        engine.write(batch, false)?;
    }
    Ok(RaftResponse::Batch(cairnpb::RaftResponses { responses }))
}

/// The application's answers to a run of requests: at least one, at most `asked`. Anything
/// else is a bug that would misnumber every later revision: fatal, like a storage fault.
fn checked_answers(answers: Vec<RaftResponse>, asked: usize) -> storage::Result<Vec<RaftResponse>> {
    if answers.is_empty() || answers.len() > asked {
        return Err(storage::Error::Engine(format!(
            "the application answered {} of {asked} requests",
            answers.len()
        )));
    }
    Ok(answers)
}

/// How many requests of the batch entry `log_id` were applied before a restart.
fn applied_part(view: &impl ReadView, log_id: &cairnpb::LogId) -> storage::Result<usize> {
    let Some(raw) = view.get(Cf::Meta, meta::APPLIED_PART)? else {
        return Ok(0);
    };
    let part = decode::<cairnpb::AppliedPart>(Cf::Meta, &raw)?;
    Ok(if part.log_id.as_ref() == Some(log_id) {
        part.done as usize
    } else {
        0
    })
}

// Not derived: `A` itself need not be `Clone`.
impl<A> Clone for StateMachine<A> {
    fn clone(&self) -> Self {
        StateMachine {
            engine: self.engine.clone(),
            io: self.io.clone(),
            app: self.app.clone(),
            last_snapshot: self.last_snapshot.clone(),
        }
    }
}

impl<A: Application> StateMachine<A> {
    /// Fails only if the apply thread cannot be started.
    pub fn new(engine: Engine, app: Arc<A>) -> std::io::Result<Self> {
        Ok(StateMachine {
            engine,
            io: IoThread::spawn("raft-apply")?,
            app,
            last_snapshot: Arc::new(Mutex::new(None)),
        })
    }

    fn build(&self, snapshot_id: Option<String>) -> storage::Result<typ::Snapshot> {
        let snap = self.engine.snapshot();
        let (last_log_id, last_membership) = applied_state_of(&snap)?;
        let data = dump(&snap)?;
        let snapshot_id = snapshot_id.unwrap_or_else(|| match &last_log_id {
            Some(id) => format!("{:020}-{:020}", id.leader_id.term, id.index),
            None => "empty".to_string(),
        });
        let meta = typ::SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        Ok(typ::Snapshot {
            meta,
            snapshot: Box::new(IoCursor::new(data)),
        })
    }
}

impl<A: Application> RaftSnapshotBuilder<TypeConfig> for StateMachine<A> {
    async fn build_snapshot(&mut self) -> Result<typ::Snapshot, typ::StorageError> {
        let sm = self.clone();
        let snapshot = blocking(JOIN_FAILED, move || sm.build(None).map_err(sm_read_err)).await?;
        if let Ok(mut last) = self.last_snapshot.lock() {
            *last = Some(snapshot.meta.clone());
        }
        Ok(snapshot)
    }
}

impl<A: Application> RaftStateMachine<TypeConfig> for StateMachine<A> {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<typ::LogId>, typ::StoredMembership), typ::StorageError> {
        applied_state_of(&self.engine).map_err(sm_read_err)
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<RaftResponse>, typ::StorageError>
    where
        I: IntoIterator<Item = typ::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<typ::Entry> = entries.into_iter().collect();
        let engine = self.engine.clone();
        let app = self.app.clone();
        self.io
            .run(JOIN_FAILED, move || {
                let mut responses = Vec::with_capacity(entries.len());
                for entry in entries {
                    fail::fail_point!("raft-apply", |_| Err(sm_write_err(storage::Error::Engine(
                        "apply failed (failpoint raft-apply)".into()
                    ))));
                    responses.push(apply_entry(&engine, &*app, &entry).map_err(sm_write_err)?);
                }
                Ok(responses)
            })
            .await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<IoCursor<Vec<u8>>>, typ::StorageError> {
        Ok(Box::new(IoCursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &typ::SnapshotMeta,
        snapshot: Box<IoCursor<Vec<u8>>>,
    ) -> Result<(), typ::StorageError> {
        let engine = self.engine.clone();
        let app = self.app.clone();
        let data = snapshot.into_inner();
        self.io
            .run(JOIN_FAILED, move || {
                let batch = load(&engine, &data).map_err(sm_write_err)?;
                engine.write(batch, true).map_err(sm_write_err)?;
                app.reload(&engine).map_err(sm_read_err)
            })
            .await?;
        if let Ok(mut last) = self.last_snapshot.lock() {
            *last = Some(meta.clone());
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<typ::Snapshot>, typ::StorageError> {
        // Snapshots are not kept in memory: a fresh one is at least as recent as the last built.
        let built = self.last_snapshot.lock().ok().and_then(|last| last.clone());
        match built {
            None => Ok(None),
            Some(_) => {
                let sm = self.clone();
                blocking(JOIN_FAILED, move || sm.build(None).map(Some).map_err(sm_read_err)).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use openraft::CommittedLeaderId;

    use super::*;
    use crate::proto::cairnpb::RaftBatch;
    use crate::proto::etcdserverpb::{PutRequest, PutResponse};

    /// Writes each put's key to `meta` under `t/`, up to `run` requests a batch (one when
    /// zero), and counts the requests it applied.
    #[derive(Default)]
    struct Recorder {
        run: usize,
        applied: AtomicUsize,
        batches: AtomicUsize,
    }

    impl Application for Recorder {
        type Effects = ();
        fn apply(&self, engine: &Engine, reqs: &[RaftRequest]) -> storage::Result<Applied<()>> {
            let reqs = &reqs[..reqs.len().min(self.run.max(1))];
            self.applied.fetch_add(reqs.len(), Ordering::SeqCst);
            self.batches.fetch_add(1, Ordering::SeqCst);
            let mut batch = WriteBatch::new(engine);
            for req in reqs {
                if let Some(raft_request::Request::Put(p)) = &req.request {
                    batch.put(Cf::Meta, &[b"t/", p.key.as_slice()].concat(), &p.value);
                }
            }
            Ok(Applied {
                batch,
                responses: vec![RaftResponse::Put(PutResponse::default()); reqs.len()],
                effects: (),
            })
        }
        fn applied(&self, (): ()) {}
        fn reload(&self, _engine: &Engine) -> storage::Result<()> {
            Ok(())
        }
    }

    fn put(key: &str) -> RaftRequest {
        RaftRequest {
            request: Some(raft_request::Request::Put(PutRequest {
                key: key.into(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        }
    }

    fn batch_entry(index: u64, keys: &[&str]) -> typ::Entry {
        typ::Entry {
            log_id: typ::LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(RaftRequest {
                request: Some(raft_request::Request::Batch(RaftBatch {
                    requests: keys.iter().map(|k| put(k)).collect(),
                })),
            }),
        }
    }

    fn answers(resp: RaftResponse) -> Vec<Option<RaftResponse>> {
        match resp {
            RaftResponse::Batch(b) => b.responses.into_iter().map(|r| r.response).collect(),
            other => panic!("not a batch answer: {other:?}"),
        }
    }

    #[test]
    fn a_batch_applies_each_request_and_records_the_entry_once_all_are() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), None).unwrap();
        let app = Recorder::default();
        let resp = apply_entry(&engine, &app, &batch_entry(3, &["a", "b", "c"])).unwrap();
        assert_eq!(answers(resp).len(), 3);
        assert_eq!(app.applied.load(Ordering::SeqCst), 3);
        assert_eq!(app.batches.load(Ordering::SeqCst), 3);
        let (last, _) = applied_state_of(&engine).unwrap();
        assert_eq!(last.map(|id| id.index), Some(3));
        assert_eq!(engine.get(Cf::Meta, meta::APPLIED_PART).unwrap(), None);
        for key in ["t/a", "t/b", "t/c"] {
            assert!(engine.get(Cf::Meta, key.as_bytes()).unwrap().is_some(), "{key}");
        }
    }

    #[test]
    fn requests_written_together_share_one_batch_and_a_run_cut_short_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), None).unwrap();
        let app = Recorder {
            run: 2,
            ..Default::default()
        };
        let resp = apply_entry(&engine, &app, &batch_entry(4, &["a", "b", "c", "d", "e"])).unwrap();
        assert_eq!(answers(resp).len(), 5);
        assert_eq!(app.applied.load(Ordering::SeqCst), 5);
        assert_eq!(app.batches.load(Ordering::SeqCst), 3, "runs of 2, 2 and 1");
        assert_eq!(applied_state_of(&engine).unwrap().0.map(|id| id.index), Some(4));
        assert_eq!(engine.get(Cf::Meta, meta::APPLIED_PART).unwrap(), None);

        // A marker in the middle of a run: the run starts again from there.
        let entry = batch_entry(5, &["f", "g", "h", "i"]);
        let mut batch = WriteBatch::new(&engine);
        let part = cairnpb::AppliedPart {
            log_id: Some(log_id_to_pb(&entry.log_id)),
            done: 1,
        };
        batch.put(Cf::Meta, meta::APPLIED_PART, &part.encode_to_vec());
        engine.write(batch, false).unwrap();
        apply_entry(&engine, &app, &entry).unwrap();
        assert_eq!(app.applied.load(Ordering::SeqCst), 8, "g, h, i");
        assert!(engine.get(Cf::Meta, b"t/f").unwrap().is_none());
        assert!(engine.get(Cf::Meta, b"t/i").unwrap().is_some());
    }

    /// An application answering more requests than it was given is refused, not trusted.
    #[test]
    fn an_application_answering_nothing_or_too_much_stops_the_apply() {
        assert!(checked_answers(Vec::new(), 3).is_err());
        assert!(checked_answers(vec![RaftResponse::Empty(cairnpb::Blank {}); 2], 1).is_err());
        assert_eq!(
            checked_answers(vec![RaftResponse::Empty(cairnpb::Blank {})], 1)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn a_batch_cut_by_a_crash_resumes_after_its_applied_requests() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), None).unwrap();
        let entry = batch_entry(7, &["a", "b", "c"]);
        // What a crash after the second request's batch leaves: its marker, not the entry's.
        let mut batch = WriteBatch::new(&engine);
        let part = cairnpb::AppliedPart {
            log_id: Some(log_id_to_pb(&entry.log_id)),
            done: 2,
        };
        batch.put(Cf::Meta, meta::APPLIED_PART, &part.encode_to_vec());
        engine.write(batch, false).unwrap();
        assert_eq!(
            applied_state_of(&engine).unwrap().0,
            None,
            "the entry is not applied yet"
        );

        let app = Recorder::default();
        let resp = apply_entry(&engine, &app, &entry).unwrap();
        assert_eq!(
            app.applied.load(Ordering::SeqCst),
            1,
            "only the third request is applied again"
        );
        let answers = answers(resp);
        assert!(matches!(answers[2], Some(RaftResponse::Put(_))));
        assert!(engine.get(Cf::Meta, b"t/c").unwrap().is_some());
        assert!(engine.get(Cf::Meta, b"t/a").unwrap().is_none());
        assert_eq!(applied_state_of(&engine).unwrap().0.map(|id| id.index), Some(7));
        assert_eq!(engine.get(Cf::Meta, meta::APPLIED_PART).unwrap(), None);

        // A marker of another entry is stale: a later batch applies whole.
        let mut batch = WriteBatch::new(&engine);
        batch.put(Cf::Meta, meta::APPLIED_PART, &part.encode_to_vec());
        engine.write(batch, false).unwrap();
        apply_entry(&engine, &app, &batch_entry(8, &["d", "e"])).unwrap();
        assert_eq!(app.applied.load(Ordering::SeqCst), 3);
    }
}
