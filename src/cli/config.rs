//! `coffer config check`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::GlobalArgs;
use crate::config::Config;

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
        let explicit = cmd.file.or_else(|| global.config.clone());
        let (config, file) = Config::load(explicit.as_deref(), |k| std::env::var(k).ok())?;
        config.validate()?;
        match file {
            Some(f) => println!("{}: ok", f.display()),
            None => println!("no configuration file (built-in defaults and environment): ok"),
        }
        Ok(())
    }
}
