//! Prefetch and background fetch of whole layers, and their progress.
//!
//! After a layer is mounted, [`BackgroundFetch::run`] walks every chunk it does not yet have in
//! the cache, fetching and verifying each: once done, the layer reads without the network. The
//! walk is paced to a byte rate and gives way to on-demand reads ([`Demand::wait_idle`]): a
//! chunk is fetched only after no read has waited on the network for a short quiet period.
//! [`LayerProgress`] counts what the prefetch and the walk did, for the stats report.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::demand::Demand;

/// One chunk of a walk: its stored (on-blob) size, and whether the cache has it already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkStep {
    pub bytes: u64,
    pub cached: bool,
}

/// Calls `step` for every chunk of a layer in blob order, before fetching it; `step` returns
/// `false` to stop the walk. Fetches what is not cached (verified, into the cache).
pub type Walk = dyn Fn(&mut dyn FnMut(WalkStep) -> bool) + Send + Sync;

/// The whole-layer fetch of one layer, to run once it is served.
#[derive(Clone)]
pub struct BackgroundFetch {
    walk: Arc<Walk>,
    /// Chunks in the layer.
    pub chunks: u64,
    /// Stored bytes of all its chunks.
    pub bytes: u64,
}

/// How a background fetch behaves.
#[derive(Clone, Copy, Debug)]
pub struct BackgroundOptions {
    /// Bytes per second it may fetch (0: no limit).
    pub rate: u64,
    /// How long no on-demand read must have waited on the network before a chunk is fetched.
    pub quiet: Duration,
}

impl Default for BackgroundOptions {
    fn default() -> Self {
        BackgroundOptions {
            rate: 20 << 20,
            // A starting workload reads every few milliseconds, with pauses of some hundreds
            // while it computes: the walk waits out those too.
            quiet: Duration::from_millis(500),
        }
    }
}

impl BackgroundFetch {
    /// A fetch of `chunks` chunks totalling `bytes`, walked by `walk`.
    pub fn new(chunks: u64, bytes: u64, walk: Arc<Walk>) -> Self {
        BackgroundFetch {
            walk,
            chunks,
            bytes,
        }
    }

    /// Walk the layer until done or `stop` is set, recording progress. Returns whether the walk
    /// finished.
    pub fn run(
        &self,
        opts: BackgroundOptions,
        demand: &Demand,
        stop: &AtomicBool,
        progress: &LayerProgress,
    ) -> bool {
        progress.set_state(BackgroundState::Running);
        let started = Instant::now();
        let mut fetched = 0u64;
        let mut finished = true;
        (self.walk)(&mut |step| {
            if stop.load(Ordering::Relaxed) {
                finished = false;
                return false;
            }
            if step.cached {
                progress.background_chunks.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            let waited = demand.wait_idle(opts.quiet);
            add_millis(&progress.background_yielded_ms, waited);
            if opts.rate > 0 {
                let due = Duration::from_secs_f64(fetched as f64 / opts.rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait.min(Duration::from_secs(1)));
                }
            }
            fetched += step.bytes;
            progress.background_chunks.fetch_add(1, Ordering::Relaxed);
            progress
                .background_bytes
                .fetch_add(step.bytes, Ordering::Relaxed);
            // `stop` is checked before the next fetch; the one now starting is bounded by the
            // fetch timeout.
            true
        });
        progress.set_state(if finished {
            BackgroundState::Done
        } else {
            BackgroundState::Stopped
        });
        finished
    }
}

fn add_millis(counter: &AtomicU64, d: Duration) {
    counter.fetch_add(
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

/// Where a layer's background fetch is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum BackgroundState {
    /// Not started (or switched off).
    Off = 0,
    Running = 1,
    Done = 2,
    /// Stopped before the end (unmounted).
    Stopped = 3,
}

impl BackgroundState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => BackgroundState::Running,
            2 => BackgroundState::Done,
            3 => BackgroundState::Stopped,
            _ => BackgroundState::Off,
        }
    }

    /// The name in the stats report.
    pub fn as_str(self) -> &'static str {
        match self {
            BackgroundState::Off => "off",
            BackgroundState::Running => "running",
            BackgroundState::Done => "done",
            BackgroundState::Stopped => "stopped",
        }
    }
}

/// What a layer's prefetch and background fetch have done so far.
#[derive(Debug, Default)]
pub struct LayerProgress {
    /// The layer's name (digest, file or URL).
    pub name: String,
    /// Blob bytes of the prefetch region, fetched in one request.
    pub prefetch_bytes: AtomicU64,
    /// Chunks of the prefetch region verified and cached.
    pub prefetch_chunks: AtomicU64,
    /// Chunks in the layer (0 until known).
    pub chunks: AtomicU64,
    /// Chunks the background walk has passed (cached before or fetched by it).
    pub background_chunks: AtomicU64,
    /// Stored bytes the background walk fetched.
    pub background_bytes: AtomicU64,
    /// Milliseconds the background walk waited for on-demand reads.
    pub background_yielded_ms: AtomicU64,
    state: AtomicU8,
}

impl LayerProgress {
    /// Progress of the layer `name`.
    pub fn new(name: impl Into<String>) -> Self {
        LayerProgress {
            name: name.into(),
            ..LayerProgress::default()
        }
    }

    /// Where the background fetch is.
    pub fn state(&self) -> BackgroundState {
        BackgroundState::from_u8(self.state.load(Ordering::Relaxed))
    }

    fn set_state(&self, state: BackgroundState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// The progress as JSON, for the stats report.
    pub fn to_json(&self) -> serde_json::Value {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "layer": self.name,
            "chunks": load(&self.chunks),
            "prefetch": {
                "chunks": load(&self.prefetch_chunks), "bytes": load(&self.prefetch_bytes),
            },
            "background": {
                "state": self.state().as_str(),
                "chunks": load(&self.background_chunks),
                "bytes": load(&self.background_bytes),
                "yieldedMs": load(&self.background_yielded_ms),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A walk over `n` chunks of 100 bytes, every other one cached, logging what it fetches.
    fn walk(n: u64, log: Arc<Mutex<Vec<u64>>>) -> BackgroundFetch {
        BackgroundFetch::new(
            n,
            n * 100,
            Arc::new(move |step: &mut dyn FnMut(WalkStep) -> bool| {
                for i in 0..n {
                    let cached = i % 2 == 1;
                    if !step(WalkStep { bytes: 100, cached }) {
                        return;
                    }
                    if !cached {
                        log.lock().unwrap().push(i);
                    }
                }
            }),
        )
    }

    #[test]
    fn counts_chunks_and_fetched_bytes() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let fetch = walk(6, Arc::clone(&log));
        let progress = LayerProgress::new("l");
        let opts = BackgroundOptions {
            rate: 0,
            quiet: Duration::ZERO,
        };
        assert!(fetch.run(opts, &Demand::default(), &AtomicBool::new(false), &progress));
        assert_eq!(*log.lock().unwrap(), [0, 2, 4]);
        let json = progress.to_json();
        assert_eq!(json["background"]["state"], "done");
        assert_eq!(json["background"]["chunks"], 6);
        assert_eq!(json["background"]["bytes"], 300);
    }

    #[test]
    fn stops_when_asked() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let progress = LayerProgress::new("l");
        let stop = AtomicBool::new(true);
        let opts = BackgroundOptions::default();
        assert!(!walk(6, Arc::clone(&log)).run(opts, &Demand::default(), &stop, &progress));
        assert!(log.lock().unwrap().is_empty());
        assert_eq!(progress.state(), BackgroundState::Stopped);
    }

    #[test]
    fn waits_while_a_read_waits_on_the_network() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let fetch = walk(2, Arc::clone(&log));
        let demand = Arc::new(Demand::default());
        let progress = Arc::new(LayerProgress::new("l"));
        let guard_demand = Arc::clone(&demand);
        let (entered, go) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let reader = std::thread::spawn(move || {
            let _waiting = guard_demand.enter();
            entered.0.send(()).unwrap();
            go.1.recv().unwrap();
        });
        entered.1.recv().unwrap();
        let (d, p, l) = (Arc::clone(&demand), Arc::clone(&progress), Arc::clone(&log));
        let runner = std::thread::spawn(move || {
            let opts = BackgroundOptions {
                rate: 0,
                quiet: Duration::from_millis(10),
            };
            fetch.run(opts, &d, &AtomicBool::new(false), &p)
        });
        // While the read waits, nothing is fetched.
        std::thread::sleep(Duration::from_millis(200));
        assert!(l.lock().unwrap().is_empty());
        go.0.send(()).unwrap();
        reader.join().unwrap();
        assert!(runner.join().unwrap());
        assert_eq!(*log.lock().unwrap(), [0]);
        assert!(progress.background_yielded_ms.load(Ordering::Relaxed) >= 150);
    }
}
