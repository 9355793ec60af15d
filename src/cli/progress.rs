//! Progress bars for long admin commands: drawn on a terminal, silent in scripts.

use std::io::IsTerminal;

/// A progress bar on stderr, or nothing when stderr is not a terminal.
pub(super) struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    /// A bar labelled `what`; `bytes` formats amounts as bytes, else as counts.
    pub(super) fn new(what: &str, bytes: bool) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let bar = indicatif::ProgressBar::with_draw_target(Some(0), indicatif::ProgressDrawTarget::stderr());
        let template = if bytes {
            format!("{what} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} eta {{eta}}")
        } else {
            format!("{what} [{{bar:30}}] {{pos}}/{{len}} eta {{eta}}")
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
            bar.set_style(style.progress_chars("=> "));
        }
        Self(Some(bar))
    }

    /// Moves the bar (a total of 0 means unknown: only the count moves).
    pub(super) fn update(&self, done: u64, total: u64) {
        if let Some(b) = &self.0 {
            if total > 0 {
                b.set_length(total);
            }
            b.set_position(done);
        }
    }

    /// Removes the bar.
    pub(super) fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.finish();
    }
}
