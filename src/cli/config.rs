//! `coffer config check`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::GlobalArgs;

/// Configuration file tools.
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Validate a configuration file (default: the one coffer would use) with the
    /// environment applied; names the first bad key.
    Check(CheckCmd),
}

/// `coffer config check`.
#[derive(Debug, Args)]
pub struct CheckCmd {
    /// The file to check.
    file: Option<PathBuf>,
}

impl ConfigCmd {
    pub(super) fn run(self, global: &GlobalArgs) -> anyhow::Result<()> {
        let Self::Check(cmd) = self;
        // The same layering as every other command, flags included.
        let mut global = global.clone();
        if cmd.file.is_some() {
            global.config = cmd.file;
        }
        let ctx = global.context()?;
        match ctx.config_file {
            Some(f) => println!("{}: ok", f.display()),
            None => println!("no configuration file (built-in defaults and environment): ok"),
        }
        Ok(())
    }
}
