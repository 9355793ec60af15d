//! `coffer key passphrase|rotate|status`.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{Context, KdfArgs};
use crate::app::unlock;

/// Master key management.
#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Re-seal the master keys under a new passphrase (data is not re-encrypted).
    Passphrase(PassphraseCmd),
    /// Add a master key version, rewrap every data key under it, retire unused versions.
    /// Safe to re-run after an interruption: it resumes.
    Rotate,
    /// Show master key versions and how many objects each wraps.
    Status,
}

/// `coffer key passphrase`.
#[derive(Debug, Args)]
pub struct PassphraseCmd {
    /// Read the new passphrase from this file instead of asking twice on the terminal.
    #[arg(long, value_name = "FILE")]
    new_passphrase_file: Option<PathBuf>,
    /// Also change the key derivation cost (defaults: keep the key file's).
    #[arg(long)]
    change_kdf: bool,
    #[command(flatten)]
    kdf: KdfArgs,
}

impl KeyCmd {
    pub(super) fn run(self, ctx: &Context) -> anyhow::Result<()> {
        let mut vault = ctx.open_vault()?;
        match self {
            Self::Passphrase(cmd) => {
                let params = if cmd.change_kdf {
                    Some(cmd.kdf.params(ctx)?)
                } else {
                    None
                };
                let new = unlock::new(cmd.new_passphrase_file.as_deref(), false)?;
                vault.change_passphrase(&new, params)?;
                println!("passphrase changed; {} re-sealed", vault.paths().key_file().display());
            }
            Self::Rotate => {
                let interactive = std::io::stderr().is_terminal();
                let report = vault.rotate(|n| {
                    if interactive {
                        eprint!("\rrewrapped {n} keys");
                    }
                })?;
                if interactive {
                    eprintln!();
                }
                if report.resumed {
                    println!("resumed an interrupted rotation");
                }
                println!(
                    "master key version {} is current; {} keys rewrapped",
                    report.current, report.rewrapped
                );
                for v in &report.retired {
                    println!("retired version {v} (no object uses it)");
                }
                if !report.damaged.is_empty() {
                    for what in &report.damaged {
                        eprintln!("damaged: {what} could not be rewrapped");
                    }
                    anyhow::bail!(
                        "{} object(s) could not be rewrapped, so the versions they use stay in the key file; \
                         restore them from a backup (or delete them), then run `coffer key rotate` again",
                        report.damaged.len()
                    );
                }
            }
            Self::Status => {
                let s = vault.key_status()?;
                println!(
                    "key file {} (argon2id: {} KiB, {} iterations, {} lanes)",
                    vault.paths().key_file().display(),
                    s.kdf.m_cost_kib,
                    s.kdf.t_cost,
                    s.kdf.p_cost
                );
                println!("version  objects");
                for (v, n) in &s.versions {
                    let mark = if *v == s.current { "  (current)" } else { "" };
                    println!("{v:>7}  {n:>7}{mark}");
                }
                for (v, n) in &s.missing {
                    println!("{v:>7}  {n:>7}  MISSING from the key file: these objects cannot be read");
                }
                if s.undecodable > 0 {
                    println!(
                        "{} record(s) are unreadable (damaged): restore the database from a backup",
                        s.undecodable
                    );
                }
                if s.rotation_unfinished {
                    println!("a rotation is unfinished: run `coffer key rotate` to complete it");
                } else if s.versions.len() > 1 {
                    println!("older versions are kept for damaged objects until those are restored or deleted");
                }
            }
        }
        Ok(())
    }
}
