//! A progress bar on stderr for people (only when stderr is a terminal).

use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::context::ProgressSink;

/// Shows a spinner while walking (total unknown), then a bar while writing.
#[derive(Default)]
pub struct TerminalProgress {
    bar: Mutex<Option<(ProgressBar, bool)>>,
}

impl ProgressSink for TerminalProgress {
    fn update(&self, done: u64, total: Option<u64>) {
        let mut guard = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        let (bar, writing) = guard.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} scanning: {pos} entries found")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            (bar, false)
        });
        if let Some(total) = total {
            if !*writing {
                *writing = true;
                bar.set_length(total);
                bar.set_style(
                    ProgressStyle::with_template("writing: [{bar:40}] {pos}/{len} entries")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
            }
        }
        bar.set_position(done);
    }

    fn finish(&self) {
        let mut guard = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((bar, _)) = guard.take() {
            bar.finish_and_clear();
        }
    }
}
