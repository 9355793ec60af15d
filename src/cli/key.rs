//! `coffer key passphrase|rotate|status`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::progress::Bar;
use super::{Context, KdfArgs};
use crate::admin::{Request, Response, RotatedOut};
use crate::app::{Vault, unlock};

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
        match self {
            Self::Passphrase(cmd) => {
                let kdf = if cmd.change_kdf {
                    Some(cmd.kdf.params(ctx)?)
                } else {
                    None
                };
                let request = |new: crate::secret::Passphrase| Request::KeyPassphrase {
                    new: crate::secret::SecretString::new(String::from_utf8_lossy(new.expose()).into_owned()),
                    kdf,
                };
                let answer = if crate::admin::socket::connect(&ctx.config.data_dir)?.is_some() {
                    let new = unlock::new(cmd.new_passphrase_file.as_deref(), false)?;
                    ctx.admin(request(new))?
                } else {
                    // The current passphrase first: a wrong one fails before a new one is asked.
                    let vault = ctx.open_vault()?;
                    let new = request(unlock::new(cmd.new_passphrase_file.as_deref(), false)?);
                    crate::admin::execute(&vault, &ctx.admin_settings(&new)?, new, &mut |_, _| {})?
                };
                if let Response::Done(text) = answer {
                    println!("{text}");
                }
            }
            Self::Rotate => {
                let bar = Bar::new("rewrapping keys", false);
                let Response::Rotated(r) = ctx.admin_with(Request::KeyRotate, &mut |n, _| bar.update(n, 0))? else {
                    return Err(super::unexpected("key rotate"));
                };
                bar.finish();
                if r.resumed {
                    println!("resumed an interrupted rotation");
                }
                println!(
                    "master key version {} is current; {} keys rewrapped",
                    r.current, r.rewrapped
                );
                for v in &r.retired {
                    println!("retired version {v} (no object uses it)");
                }
                if r.online {
                    println!(
                        "the server keeps the older versions for uploads that began before the rotation; \
                         run `coffer key rotate` again with the server stopped to retire them"
                    );
                }
                if !r.damaged.is_empty() {
                    for what in &r.damaged {
                        eprintln!("damaged: {what} could not be rewrapped");
                    }
                    anyhow::bail!(
                        "{} object(s) could not be rewrapped, so the versions they use stay in the key file; \
                         restore them from a backup (or delete them), then run `coffer key rotate` again",
                        r.damaged.len()
                    );
                }
            }
            Self::Status => {
                let Response::KeyStatus(out) = ctx.admin(Request::KeyStatus)? else {
                    return Err(super::unexpected("key status"));
                };
                let s = out.status;
                println!(
                    "key file {} (argon2id: {} KiB, {} iterations, {} lanes)",
                    out.key_file, s.m_cost_kib, s.t_cost, s.p_cost
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
                    println!(
                        "a rotation is unfinished: run `coffer key rotate` (with the server stopped, to retire the \
                         older versions)"
                    );
                } else if s.versions.len() > 1 {
                    println!("older versions are kept for damaged objects until those are restored or deleted");
                }
            }
        }
        Ok(())
    }
}

/// `key rotate` with the database opened here: rotate, then retire unused versions.
pub(super) fn rotate_offline(vault: &mut Vault, progress: &mut dyn FnMut(u64, u64)) -> anyhow::Result<Response> {
    let result = vault.rotate(|n| progress(n, 0));
    let outcome = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
    if let Err(e) = vault.audit_admin("key rotate", None, outcome) {
        eprintln!("warning: the audit log could not record `key rotate`: {e}");
    }
    let r = result?;
    Ok(Response::Rotated(RotatedOut {
        current: r.current,
        resumed: r.resumed,
        rewrapped: r.rewrapped,
        retired: r.retired,
        online: false,
        damaged: r.damaged,
    }))
}
