//! Fail-stop: what a member does when it can no longer trust its own state.
//!
//! etcd treats a failed fsync, a storage error in apply or a panic as fatal: it logs the
//! cause at `fatal` level and exits, and its supervisor restarts it from what is on disk.
//! A member that keeps running after such an error is worse than a stopped one: its writes
//! fail forever while health checks and serializable reads go on answering.
//!
//! [`FailStop::trip`] does the same here. The first call logs the cause, turns the health
//! service to NOT_SERVING and closes the [`Gate`] (every other RPC answers
//! `etcdserver: server stopped`), then a thread of its own flushes what can be flushed (the
//! write-ahead log, the log output) and exits with status 1 after [`LINGER`]. That thread
//! needs nothing from the async runtime, so the exit comes within a second even when the
//! runtime or RocksDB is wedged.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::watch;

/// How long a tripped member stays up before exiting: long enough for health checkers and
/// open health watches to see NOT_SERVING, well inside etcd's "exit within a second".
pub const LINGER: Duration = Duration::from_millis(200);

/// The exit status of a fail-stop, as etcd's `lg.Fatal` (`os.Exit(1)`).
const EXIT_STATUS: i32 = 1;

type Flush = Box<dyn FnOnce() + Send>;

struct Inner {
    tripped: AtomicBool,
    /// The cause, once tripped: the server loop waits on it.
    cause: watch::Sender<Option<String>>,
    /// Run once before exiting (syncing the write-ahead log).
    flush: Mutex<Option<Flush>>,
    /// Exit the process after tripping; off in unit tests.
    exit: bool,
}

/// Shared by everything that can detect a fatal error.
#[derive(Clone)]
pub struct FailStop {
    inner: Arc<Inner>,
}

impl FailStop {
    /// A fail-stop that exits the process when tripped.
    pub fn new() -> Self {
        Self::with_exit(true)
    }

    fn with_exit(exit: bool) -> Self {
        FailStop {
            inner: Arc::new(Inner {
                tripped: AtomicBool::new(false),
                cause: watch::channel(None).0,
                flush: Mutex::new(None),
                exit,
            }),
        }
    }

    /// Sets what is flushed before the exit, for as long as the returned guard lives: what
    /// the flush holds (the storage engine) must not outlive an orderly shutdown, since the
    /// panic hook keeps this `FailStop` until the process ends.
    #[must_use = "the flush is dropped with the guard"]
    pub fn on_exit(&self, flush: impl FnOnce() + Send + 'static) -> FlushGuard {
        let mut slot = self.inner.flush.lock().unwrap_or_else(|p| p.into_inner());
        *slot = Some(Box::new(flush));
        FlushGuard(self.clone())
    }

    pub fn is_tripped(&self) -> bool {
        self.inner.tripped.load(Ordering::Acquire)
    }

    /// Stops the member for `cause`. Only the first call acts; it returns at once.
    pub fn trip(&self, cause: impl std::fmt::Display) {
        if self.inner.tripped.swap(true, Ordering::AcqRel) {
            return;
        }
        let cause = cause.to_string();
        tracing::error!(target: crate::logging::FATAL_TARGET, cause = %cause, "stopping the member on a fatal error");
        self.inner.cause.send_replace(Some(cause));
        if !self.inner.exit {
            return;
        }
        let flush = self.inner.flush.lock().unwrap_or_else(|p| p.into_inner()).take();
        let spawned = std::thread::Builder::new()
            .name("fail-stop".into())
            .spawn(move || exit_after(LINGER, flush));
        if spawned.is_err() {
            // No thread to linger on: exit from here, still flushing first.
            exit_after(Duration::ZERO, None);
        }
    }

    /// Resolves with the cause once tripped.
    pub async fn tripped(&self) -> String {
        let mut rx = self.inner.cause.subscribe();
        loop {
            if let Some(cause) = rx.borrow_and_update().clone() {
                return cause;
            }
            if rx.changed().await.is_err() {
                // The sender lives in `inner`, which `self` keeps alive.
                std::future::pending::<()>().await;
            }
        }
    }

    /// A tower layer answering every RPC but health checks with `server stopped` once tripped.
    pub fn gate(
        &self,
    ) -> impl tower_layer::Layer<tonic::service::Routes, Service = Gate<tonic::service::Routes>> + Clone {
        let failstop = self.clone();
        tower_layer::layer_fn(move |inner| Gate {
            inner,
            failstop: failstop.clone(),
        })
    }
}

/// See [`FailStop::on_exit`].
pub struct FlushGuard(FailStop);

impl Drop for FlushGuard {
    fn drop(&mut self) {
        drop(self.0.inner.flush.lock().unwrap_or_else(|p| p.into_inner()).take());
    }
}

impl Default for FailStop {
    fn default() -> Self {
        Self::new()
    }
}

/// The longest the flush may take: a wedged disk must not keep the member from exiting.
const FLUSH_BUDGET: Duration = Duration::from_millis(500);

fn exit_after(linger: Duration, flush: Option<Flush>) -> ! {
    let started = std::time::Instant::now();
    if let Some(flush) = flush {
        let (done, flushed) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("fail-stop-flush".into())
            .spawn(move || {
                flush();
                let _ = done.send(());
            });
        if spawned.is_ok() {
            let _ = flushed.recv_timeout(FLUSH_BUDGET);
        }
    }
    std::thread::sleep(linger.saturating_sub(started.elapsed()));
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // `_exit`, not `exit`: no atexit handlers or static destructors run, so RocksDB is not
    // torn down under threads still using it. Everything acknowledged is already synced.
    // SAFETY: `_exit` only ends the process; it touches no Rust state.
    unsafe { libc::_exit(EXIT_STATUS) }
}

/// The health service path: it keeps answering (NOT_SERVING) after a trip.
const HEALTH_PATH: &str = "/grpc.health.v1.Health/";

/// See [`FailStop::gate`].
#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    failstop: FailStop,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower_service::Service<http::Request<B>> for Gate<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if self.failstop.is_tripped() && !req.uri().path().starts_with(HEALTH_PATH) {
            let stopped: tonic::Status = crate::error::ServerError::STOPPED.into();
            return Box::pin(std::future::ready(Ok(stopped.into_http())));
        }
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_cause_wins_and_wakes_waiters() {
        let fs = FailStop::with_exit(false);
        let waiter = tokio::spawn({
            let fs = fs.clone();
            async move { fs.tripped().await }
        });
        assert!(!fs.is_tripped());
        fs.trip("disk on fire");
        fs.trip("a second cause");
        assert!(fs.is_tripped());
        assert_eq!(waiter.await.ok().as_deref(), Some("disk on fire"));
        assert_eq!(fs.tripped().await, "disk on fire");
    }

    #[test]
    fn the_flush_goes_with_its_guard() {
        let fs = FailStop::with_exit(false);
        let held = Arc::new(());
        let guard = fs.on_exit({
            let held = held.clone();
            move || drop(held)
        });
        assert_eq!(Arc::strong_count(&held), 2);
        drop(guard);
        assert_eq!(Arc::strong_count(&held), 1);
    }

    #[tokio::test]
    async fn gate_refuses_all_but_health_once_tripped() {
        use tower_layer::Layer;
        use tower_service::Service;

        #[derive(Clone)]
        struct Ok200;
        impl tower_service::Service<http::Request<()>> for Ok200 {
            type Response = http::Response<tonic::body::Body>;
            type Error = std::convert::Infallible;
            type Future = std::future::Ready<Result<Self::Response, Self::Error>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: http::Request<()>) -> Self::Future {
                std::future::ready(Ok(http::Response::new(tonic::body::Body::default())))
            }
        }

        let fs = FailStop::with_exit(false);
        let mut gate = tower_layer::layer_fn(|inner| Gate {
            inner,
            failstop: fs.clone(),
        })
        .layer(Ok200);
        let req = |path: &str| http::Request::builder().uri(path).body(()).unwrap_or_default();
        let grpc_status =
            |resp: &http::Response<tonic::body::Body>| resp.headers().get("grpc-status").map(|v| v.as_bytes().to_vec());
        let kv = gate.call(req("/etcdserverpb.KV/Range")).await;
        assert!(matches!(&kv, Ok(r) if grpc_status(r).is_none()));
        fs.trip("test");
        let kv = gate.call(req("/etcdserverpb.KV/Range")).await;
        // 14 = UNAVAILABLE, with etcd's message.
        assert!(matches!(&kv, Ok(r) if grpc_status(r).as_deref() == Some(b"14")));
        let health = gate.call(req("/grpc.health.v1.Health/Check")).await;
        assert!(matches!(&health, Ok(r) if grpc_status(r).is_none()));
    }
}
