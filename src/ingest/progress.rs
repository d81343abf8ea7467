//! Progress reporting for long ingests: a bar on a terminal, a plain log
//! line every few seconds otherwise (CI logs, `nohup`), nothing when quiet.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often the plain log line is written.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// Bar on a terminal, log lines otherwise.
    Auto,
    /// Nothing.
    Quiet,
}

/// Tracks files and bytes done.
pub struct Progress {
    bar: Option<ProgressBar>,
    log: bool,
    total: u64,
    files: u64,
    bytes: u64,
    start: Instant,
    last_log: Instant,
}

impl Progress {
    /// Starts tracking `total` files.
    pub fn new(total: u64, mode: ProgressMode) -> Self {
        let tty = mode == ProgressMode::Auto && std::io::stderr().is_terminal();
        let bar = tty.then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} samples, {per_sec} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        Self {
            bar,
            log: mode == ProgressMode::Auto && !tty,
            total,
            files: 0,
            bytes: 0,
            start: Instant::now(),
            last_log: Instant::now(),
        }
    }

    /// Records `files` more files of `bytes` total.
    pub fn advance(&mut self, files: u64, bytes: u64) {
        self.files += files;
        self.bytes += bytes;
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        let mbps = self.bytes as f64 / 1e6 / secs;
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{mbps:.1} MB/s"));
            bar.inc(files);
        } else if self.log && (self.last_log.elapsed() >= LOG_EVERY || self.files == self.total) {
            self.last_log = Instant::now();
            eprintln!(
                "ingest: {}/{} samples, {:.1} samples/s, {mbps:.1} MB/s",
                self.files,
                self.total,
                self.files as f64 / secs
            );
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    /// Seconds since start.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}
