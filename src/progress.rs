//! Progress of a long command (`reindex`, `import`) on standard error: a bar redrawn in place
//! on a terminal, a plain line every few seconds otherwise (a log, a pipe), where redrawing
//! would leave a mess of carriage returns.

/// How often a plain progress line is written when standard error is not a terminal.
const LINE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

pub struct ProgressBar {
    what: &'static str,
    started: std::time::Instant,
    last_line: Option<std::time::Instant>,
    terminal: bool,
    drawn: bool,
}

impl ProgressBar {
    pub fn new(what: &'static str) -> ProgressBar {
        use std::io::IsTerminal;
        ProgressBar {
            what,
            started: std::time::Instant::now(),
            last_line: None,
            terminal: std::io::stderr().is_terminal(),
            drawn: false,
        }
    }

    pub fn show(&mut self, done: usize, total: usize) {
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / elapsed;
        let eta = if rate > 0.0 && total > done {
            format!("{:.0} s", (total - done) as f64 / rate)
        } else {
            "—".into()
        };
        let share = if total == 0 {
            1.0
        } else {
            (done as f64 / total as f64).min(1.0)
        };
        if self.terminal {
            let filled = ((share * 30.0).round() as usize).min(30);
            eprint!(
                "\r{} [{}{}] {done}/{total} ({:.0} %) {rate:.0}/s ETA {eta}   ",
                self.what,
                "#".repeat(filled),
                ".".repeat(30 - filled),
                share * 100.0
            );
            self.drawn = true;
        } else if self.last_line.is_none_or(|at| at.elapsed() >= LINE_EVERY) || done == total {
            eprintln!("{}: {done} of {total} ({rate:.0}/s, ETA {eta})", self.what);
            self.last_line = Some(std::time::Instant::now());
        }
    }

    /// Writes a line of its own on standard error (a warning, a failure) without mixing it
    /// into the bar, which the next `show` draws again below it.
    pub fn note(&mut self, line: &str) {
        if self.drawn {
            // Back to the line's start and clear it.
            eprint!("\r\x1b[2K");
            self.drawn = false;
        }
        eprintln!("{line}");
    }

    pub fn finish(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}
