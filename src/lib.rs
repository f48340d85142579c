//! Cairn: an etcd v3 wire-compatible server.
//!
//! # Layout
//! Data flows one way: request → `api` (validate, route) → `raft` (propose, or read barrier)
//! → `apply` (one match over the request) → `mvcc` (revisioned keys) → `storage` (RocksDB).
//! Responses go back to the proposer; reads go from `api` straight to `mvcc::view::StoreView`,
//! the read facade and the only way into the store for `api` and `watch` (ranges, read-only
//! txns, watch history, hashes, revisions, lease keys).
//!
//! - `config`: etcd's flags and `ETCD_*` variables; `logging`: etcd's JSON log lines.
//! - `server`: wiring and ordered shutdown.
//! - `error`: the only conversion to gRPC statuses.
//! - `cluster`: member records and etcd's member and cluster IDs.
//! - `lease`: leases: the stored records, this member's deadlines, the leader's expiry loop.
//! - `bench`: `cairn bench`, a load generator after etcd's `tools/benchmark` (a client only).

pub mod api;
pub mod apply;
pub mod bench;
pub mod cluster;
pub mod config;
pub mod error;
pub mod failstop;
pub mod lease;
pub mod logging;
pub mod mvcc;
pub mod net;
pub mod proto;
pub mod raft;
pub mod server;
pub mod storage;
pub mod watch;
