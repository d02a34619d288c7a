//! On-demand work: which requests a FUSE thread answers itself, and how background work gives
//! way to the reads a workload is waiting for.
//!
//! A FUSE thread first tries a request with the network forbidden ([`local_only`]): whatever is
//! in the chunk cache or in a local blob is answered at once. If the request needs the network,
//! the chunk cache and [`crate::fetch::HttpBlob`] refuse with [`would_block`] instead of fetching,
//! and the request is handed to a pool of reader threads that answer it when the fetch is done.
//! A slow fetch then never holds a FUSE thread, so metadata and cached data keep flowing.
//!
//! [`Demand`] counts the requests waiting on the network; the background fetch waits while any
//! are ([`Demand::wait_idle`]), so it never competes with a read someone is waiting for.

use std::cell::Cell;
use std::io;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lazypull_converter::Error;

thread_local! {
    static LOCAL_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// Run `f` with the network forbidden on this thread: remote reads fail with [`would_block`].
pub fn local_only<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            LOCAL_ONLY.with(|l| l.set(self.0));
        }
    }
    let _restore = Restore(LOCAL_ONLY.with(|l| l.replace(true)));
    f()
}

/// Whether this thread may use the network (it may, unless inside [`local_only`]).
pub fn network_allowed() -> bool {
    !LOCAL_ONLY.with(Cell::get)
}

/// The error of a read that needs the network inside [`local_only`]; `what` names the read.
pub fn would_block(what: impl std::fmt::Display) -> Error {
    Error::io(
        what,
        io::Error::new(io::ErrorKind::WouldBlock, "needs the network"),
    )
}

/// Whether `err` is (or wraps) a [`would_block`] error.
pub fn is_would_block(err: &Error) -> bool {
    matches!(err.root(), Error::Io { source, .. } if source.kind() == io::ErrorKind::WouldBlock)
}

/// How many requests are waiting on the network, and since when nothing has been.
#[derive(Debug)]
pub struct Demand {
    state: Mutex<DemandState>,
    idle: Condvar,
}

#[derive(Debug)]
struct DemandState {
    waiting: u64,
    /// When the last request stopped waiting; at first, when the mount started (a workload
    /// is about to start reading: the quiet period applies from then).
    last_done: Instant,
    served: u64,
}

impl Default for Demand {
    fn default() -> Self {
        Demand {
            state: Mutex::new(DemandState {
                waiting: 0,
                last_done: Instant::now(),
                served: 0,
            }),
            idle: Condvar::new(),
        }
    }
}

/// Held while a request waits on the network; dropping it ends the wait.
#[must_use]
pub struct DemandGuard<'a>(&'a Demand);

impl Demand {
    fn state(&self) -> std::sync::MutexGuard<'_, DemandState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request starts waiting on the network.
    pub fn enter(&self) -> DemandGuard<'_> {
        self.state().waiting += 1;
        DemandGuard(self)
    }

    /// Requests waiting on the network now.
    pub fn waiting(&self) -> u64 {
        self.state().waiting
    }

    /// Requests that have waited on the network so far.
    pub fn served(&self) -> u64 {
        self.state().served
    }

    /// Block until no request has waited on the network for `quiet` (a workload's reads come in
    /// bursts: yielding only while one is in flight would slip background requests between
    /// them). Returns how long it waited.
    pub fn wait_idle(&self, quiet: Duration) -> Duration {
        let start = Instant::now();
        let mut state = self.state();
        loop {
            if state.waiting > 0 {
                state = self
                    .idle
                    .wait_timeout(state, quiet)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                continue;
            }
            let since = state.last_done.elapsed();
            match quiet.checked_sub(since) {
                Some(rest) if !rest.is_zero() => {
                    state = self
                        .idle
                        .wait_timeout(state, rest)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                _ => return start.elapsed(),
            }
        }
    }
}

impl Drop for DemandGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.waiting -= 1;
        state.served += 1;
        state.last_done = Instant::now();
        drop(state);
        self.0.idle.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn local_only_is_scoped_and_nests() {
        assert!(network_allowed());
        local_only(|| {
            assert!(!network_allowed());
            local_only(|| assert!(!network_allowed()));
            assert!(!network_allowed());
        });
        assert!(network_allowed());
        // Also restored when `f` panics.
        let _ = std::panic::catch_unwind(|| local_only(|| panic!("boom")));
        assert!(network_allowed());
    }

    #[test]
    fn would_block_is_recognised_through_context() {
        let e = would_block("chunk 3")
            .context("layer x")
            .context("reading y");
        assert!(is_would_block(&e));
        assert!(!is_would_block(&Error::io(
            "z",
            io::Error::from(io::ErrorKind::TimedOut)
        )));
    }

    #[test]
    fn wait_idle_waits_for_requests_and_the_quiet_period() {
        let demand = Arc::new(Demand::default());
        // Nothing ever waited: the quiet period counts from the start.
        assert!(demand.wait_idle(Duration::from_millis(100)) >= Duration::from_millis(50));
        assert!(demand.wait_idle(Duration::from_millis(100)) < Duration::from_millis(100));
        let d = Arc::clone(&demand);
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let _g = d.enter();
            tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(150));
        });
        rx.recv().unwrap();
        assert_eq!(demand.waiting(), 1);
        let waited = demand.wait_idle(Duration::from_millis(50));
        reader.join().unwrap();
        // The request held it ~150 ms, then the quiet period of 50 ms followed.
        assert!(waited >= Duration::from_millis(150), "{waited:?}");
        assert_eq!((demand.waiting(), demand.served()), (0, 1));
    }
}
