//! The leader's lease duties: follow leadership into the lessor, propose revocations of
//! expired leases, and checkpoint remaining TTLs. Everything it decides goes through the
//! log; the state machine never reads a clock.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{LeaseError, LeaseId, Lessor};
use crate::apply::{RaftResponse, Rejection};
use crate::error::ServerError;
use crate::proto::cairnpb::{raft_request, RaftRequest};
use crate::proto::etcdserverpb::{LeaseCheckpointRequest, LeaseRevokeRequest};
use crate::raft::Proposer;

/// Revocations proposed and not yet answered, at most. Expiring leases beyond it wait for
/// the next round, so a mass expiry cannot flood the log (etcd rate-limits the same way).
pub const MAX_REVOKES_IN_FLIGHT: usize = 64;

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

async fn revoke(proposer: Proposer, id: LeaseId) -> (LeaseId, Result<(), ServerError>) {
    let req = RaftRequest {
        request: Some(raft_request::Request::LeaseRevoke(LeaseRevokeRequest { id })),
    };
    let outcome = match proposer.propose(req).await {
        // Revoked meanwhile by a client: as good.
        Ok(RaftResponse::LeaseRevoke(_)) | Ok(RaftResponse::Rejected(Rejection::Lease(LeaseError::NotFound))) => Ok(()),
        Ok(other) => Err(ServerError::Internal(format!("unexpected revoke answer {other:?}"))),
        Err(e) => Err(e),
    };
    (id, outcome)
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
    let mut revokes: JoinSet<(LeaseId, Result<(), ServerError>)> = JoinSet::new();
    let mut checkpoints: JoinSet<()> = JoinSet::new();
    let mut next_checkpoint = config.checkpoint_interval.map(|every| Instant::now() + every);
    loop {
        let leader = is_leader(&proposer, config.member_id);
        if leader != lessor.is_primary() {
            if leader {
                lessor.promote(config.promotion_extension);
            } else {
                lessor.demote();
            }
        }
        let now = Instant::now();
        if leader {
            let room = MAX_REVOKES_IN_FLIGHT.saturating_sub(revokes.len());
            for id in lessor.take_expired(now.into_std(), room) {
                revokes.spawn(revoke(proposer.clone(), id));
            }
            if let (Some(at), Some(every)) = (next_checkpoint, config.checkpoint_interval) {
                if now >= at && checkpoints.is_empty() {
                    checkpoints.spawn(checkpoint(proposer.clone(), lessor.clone(), every));
                    next_checkpoint = Some(now + every);
                }
            }
        }
        // With every revocation slot taken, a finished one wakes the loop, not a deadline
        // that has already passed.
        let wake = lessor
            .next_deadline()
            .filter(|_| revokes.len() < MAX_REVOKES_IN_FLIGHT)
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
            Some(done) = revokes.join_next() => match done {
                Ok((_, Ok(()))) => {}
                Ok((id, Err(e))) => {
                    warn!(lease = %format!("{id:016x}"), error = %e, "failed to revoke expired lease; retrying");
                    lessor.revoke_failed(id);
                }
                Err(e) => warn!(error = %e, "lease revocation task failed"),
            },
            Some(_) = checkpoints.join_next() => {}
        }
    }
    revokes.abort_all();
    checkpoints.abort_all();
}
