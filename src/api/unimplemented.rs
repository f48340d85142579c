//! Services whose issues have not landed. Each answers every RPC `Unimplemented` with a
//! message naming the service, rather than tonic's bare "unknown service".

use std::convert::Infallible;
use std::task::{Context, Poll};

use tonic::server::NamedService;

macro_rules! unimplemented_service {
    ($name:ident, $grpc_name:literal) => {
        #[derive(Clone, Default)]
        pub struct $name;

        impl NamedService for $name {
            const NAME: &'static str = $grpc_name;
        }

        impl<B> tower_service::Service<http::Request<B>> for $name {
            type Response = http::Response<tonic::body::Body>;
            type Error = Infallible;
            type Future = std::future::Ready<Result<Self::Response, Infallible>>;

            fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, req: http::Request<B>) -> Self::Future {
                let rpc = req.uri().path().trim_start_matches('/').to_string();
                std::future::ready(Ok(crate::error::unimplemented(&rpc).into_http()))
            }
        }
    };
}

unimplemented_service!(AuthUnimplemented, "etcdserverpb.Auth");
unimplemented_service!(ElectionUnimplemented, "v3electionpb.Election");
unimplemented_service!(LockUnimplemented, "v3lockpb.Lock");
