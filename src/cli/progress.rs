//! How far an upload or a download has got, on stderr: an indicatif bar when stderr is a
//! terminal, one plain line per tenth when it is not but the artifact is large (so a log shows
//! a 90 MB text model moving), and nothing for a small artifact in a pipe. Never on stdout,
//! which holds the command's output (`--json` included).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

/// From this size on, a transfer reports its progress even when stderr is not a terminal.
pub const LARGE: u64 = 8 * 1024 * 1024;

/// One transfer's progress display; [`Transfer::update`] is the registry's progress callback.
pub struct Transfer {
    what: String,
    shown: Shown,
}

enum Shown {
    Bar(ProgressBar),
    /// Plain lines; the last tenth printed (0 before any).
    Lines(AtomicU64),
    Hidden,
}

impl Transfer {
    /// `what` names the transfer, e.g. "uploading embed".
    pub fn new(what: String, total: u64) -> Transfer {
        let shown = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:25}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_message(what.clone());
            Shown::Bar(bar)
        } else if total >= LARGE {
            Shown::Lines(AtomicU64::new(0))
        } else {
            Shown::Hidden
        };
        Transfer { what, shown }
    }

    /// `done` of `total` bytes have moved.
    pub fn update(&self, done: u64, total: u64) {
        match &self.shown {
            Shown::Bar(bar) => {
                bar.set_length(total);
                bar.set_position(done);
            }
            Shown::Lines(last) => {
                let tenth = (done.saturating_mul(10)) / total.max(1);
                if tenth > last.fetch_max(tenth, Ordering::Relaxed) {
                    eprintln!(
                        "{}: {}% ({} of {})",
                        self.what,
                        tenth * 10,
                        HumanBytes(done),
                        HumanBytes(total)
                    );
                }
            }
            Shown::Hidden => {}
        }
    }
}

/// Takes the bar off the terminal, whether the transfer finished or failed.
impl Drop for Transfer {
    fn drop(&mut self) {
        if let Shown::Bar(bar) = &self.shown {
            bar.finish_and_clear();
        }
    }
}
