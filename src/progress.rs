//! Conversion progress on the terminal: one bar for the conversion (bytes, layer n of m), one
//! bar per blob while it is pulled from or pushed to a registry, and a summary line per layer.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use lazypull_converter::convert::{LayerReport, Progress, Transfer};
use lazypull_converter::Digest;

/// Progress bars on stderr when it is a terminal; summaries are printed either way.
pub struct Bar {
    multi: MultiProgress,
    bar: ProgressBar,
    drawn: bool,
    finished: AtomicUsize,
    /// The bars of blobs being transferred.
    transfers: Mutex<HashMap<(bool, Digest), ProgressBar>>,
}

impl Bar {
    /// Bars, drawn only if `enabled` and stderr is a terminal.
    pub fn new(enabled: bool) -> Self {
        let drawn = enabled && std::io::stderr().is_terminal();
        let target = if drawn {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        let bar = multi.add(ProgressBar::new(0));
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}",
            )
            .expect("static template is valid"),
        );
        Bar {
            multi,
            bar,
            drawn,
            finished: AtomicUsize::new(0),
            transfers: Mutex::new(HashMap::new()),
        }
    }

    /// Remove the bars.
    pub fn finish(&self) {
        for (_, b) in self.lock().drain() {
            b.finish_and_clear();
        }
        self.bar.finish_and_clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(bool, Digest), ProgressBar>> {
        self.transfers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Progress for Bar {
    fn begin(&self, layers: usize, bytes: u64) {
        self.bar.set_length(bytes);
        self.bar.set_message(format!("layer 0 of {layers} done"));
    }

    fn bytes(&self, n: u64) {
        self.bar.inc(n);
    }

    fn layer_done(&self, index: usize, total: usize, report: &LayerReport) {
        let finished = self.finished.fetch_add(1, Ordering::Relaxed) + 1;
        self.bar
            .set_message(format!("{finished} of {total} layers done"));
        // A hidden bar swallows println, so summaries go straight to stderr then.
        if self.drawn {
            let _ = self.multi.println(report.summary_line(index, total));
        } else {
            eprintln!("{}", report.summary_line(index, total));
        }
    }

    fn transfer(&self, kind: Transfer, digest: &Digest, size: u64, done: u64) {
        if !self.drawn {
            return;
        }
        let key = (kind == Transfer::Push, *digest);
        let mut bars = self.lock();
        if done >= size {
            if let Some(b) = bars.remove(&key) {
                b.finish_and_clear();
            }
            return;
        }
        let bar = bars.entry(key).or_insert_with(|| {
            let b = self.multi.add(ProgressBar::new(size));
            b.set_style(
                ProgressStyle::with_template("  {prefix} {bar:30} {bytes}/{total_bytes}")
                    .expect("static template is valid"),
            );
            let verb = match kind {
                Transfer::Pull => "pull",
                Transfer::Push => "push",
            };
            b.set_prefix(format!("{verb} {}", digest.short()));
            b
        });
        bar.set_position(done);
    }
}
