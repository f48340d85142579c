//! Wiring: open storage, start raft, serve the client API, stop in order. Handles no
//! requests itself.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InitializeError, RaftError};
use openraft::SnapshotPolicy;
use prost::Message;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::{info, warn};

use crate::api::cluster::ClusterService;
use crate::api::kv::KvService;
use crate::api::lease::LeaseService;
use crate::api::maintenance::MaintenanceService;
use crate::api::unimplemented::{AuthUnimplemented, ElectionUnimplemented, LockUnimplemented};
use crate::api::watch::WatchService;
use crate::api::Header;
use crate::apply::Applier;
use crate::cluster::{cluster_id, member_id, MemberNode};
use crate::config::{ClusterState, Config, CLUSTER_VERSION, ETCD_VERSION};
use crate::failstop::FailStop;
use crate::lease::expiry::{self, ExpiryConfig};
use crate::lease::{self, Lessor};
use crate::mvcc::compaction::Compactor;
use crate::mvcc::store::Revisions;
use crate::mvcc::view::StoreView;
use crate::net::authority::AuthorityFix;
use crate::proto::cairnpb::NodeIdentity;
use crate::proto::etcdserverpb::cluster_server::ClusterServer;
use crate::proto::etcdserverpb::kv_server::KvServer;
use crate::proto::etcdserverpb::lease_server::LeaseServer;
use crate::proto::etcdserverpb::maintenance_server::MaintenanceServer;
use crate::proto::etcdserverpb::watch_server::WatchServer;
use crate::raft::log_store::LogStore;
use crate::raft::network::PeerNetwork;
use crate::raft::state_machine::StateMachine;
use crate::raft::{typ, Proposer};
use crate::storage::schema::raft_meta;
use crate::storage::{Cf, Engine, ReadView, WriteBatch};
use crate::watch::Hub;

/// gRPC framing and field overhead allowed on top of `--max-request-bytes`, as etcd allows.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("cannot open storage: {0}")]
    Storage(#[from] crate::storage::Error),
    #[error("raft: {0}")]
    Raft(String),
    #[error("cannot listen on {url}: {source}")]
    Listen { url: String, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
    #[error("client server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// The member's identity: fixed at bootstrap and read back on every later start, as etcd
/// keeps its cluster and member IDs across restarts whatever the flags say.
fn identity(engine: &Engine, config: &Config) -> Result<NodeIdentity, StartError> {
    if let Some(raw) = engine.get(Cf::RaftMeta, raft_meta::IDENTITY)? {
        return NodeIdentity::decode(raw.as_slice())
            .map_err(|e| crate::storage::Error::corrupt(Cf::RaftMeta, e.to_string()).into());
    }
    if config.initial_cluster_state == ClusterState::Existing {
        return Err(StartError::Invalid(
            "--initial-cluster-state=existing: joining an existing cluster is not supported yet".to_string(),
        ));
    }
    let ids: Vec<u64> = config
        .initial_cluster
        .iter()
        .map(|(_, urls)| member_id(urls, &config.initial_cluster_token))
        .collect();
    let own = member_id(&config.initial_advertise_peer_urls, &config.initial_cluster_token);
    let ident = NodeIdentity {
        cluster_id: cluster_id(&ids),
        member_id: own,
    };
    let mut batch = WriteBatch::new(engine);
    batch.put(Cf::RaftMeta, raft_meta::IDENTITY, &ident.encode_to_vec());
    engine.write(batch, true)?;
    Ok(ident)
}

async fn bind(url: &url::Url) -> Result<TcpListener, StartError> {
    let listen_err = |source| StartError::Listen {
        url: url.to_string(),
        source,
    };
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(listen_err(std::io::Error::other(
            "only http:// listen URLs are supported yet",
        )));
    }
    let host = url
        .host_str()
        .unwrap_or("localhost")
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = url.port_or_known_default().unwrap_or(80);
    TcpListener::bind((host, port)).await.map_err(listen_err)
}

/// Accepted connections with Nagle's algorithm off (a response split over two segments
/// would otherwise wait for the client's delayed ACK, ~40 ms) and with the `:authority`
/// repair that old Go clients need (see `net::authority`).
fn accept_clients(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<AuthorityFix<tokio::net::TcpStream>>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|conn| {
        conn.map(|stream| {
            if let Err(e) = stream.set_nodelay(true) {
                warn!(error = %e, "cannot disable Nagle's algorithm on a client connection");
            }
            AuthorityFix::new(stream)
        })
    })
}

/// Trips `failstop` when raft's core stops on its own: a fatal storage error or a panic
/// inside openraft (its metrics carry the error, or end with the core's task). A stop that
/// `stopping` announced first is the orderly shutdown, not a fault.
fn watch_raft(raft: &typ::Raft, failstop: FailStop, stopping: tokio::sync::watch::Receiver<bool>) {
    let mut metrics = raft.metrics();
    tokio::spawn(async move {
        loop {
            let fatal = metrics.borrow_and_update().running_state.clone().err();
            if let Some(fatal) = fatal {
                if !*stopping.borrow() {
                    failstop.trip(format!("raft stopped: {fatal}"));
                }
                return;
            }
            if metrics.changed().await.is_err() {
                if !*stopping.borrow() {
                    failstop.trip("raft core task ended");
                }
                return;
            }
        }
    });
}

/// Runs one member until `shutdown` resolves, or until `failstop` trips: then it reports
/// NOT_SERVING and refuses requests until `failstop` ends the process.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    failstop: FailStop,
) -> Result<(), StartError> {
    info!(
        "etcd-version" = ETCD_VERSION,
        "cairn-version" = env!("CARGO_PKG_VERSION"),
        "data-dir" = %config.data_dir.display(),
        name = %config.name,
        "starting an etcd server"
    );
    let db_dir = config.data_dir.join("member").join("db");
    std::fs::create_dir_all(&db_dir).map_err(|source| StartError::DataDir {
        path: db_dir.display().to_string(),
        source,
    })?;
    if let Some(wal) = &config.wal_dir {
        std::fs::create_dir_all(wal).map_err(|source| StartError::DataDir {
            path: wal.display().to_string(),
            source,
        })?;
    }
    let engine = Engine::open(&db_dir, config.wal_dir.as_deref())?;
    // Cleared when `run` returns, so the engine is closed by an orderly shutdown.
    let _flush_on_fatal = failstop.on_exit({
        let engine = engine.clone();
        move || {
            if let Err(e) = engine.sync_wal() {
                tracing::error!(error = %e, "cannot sync the write-ahead log before exiting");
            }
        }
    });
    let ident = identity(&engine, &config)?;
    let hub = Hub::new(Revisions::read(&engine)?.current);
    // Before raft starts: entries it re-applies at start-up update the lessor from here.
    let lessor = Arc::new(Lessor::new());
    lessor.recover(lease::store::all(&engine)?);
    // Started before raft: it finishes a compaction a restart interrupted, and entries
    // re-applied at start-up may schedule more.
    let compactor = Compactor::start(engine.clone(), {
        let failstop = failstop.clone();
        move |cause| failstop.trip(cause)
    })
    .map_err(|e| StartError::Raft(format!("compactor: {e}")))?;

    let raft_config = openraft::Config {
        cluster_name: config.initial_cluster_token.clone(),
        heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
        election_timeout_min: config.election_timeout.as_millis() as u64,
        election_timeout_max: 2 * config.election_timeout.as_millis() as u64,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_count),
        // etcd keeps this many entries behind a snapshot for slow followers.
        max_in_snapshot_log_to_keep: 5000,
        ..Default::default()
    }
    .validate()
    .map_err(|e| StartError::Raft(e.to_string()))?;
    let raft = typ::Raft::new(
        ident.member_id,
        Arc::new(raft_config),
        PeerNetwork,
        LogStore::new(engine.clone()).map_err(|e| StartError::Raft(format!("raft log: {e}")))?,
        StateMachine::new(
            engine.clone(),
            Arc::new(Applier::new(hub.clone(), lessor.clone(), compactor.clone())),
        )
        .map_err(|e| StartError::Raft(format!("state machine: {e}")))?,
    )
    .await
    .map_err(|e| StartError::Raft(e.to_string()))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    watch_raft(&raft, failstop.clone(), stop_rx.clone());

    let this_member = MemberNode {
        name: config.name.clone(),
        peer_urls: config.initial_advertise_peer_urls.clone(),
        client_urls: config.advertise_client_urls.clone(),
    };
    match raft.initialize(BTreeMap::from([(ident.member_id, this_member)])).await {
        Ok(()) => info!(
            "cluster-id" = %format!("{:x}", ident.cluster_id),
            "local-member-id" = %format!("{:x}", ident.member_id),
            "bootstrapped a new single-member cluster"
        ),
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => info!(
            "cluster-id" = %format!("{:x}", ident.cluster_id),
            "local-member-id" = %format!("{:x}", ident.member_id),
            "restarting member from existing data"
        ),
        Err(e) => return Err(StartError::Raft(e.to_string())),
    }
    // A single voter elects itself within one election timeout.
    raft.wait(Some(config.election_timeout * 10))
        .current_leader(ident.member_id, "elect this member")
        .await
        .map_err(|e| StartError::Raft(format!("no leader elected: {e}")))?;

    let request_timeout = Duration::from_secs(5) + 2 * config.election_timeout;
    let proposer = Proposer::new(raft.clone(), request_timeout, config.max_request_bytes);
    // Wait until everything committed before the restart is applied, so the first reads are
    // current.
    proposer
        .read_barrier()
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
    let expiry_config = ExpiryConfig {
        member_id: ident.member_id,
        promotion_extension: config.election_timeout,
        checkpoint_interval: config.lease_checkpoint_interval,
    };
    // Leases get their deadlines before the first keep-alive can arrive; the expiry loop
    // follows later leadership changes.
    expiry::follow_leadership(&lessor, &proposer, &expiry_config);
    info!("cluster-version" = CLUSTER_VERSION, "enabled capabilities for version");
    info!(
        "local-member-id" = %format!("{:x}", ident.member_id),
        "cluster-id" = %format!("{:x}", ident.cluster_id),
        "local-member-attributes" = %format!("{{Name:{} ClientURLs:[{}]}}", config.name, config.advertise_client_urls.join(" ")),
        "published local member to cluster through raft"
    );

    let store_view = StoreView::new(engine.clone());
    let header = Header::new(ident.cluster_id, ident.member_id, raft.clone(), store_view.clone());
    let max_decode = config.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let kv = KvServer::new(KvService::new(
        proposer.clone(),
        store_view.clone(),
        header.clone(),
        config.max_txn_ops,
        compactor.clone(),
    ))
    .max_decoding_message_size(max_decode)
    .max_encoding_message_size(usize::MAX);
    let maintenance = MaintenanceServer::new(MaintenanceService::new(
        proposer.clone(),
        store_view.clone(),
        header.clone(),
    ))
    .max_decoding_message_size(max_decode)
    .max_encoding_message_size(usize::MAX);
    let cluster =
        ClusterServer::new(ClusterService::new(proposer.clone(), header.clone())).max_decoding_message_size(max_decode);
    let watch = WatchServer::new(WatchService::new(
        store_view.clone(),
        hub.clone(),
        header.clone(),
        config.watch_progress_notify_interval,
        // etcd fragments watch responses above its gRPC receive limit, not the request limit.
        config.max_request_bytes + GRPC_OVERHEAD_BYTES,
    ))
    .max_decoding_message_size(max_decode)
    .max_encoding_message_size(usize::MAX);
    let lease = LeaseServer::new(LeaseService::new(
        proposer.clone(),
        store_view.clone(),
        header.clone(),
        lessor.clone(),
        lease::min_ttl(config.election_timeout),
        request_timeout,
    ))
    .max_decoding_message_size(max_decode);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;

    // The peer port is held so another process cannot take it; a single member has no
    // peer traffic to serve on it yet.
    let mut peer_listeners = Vec::new();
    for url in &config.listen_peer_urls {
        peer_listeners.push(bind(url).await?);
        info!("listen-peer-url" = %url, "listening for peers");
    }
    if config.peer_auto_tls {
        warn!("--peer-auto-tls accepted: a single member sends no peer traffic, so no peer certificate is generated");
    }

    let mut client_listeners: Vec<(SocketAddr, TcpListener)> = Vec::new();
    for url in &config.listen_client_urls {
        let listener = bind(url).await?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen {
            url: url.to_string(),
            source,
        })?;
        client_listeners.push((addr, listener));
    }

    let lease_expiry = tokio::spawn(expiry::run(
        lessor.clone(),
        proposer.clone(),
        expiry_config,
        stop_rx.clone(),
    ));
    let mut servers = tokio::task::JoinSet::new();
    for (addr, listener) in client_listeners {
        let router = tonic::transport::Server::builder()
            .max_concurrent_streams(config.max_concurrent_streams)
            .layer(failstop.gate())
            .add_service(kv.clone())
            .add_service(maintenance.clone())
            .add_service(cluster.clone())
            .add_service(health.clone())
            .add_service(watch.clone())
            .add_service(lease.clone())
            .add_service(AuthUnimplemented)
            .add_service(ElectionUnimplemented)
            .add_service(LockUnimplemented);
        let mut stop = stop_rx.clone();
        servers.spawn(async move {
            router
                .serve_with_incoming_shutdown(accept_clients(listener), async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        });
        info!(address = %addr, "serving client traffic insecurely; this is strongly discouraged!");
    }
    info!("ready to serve client requests");

    tokio::select! {
        () = shutdown => info!("received shutdown signal, stopping"),
        _cause = failstop.tripped() => {
            // The gate already refuses every other RPC; `failstop` exits the process.
            health_reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            std::future::pending::<()>().await;
        }
        Some(result) = servers.join_next() => {
            if let Ok(Err(e)) = result {
                let _ = stop_tx.send(true);
                let _ = lease_expiry.await;
                let _ = raft.shutdown().await;
                return Err(e.into());
            }
        }
    }
    let _ = stop_tx.send(true);
    while servers.join_next().await.is_some() {}
    let _ = lease_expiry.await;
    drop(peer_listeners);
    if let Err(e) = raft.shutdown().await {
        warn!(error = %e, "raft shutdown");
    }
    info!("stopped serving");
    Ok(())
}
