//! How the API reaches consensus: proposals and linearizable-read barriers, both batched.
//!
//! openraft 0.9 appends one entry per `client_write` and awaits that entry's log flush
//! before the next, so one request per entry pays one fsync each, in series. Group commit
//! happens here instead: proposals that arrive while earlier ones are being written wait in
//! a queue, and the next entry carries all of them (`RaftRequest.batch`), so they share one
//! append and one fsync. The state machine applies a batch's requests in order, each as it
//! would apply an entry of its own, so every member gives them the same revisions.
//!
//! Linearizable reads share read-index rounds the same way, as etcd's
//! `linearizableReadLoop` does: every read waiting when a round starts is served by it.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use prost::Message;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::{typ, RaftResponse};
use crate::proto::cairnpb::{raft_request, RaftBatch, RaftRequest};

/// Why a proposal or a read barrier did not go through. `error.rs` gives these etcd's wire
/// form.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    #[error("request is too large")]
    RequestTooLarge,
    #[error("no leader")]
    NoLeader,
    #[error("request timed out")]
    Timeout,
    #[error("server stopped")]
    Stopped,
    #[error("too many requests")]
    TooManyRequests,
    #[error("{0}")]
    Internal(String),
}

/// The most proposals committed but not yet applied before new ones are refused: etcd's
/// `maxGapBetweenApplyAndCommitIndex`. openraft 0.9 does not publish its commit index, so the
/// gap is measured from the last appended index, which is at or past it. A batch entry
/// counts once, however many requests it carries.
const MAX_APPLY_GAP: u64 = 5000;

/// Bytes of proposals in flight (proposed, not yet answered) at most; a request counts at
/// least `MIN_PROPOSAL_COST`. Beyond it, proposers wait (up to their timeout) instead of
/// queueing without bound.
const MAX_INFLIGHT_BYTES: usize = 64 << 20;
const MIN_PROPOSAL_COST: usize = 1024;
/// The semaphore counts kibibytes.
const PERMIT_BYTES: usize = 1024;

/// Requests in one batch entry at most, and their encoded bytes (a single request larger
/// than that goes alone): entries stay a size a follower takes in one append, and a batch's
/// apply stays short.
const MAX_BATCH_REQUESTS: usize = 1024;
const MAX_BATCH_BYTES: usize = 4 << 20;

/// Batch entries being written and applied at once. Two let one batch's fsync overlap the
/// previous batch's apply; more would only split the waiting requests into smaller batches.
const MAX_BATCHES_IN_FLIGHT: usize = 2;

/// Proposals, and reads waiting for a read-index round, queued at most; beyond that,
/// callers wait for room (within their timeout).
const QUEUE: usize = 4096;

struct Proposal {
    req: RaftRequest,
    size: usize,
    reply: oneshot::Sender<Result<RaftResponse, ProposeError>>,
}

type ReadWaiter = oneshot::Sender<Result<(), ProposeError>>;

/// How the API reaches consensus. Clones share the batching tasks, which end when the last
/// clone is dropped.
#[derive(Clone)]
pub struct Proposer {
    raft: typ::Raft,
    request_timeout: Duration,
    max_request_bytes: usize,
    inflight: Arc<Semaphore>,
    proposals: mpsc::Sender<Proposal>,
    reads: mpsc::Sender<ReadWaiter>,
}

impl Proposer {
    /// Starts the batching tasks on the current tokio runtime.
    pub fn new(raft: typ::Raft, request_timeout: Duration, max_request_bytes: usize) -> Self {
        let (proposals, queue) = mpsc::channel(QUEUE);
        tokio::spawn(run_batches(raft.clone(), queue));
        let (reads, waiting) = mpsc::channel(QUEUE);
        tokio::spawn(run_read_rounds(raft.clone(), waiting));
        Proposer {
            raft,
            request_timeout,
            max_request_bytes,
            inflight: Arc::new(Semaphore::new(MAX_INFLIGHT_BYTES / PERMIT_BYTES)),
            proposals,
            reads,
        }
    }

    /// etcd's guard: refuse new work while apply is far behind the log.
    fn check_apply_gap(&self) -> Result<(), ProposeError> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let appended = m.last_log_index.unwrap_or(0);
        let applied = m.last_applied.map_or(0, |id| id.index);
        if appended.saturating_sub(applied) > MAX_APPLY_GAP {
            return Err(ProposeError::TooManyRequests);
        }
        Ok(())
    }

    /// Proposes a mutation and waits until it is applied; returns what applying it answered.
    pub async fn propose(&self, req: RaftRequest) -> Result<RaftResponse, ProposeError> {
        let size = req.encoded_len();
        if size > self.max_request_bytes {
            return Err(ProposeError::RequestTooLarge);
        }
        self.check_apply_gap()?;
        let cost = size.max(MIN_PROPOSAL_COST).div_ceil(PERMIT_BYTES);
        let cost = u32::try_from(cost).map_err(|_| ProposeError::RequestTooLarge)?;
        let proposed = async {
            let _permit = self
                .inflight
                .acquire_many(cost)
                .await
                .map_err(|_| ProposeError::Stopped)?;
            let (reply, answer) = oneshot::channel();
            self.proposals
                .send(Proposal { req, size, reply })
                .await
                .map_err(|_| ProposeError::Stopped)?;
            answer.await.map_err(|_| ProposeError::Stopped)?
        };
        tokio::time::timeout(self.request_timeout, proposed)
            .await
            .map_err(|_| ProposeError::Timeout)?
    }

    /// Returns once this member has applied everything committed before the call: a read
    /// after it is linearizable.
    pub async fn read_barrier(&self) -> Result<(), ProposeError> {
        let round = async {
            let (waiter, done) = oneshot::channel();
            self.reads.send(waiter).await.map_err(|_| ProposeError::Stopped)?;
            done.await.map_err(|_| ProposeError::Stopped)?
        };
        tokio::time::timeout(self.request_timeout, round)
            .await
            .map_err(|_| ProposeError::Timeout)?
    }

    pub fn raft(&self) -> &typ::Raft {
        &self.raft
    }
}

/// Takes the proposals waiting, up to the batch bounds, and writes them as one entry; up to
/// `MAX_BATCHES_IN_FLIGHT` entries at once. Ends when every `Proposer` is gone.
async fn run_batches(raft: typ::Raft, mut queue: mpsc::Receiver<Proposal>) {
    let slots = Arc::new(Semaphore::new(MAX_BATCHES_IN_FLIGHT));
    let mut carried: Option<Proposal> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(p) => p,
            None => match queue.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut bytes = first.size;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_REQUESTS {
            match queue.try_recv() {
                Ok(p) if bytes + p.size > MAX_BATCH_BYTES => {
                    carried = Some(p);
                    break;
                }
                Ok(p) => {
                    bytes += p.size;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        // A caller that gave up (timed out) is not proposed for.
        batch.retain(|p| !p.reply.is_closed());
        if !batch.is_empty() {
            tokio::spawn(write_batch(raft.clone(), batch, slot));
        }
    }
}

/// Writes one entry for `batch` (a lone request as itself) and answers each proposer.
async fn write_batch(raft: typ::Raft, mut batch: Vec<Proposal>, _slot: OwnedSemaphorePermit) {
    if batch.len() == 1 {
        if let Some(p) = batch.pop() {
            let result = raft.client_write(p.req).await.map(|r| r.data).map_err(write_error);
            let _ = p.reply.send(result);
        }
        return;
    }
    let (requests, replies): (Vec<RaftRequest>, Vec<_>) = batch.into_iter().map(|p| (p.req, p.reply)).unzip();
    let entry = RaftRequest {
        request: Some(raft_request::Request::Batch(RaftBatch { requests })),
    };
    match raft.client_write(entry).await.map(|r| r.data) {
        Ok(RaftResponse::Batch(answers)) if answers.responses.len() == replies.len() => {
            for (reply, answer) in replies.into_iter().zip(answers.responses) {
                let answer = answer
                    .response
                    .ok_or_else(|| ProposeError::Internal("a batched request was answered with nothing".into()));
                let _ = reply.send(answer);
            }
        }
        other => {
            let e = match other {
                Err(e) => write_error(e),
                Ok(unexpected) => ProposeError::Internal(format!("a batch was answered with {unexpected:?}")),
            };
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

fn write_error(e: RaftError<u64, ClientWriteError<u64, crate::cluster::MemberNode>>) -> ProposeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => ProposeError::NoLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => ProposeError::Internal(e.to_string()),
        RaftError::Fatal(_) => ProposeError::Stopped,
    }
}

/// etcd's `linearizableReadLoop`: one read-index round serves every read that was waiting
/// when it started (a read arriving during a round waits for the next, whose read index is
/// then taken after it arrived). Ends when every `Proposer` is gone.
async fn run_read_rounds(raft: typ::Raft, mut waiting: mpsc::Receiver<ReadWaiter>) {
    let mut round = Vec::new();
    while waiting.recv_many(&mut round, QUEUE).await > 0 {
        round.retain(|w: &ReadWaiter| !w.is_closed());
        if round.is_empty() {
            continue;
        }
        let result = match raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(_)) => Err(ProposeError::NoLeader),
            Err(RaftError::Fatal(_)) => Err(ProposeError::Stopped),
        };
        for waiter in round.drain(..) {
            let _ = waiter.send(result.clone());
        }
    }
}
