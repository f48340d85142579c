//! Dedicated storage threads for the raft log and the state machine.
//!
//! Client reads (ranges, hashes, watch history) run on tokio's blocking pool. If raft's own
//! I/O shared that pool, a flood of large ranges could queue log appends and applies behind
//! them and stall every commit. Each [`IoThread`] is one OS thread running its jobs in
//! order; openraft awaits each log and state-machine call before the next, so its queue
//! stays a few jobs deep, and `IO_QUEUE` bounds it regardless.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use openraft::StorageIOError;
use tokio::sync::{mpsc, oneshot};

use super::typ;

/// Jobs waiting for one I/O thread, at most.
const IO_QUEUE: usize = 64;

type Job = Box<dyn FnOnce() + Send>;

/// One named thread running storage jobs in order. Clones share the thread; dropping the
/// last clone closes the queue and joins the thread, so it never outlives the storage it
/// works on.
#[derive(Clone)]
pub struct IoThread {
    inner: Arc<Inner>,
}

/// `Option`s only so that `drop` can close the queue before joining the thread.
struct Inner {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl IoThread {
    pub fn spawn(name: &str) -> std::io::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<Job>(IO_QUEUE);
        let thread = std::thread::Builder::new().name(name.to_string()).spawn(move || {
            while let Some(job) = rx.blocking_recv() {
                job();
            }
        })?;
        Ok(IoThread {
            inner: Arc::new(Inner {
                jobs: Some(tx),
                thread: Some(thread),
            }),
        })
    }

    /// Runs `f` on the thread and waits for it. A job that panics (or a thread that is
    /// gone) is reported as a storage error about `subject`, which openraft treats as fatal.
    pub async fn run<T: Send + 'static>(
        &self,
        subject: fn(&std::io::Error) -> StorageIOError<u64>,
        f: impl FnOnce() -> Result<T, typ::StorageError> + Send + 'static,
    ) -> Result<T, typ::StorageError> {
        let failed = |what: &str| typ::StorageError::from(subject(&std::io::Error::other(what.to_string())));
        let Some(jobs) = &self.inner.jobs else {
            return Err(failed("storage thread stopped"));
        };
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(std::panic::catch_unwind(AssertUnwindSafe(f)));
        });
        jobs.send(job).await.map_err(|_| failed("storage thread stopped"))?;
        match rx.await {
            Ok(Ok(result)) => result,
            Ok(Err(_panic)) => Err(failed("storage job panicked")),
            Err(_) => Err(failed("storage thread stopped")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    const SUBJECT: fn(&std::io::Error) -> StorageIOError<u64> = |e| StorageIOError::write_logs(e);

    #[tokio::test]
    async fn runs_jobs_in_order_and_reports_panics() {
        let io = IoThread::spawn("test-io").expect("spawn");
        let order = Arc::new(Mutex::new(Vec::new()));
        for i in 0..3 {
            let order = order.clone();
            let name = io
                .run(SUBJECT, move || {
                    order.lock().map(|mut o| o.push(i)).ok();
                    Ok(std::thread::current().name().map(str::to_string))
                })
                .await;
            assert_eq!(name.ok().flatten().as_deref(), Some("test-io"));
        }
        assert_eq!(*order.lock().expect("lock"), vec![0, 1, 2]);
        let panicked = io
            .run(SUBJECT, || -> Result<(), typ::StorageError> { panic!("boom") })
            .await;
        assert!(panicked.is_err());
        // The thread survives a panicking job.
        assert!(io.run(SUBJECT, || Ok(())).await.is_ok());
    }
}
