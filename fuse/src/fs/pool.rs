//! The reader threads that answer FUSE requests which had to wait on the network.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads running jobs in arrival order. The threads end once the pool is
/// dropped and the queue is empty; nobody waits for them (a job in flight is bounded by the
/// fetch timeout and replies to the kernel itself).
pub(crate) struct Pool {
    queue: Mutex<Sender<Job>>,
}

impl Pool {
    /// Start `threads` threads named `name`. Threads that cannot be started are logged and
    /// done without; with none at all, every job runs on the caller's thread.
    pub(crate) fn new(threads: usize, name: &str) -> Self {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..threads {
            let rx = Arc::clone(&rx);
            let started = std::thread::Builder::new()
                .name(name.to_string())
                .spawn(move || work(&rx));
            if let Err(e) = started {
                tracing::warn!("cannot start a {name} thread: {e}");
                break;
            }
        }
        Pool {
            queue: Mutex::new(tx),
        }
    }

    /// Queue `job`; without threads, run it here instead.
    pub(crate) fn run(&self, job: impl FnOnce() + Send + 'static) {
        let queued = self
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(Box::new(job));
        if let Err(job) = queued {
            (job.0)();
        }
    }
}

fn work(rx: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is held only while waiting for the next job, never while running it.
        let next = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
        match next {
            Ok(job) => {
                // A panicking job loses its reply (the kernel answers EIO when the server goes)
                // but not the thread.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                    tracing::error!("a FUSE reader job panicked");
                }
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn jobs_run_concurrently_and_survive_panics() {
        let pool = Pool::new(4, "test-pool");
        let (tx, rx) = channel();
        pool.run(|| panic!("one job fails"));
        // Four jobs that each wait for all four to start: only possible if they run at once.
        let barrier = Arc::new(std::sync::Barrier::new(4));
        for i in 0..4 {
            let (tx, barrier) = (tx.clone(), Arc::clone(&barrier));
            pool.run(move || {
                barrier.wait();
                tx.send(i).unwrap();
            });
        }
        let mut got: Vec<i32> = (0..4)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        got.sort();
        assert_eq!(got, [0, 1, 2, 3]);
    }

    #[test]
    fn without_threads_jobs_run_inline() {
        let pool = Pool::new(0, "test-pool");
        let here = std::thread::current().id();
        let (tx, rx) = channel();
        pool.run(move || tx.send(std::thread::current().id()).unwrap());
        assert_eq!(rx.try_recv().unwrap(), here);
    }
}
