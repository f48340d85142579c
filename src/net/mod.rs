//! Client connections below gRPC: accepting, socket options, and repairs of what real
//! clients send that the HTTP/2 stack would otherwise refuse.

pub mod authority;
