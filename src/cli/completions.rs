//! `coffer completions <shell>`: a shell completion script on standard output.

use std::io::Write;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::Cli;

/// `coffer completions`.
#[derive(Debug, Args)]
pub struct CompletionsCmd {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

impl CompletionsCmd {
    /// Writes the script; needs no configuration, passphrase or data directory.
    pub(super) fn run(self) -> anyhow::Result<()> {
        let mut script = Vec::new();
        clap_complete::generate(self.shell, &mut Cli::command(), "coffer", &mut script);
        let mut out = std::io::stdout().lock();
        match out.write_all(&script).and_then(|()| out.flush()) {
            // A reader that stopped early (`| head`) wanted no more.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            result => Ok(result?),
        }
    }
}
