//! Conversion progress on the terminal: one bar (bytes, layer n of m) and a summary line per layer.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lazypull_converter::convert::{LayerReport, Progress};
use lazypull_converter::Digest;

/// A progress bar on stderr when it is a terminal; summaries are printed either way.
pub struct Bar {
    bar: ProgressBar,
    drawn: bool,
    finished: AtomicUsize,
}

impl Bar {
    /// A bar, drawn only if `enabled` and stderr is a terminal.
    pub fn new(enabled: bool) -> Self {
        let drawn = enabled && std::io::stderr().is_terminal();
        let target = if drawn {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(0), target);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}",
            )
            .expect("static template is valid"),
        );
        Bar {
            bar,
            drawn,
            finished: AtomicUsize::new(0),
        }
    }

    /// Remove the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
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
            self.bar.println(report.summary_line(index, total));
        } else {
            eprintln!("{}", report.summary_line(index, total));
        }
    }

    /// One bar per pushed blob (blobs are pushed one after the other).
    fn push_start(&self, digest: &Digest, size: u64) {
        self.bar.set_length(size);
        self.bar.set_position(0);
        self.bar.set_message(format!("push {}", digest.short()));
    }

    fn push_bytes(&self, _digest: &Digest, n: u64) {
        self.bar.inc(n);
    }
}
