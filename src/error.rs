//! The one place errors become gRPC statuses, with etcd's codes and exact messages
//! (`api/v3rpc/rpctypes/error.go`): clients match on the message text.

use tonic::{Code, Status};

use crate::apply::Rejection;
use crate::lease::LeaseError;
use crate::mvcc::KvError;
use crate::raft::ProposeError;

/// Failures between the API and the applied state: consensus and limits.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Raft(#[from] ProposeError),
    #[error("{0}")]
    Internal(String),
}

impl ServerError {
    /// The member is stopping or stopped (fail-stop included).
    pub const STOPPED: ServerError = ServerError::Raft(ProposeError::Stopped);
}

impl From<crate::storage::Error> for ServerError {
    fn from(e: crate::storage::Error) -> Self {
        ServerError::Kv(KvError::Storage(e))
    }
}

fn status(code: Code, msg: &str) -> Status {
    Status::new(code, format!("etcdserver: {msg}"))
}

impl From<KvError> for Status {
    fn from(e: KvError) -> Status {
        let code = match &e {
            KvError::Compacted | KvError::FutureRev => Code::OutOfRange,
            KvError::LeaseNotFound => Code::NotFound,
            KvError::KeyNotFound
            | KvError::EmptyKey
            | KvError::ValueProvided
            | KvError::LeaseProvided
            | KvError::TooManyOps
            | KvError::DuplicateKey
            | KvError::InvalidSortOption => Code::InvalidArgument,
            KvError::Storage(_) => Code::Internal,
        };
        status(code, &e.to_string())
    }
}

impl From<LeaseError> for Status {
    fn from(e: LeaseError) -> Status {
        let code = match &e {
            LeaseError::NotFound => Code::NotFound,
            LeaseError::Exists => Code::FailedPrecondition,
            LeaseError::TtlTooLarge => Code::OutOfRange,
            LeaseError::Storage(_) => Code::Internal,
        };
        status(code, &e.to_string())
    }
}

impl From<Rejection> for ServerError {
    fn from(e: Rejection) -> Self {
        match e {
            Rejection::Kv(e) => ServerError::Kv(e),
            Rejection::Lease(e) => ServerError::Lease(e),
        }
    }
}

impl From<ProposeError> for Status {
    fn from(e: ProposeError) -> Status {
        ServerError::Raft(e).into()
    }
}

/// A rejection as apply answered it (its wire form).
impl From<crate::proto::cairnpb::Rejection> for ServerError {
    fn from(pb: crate::proto::cairnpb::Rejection) -> Self {
        match Rejection::from_pb(&pb) {
            Some(r) => r.into(),
            None => ServerError::Internal(format!("apply refused for an unknown reason {}", pb.reason)),
        }
    }
}

impl From<Rejection> for Status {
    fn from(e: Rejection) -> Status {
        ServerError::from(e).into()
    }
}

impl From<ServerError> for Status {
    fn from(e: ServerError) -> Status {
        match e {
            ServerError::Kv(e) => e.into(),
            ServerError::Lease(e) => e.into(),
            ServerError::Raft(e) => {
                let code = match &e {
                    ProposeError::RequestTooLarge => Code::InvalidArgument,
                    ProposeError::NoLeader | ProposeError::Timeout | ProposeError::Stopped => Code::Unavailable,
                    ProposeError::TooManyRequests => Code::ResourceExhausted,
                    ProposeError::Internal(_) => Code::Internal,
                };
                status(code, &e.to_string())
            }
            ServerError::Internal(msg) => status(Code::Internal, &msg),
        }
    }
}

/// An RPC whose service exists but whose issue has not landed.
pub fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!("cairn: {rpc} is not implemented yet"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message byte for byte as etcd sends it.
    #[test]
    fn etcd_messages() {
        let cases: Vec<(Status, Code, &str)> = vec![
            (
                KvError::Compacted.into(),
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                KvError::FutureRev.into(),
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                KvError::KeyNotFound.into(),
                Code::InvalidArgument,
                "etcdserver: key not found",
            ),
            (
                KvError::LeaseNotFound.into(),
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                KvError::EmptyKey.into(),
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                KvError::ValueProvided.into(),
                Code::InvalidArgument,
                "etcdserver: value is provided",
            ),
            (
                KvError::LeaseProvided.into(),
                Code::InvalidArgument,
                "etcdserver: lease is provided",
            ),
            (
                KvError::TooManyOps.into(),
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                KvError::DuplicateKey.into(),
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                KvError::InvalidSortOption.into(),
                Code::InvalidArgument,
                "etcdserver: invalid sort option",
            ),
            (
                ServerError::Raft(ProposeError::RequestTooLarge).into(),
                Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            (
                ServerError::Raft(ProposeError::NoLeader).into(),
                Code::Unavailable,
                "etcdserver: no leader",
            ),
            (
                LeaseError::NotFound.into(),
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                LeaseError::Exists.into(),
                Code::FailedPrecondition,
                "etcdserver: lease already exists",
            ),
            (
                LeaseError::TtlTooLarge.into(),
                Code::OutOfRange,
                "etcdserver: too large lease TTL",
            ),
            (
                ServerError::Raft(ProposeError::Timeout).into(),
                Code::Unavailable,
                "etcdserver: request timed out",
            ),
            (
                ServerError::Raft(ProposeError::Stopped).into(),
                Code::Unavailable,
                "etcdserver: server stopped",
            ),
            (
                ServerError::Raft(ProposeError::TooManyRequests).into(),
                Code::ResourceExhausted,
                "etcdserver: too many requests",
            ),
        ];
        for (status, code, msg) in cases {
            assert_eq!(status.code(), code, "{msg}");
            assert_eq!(status.message(), msg);
        }
    }
}
