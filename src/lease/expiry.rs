//! The leader's lease duties: follow leadership into the lessor, propose revocations of
//! expired leases (batched: one entry revokes up to a thousand, each in its own revision),
//! and checkpoint remaining TTLs. Everything it decides goes through the
//! log; the state machine never reads a clock.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{LeaseId, Lessor};
use crate::proto::cairnpb::{raft_request, LeaseExpiry, RaftRequest};
use crate::proto::etcdserverpb::LeaseCheckpointRequest;
use crate::raft::{ProposeError, Proposer, RaftResponse};

/// Expired leases revoked by one log entry, at most (each still gets its own revision).
const EXPIRY_BATCH: usize = 1000;

/// Expiry entries proposed and not yet answered, at most: a mass expiry is a handful of
/// entries in flight, never a flood of them.
const MAX_EXPIRIES_IN_FLIGHT: usize = 4;

/// The longest the loop sleeps: how late leadership changes and checkpoints are noticed.
/// Expiries are not: the loop wakes at the next deadline.
const TICK: Duration = Duration::from_millis(100);

/// Checkpoints per log entry (etcd's `maxLeaseCheckpointBatchSize`).
const CHECKPOINT_BATCH: usize = 1000;

pub struct ExpiryConfig {
    pub member_id: u64,
    /// Added to every lease's remaining TTL when this member becomes leader.
    pub promotion_extension: Duration,
    /// `None`: remaining TTLs are not checkpointed.
    pub checkpoint_interval: Option<Duration>,
}

fn is_leader(proposer: &Proposer, member_id: u64) -> bool {
    let metrics = proposer.raft().metrics();
    let m = metrics.borrow();
    m.state == ServerState::Leader && m.current_leader == Some(member_id)
}

/// Promotes or demotes the lessor to match raft's leadership; whether this member leads.
pub fn follow_leadership(lessor: &Lessor, proposer: &Proposer, config: &ExpiryConfig) -> bool {
    let leader = is_leader(proposer, config.member_id);
    if leader != lessor.is_primary() {
        if leader {
            lessor.promote(config.promotion_extension);
        } else {
            lessor.demote();
        }
    }
    leader
}

async fn expire(proposer: Proposer, ids: Vec<LeaseId>) -> (Vec<LeaseId>, Result<(), ProposeError>) {
    let req = RaftRequest {
        request: Some(raft_request::Request::LeaseExpiry(LeaseExpiry { ids: ids.clone() })),
    };
    let outcome = match proposer.propose(req).await {
        Ok(RaftResponse::Empty(_)) => Ok(()),
        Ok(other) => Err(ProposeError::Internal(format!("unexpected expiry answer {other:?}"))),
        Err(e) => Err(e),
    };
    (ids, outcome)
}

/// Proposes every due checkpoint, a batch at a time.
async fn checkpoint(proposer: Proposer, lessor: Arc<Lessor>, interval: Duration) {
    loop {
        let due = lessor.take_checkpoints(std::time::Instant::now(), interval, CHECKPOINT_BATCH);
        if due.is_empty() {
            return;
        }
        let ids: Vec<LeaseId> = due.iter().map(|c| c.id).collect();
        let req = RaftRequest {
            request: Some(raft_request::Request::LeaseCheckpoint(LeaseCheckpointRequest {
                checkpoints: due,
            })),
        };
        let result = proposer.propose(req).await;
        lessor.checkpoints_done(ids);
        if let Err(e) = result {
            debug!(error = %e, "lease checkpoint not committed; retrying next interval");
            return;
        }
    }
}

/// Runs until `stop` turns true.
pub async fn run(
    lessor: Arc<Lessor>,
    proposer: Proposer,
    config: ExpiryConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut expiries: JoinSet<(Vec<LeaseId>, Result<(), ProposeError>)> = JoinSet::new();
    let mut checkpoints: JoinSet<()> = JoinSet::new();
    let mut next_checkpoint = config.checkpoint_interval.map(|every| Instant::now() + every);
    loop {
        let leader = follow_leadership(&lessor, &proposer, &config);
        let now = Instant::now();
        if leader {
            while expiries.len() < MAX_EXPIRIES_IN_FLIGHT {
                let expired = lessor.take_expired(now.into_std(), EXPIRY_BATCH);
                if expired.is_empty() {
                    break;
                }
                expiries.spawn(expire(proposer.clone(), expired));
            }
            if let (Some(at), Some(every)) = (next_checkpoint, config.checkpoint_interval) {
                if now >= at && checkpoints.is_empty() {
                    checkpoints.spawn(checkpoint(proposer.clone(), lessor.clone(), every));
                    next_checkpoint = Some(now + every);
                }
            }
        }
        // With every expiry slot taken, a finished one wakes the loop, not a deadline that
        // has already passed.
        let wake = lessor
            .next_deadline()
            .filter(|_| expiries.len() < MAX_EXPIRIES_IN_FLIGHT)
            .map(Instant::from_std)
            .filter(|at| *at < now + TICK)
            .unwrap_or(now + TICK);
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
            Some(done) = expiries.join_next() => match done {
                Ok((_, Ok(()))) => {}
                Ok((ids, Err(e))) => {
                    warn!(leases = ids.len(), error = %e, "failed to revoke expired leases; retrying");
                    for id in ids {
                        lessor.revoke_failed(id);
                    }
                }
                Err(e) => warn!(error = %e, "lease expiry task failed"),
            },
            Some(_) = checkpoints.join_next() => {}
        }
    }
    expiries.abort_all();
    checkpoints.abort_all();
}
