//! lease-keepalive: each client grants one lease, then renews it once per request, each
//! renewal on a stream of its own (clientv3's `KeepAliveOnce`, as etcd's benchmark calls it).

use std::sync::Arc;

use clap::Args;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::{closed_loop, status_text, BenchError, Ctx, Summary};
use crate::proto::etcdserverpb::lease_client::LeaseClient;
use crate::proto::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest};

/// The TTL etcd's benchmark grants its leases.
const LEASE_TTL: i64 = 100;

#[derive(Args, Debug, Clone)]
pub struct LeaseKeepaliveArgs {
    /// Total number of lease keepalive requests.
    #[arg(long, default_value_t = 10000)]
    pub total: u64,
}

pub async fn lease_keepalive(ctx: &Ctx, a: LeaseKeepaliveArgs) -> Result<Summary, BenchError> {
    let clients: Vec<LeaseClient<Channel>> = (0..ctx.clients()).map(|c| ctx.lease(c)).collect();
    let grants = futures::future::join_all(
        clients
            .iter()
            .cloned()
            .map(|mut l| async move { l.lease_grant(LeaseGrantRequest { ttl: LEASE_TTL, id: 0 }).await }),
    )
    .await;
    let mut leases = Vec::with_capacity(grants.len());
    for grant in grants {
        match grant {
            Ok(r) => leases.push(r.into_inner().id),
            Err(s) => {
                revoke_all(&clients, &leases).await;
                return Err(BenchError::Fatal(format!("lease grant failed: {}", status_text(&s))));
            }
        }
    }
    let shared = Arc::new(clients.iter().cloned().zip(leases.iter().copied()).collect::<Vec<_>>());

    let bar = ctx.progress(a.total);
    let run = closed_loop(
        ctx,
        a.total,
        None,
        1,
        &bar,
        |_| (),
        move |c, ()| {
            let (client, id) = shared[c].clone();
            async move { (0, keep_alive_once(client, id).await) }
        },
    )
    .await;
    bar.finish();
    revoke_all(&clients, &leases).await;
    let stats = super::kv::one(run.slots).stats(run.elapsed);
    Ok(Summary::single(stats.text(ctx.precision()), stats))
}

/// One renewal on a new LeaseKeepAlive stream: send, wait for the answer, close.
async fn keep_alive_once(mut client: LeaseClient<Channel>, id: i64) -> Result<(), String> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    // The request goes before the call: a server may hold its headers until it answers.
    tx.send(LeaseKeepAliveRequest { id })
        .await
        .map_err(|_| "keepalive request not sent".to_string())?;
    let mut stream = client
        .lease_keep_alive(ReceiverStream::new(rx))
        .await
        .map_err(|s| status_text(&s))?
        .into_inner();
    let answer = stream.message().await;
    drop(tx);
    match answer {
        Ok(Some(resp)) if resp.ttl <= 0 => Err("etcdserver: requested lease not found".into()),
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("rpc error: code = Canceled desc = keepalive stream closed without an answer".into()),
        Err(s) => Err(status_text(&s)),
    }
}

/// Leaves no benchmark lease behind (untimed; a failure only leaves it to expire).
async fn revoke_all(clients: &[LeaseClient<Channel>], leases: &[i64]) {
    futures::future::join_all(
        clients
            .iter()
            .cloned()
            .zip(leases.iter().copied())
            .map(|(mut l, id)| async move {
                let _ = l.lease_revoke(LeaseRevokeRequest { id }).await;
            }),
    )
    .await;
}
