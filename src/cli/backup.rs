//! `coffer backup` and `coffer restore`.

use std::path::PathBuf;

use clap::Args;

use super::Context;
use super::progress::Bar;
use crate::admin::{Request, Response};

/// `coffer backup`.
#[derive(Debug, Args)]
pub struct BackupCmd {
    /// The backup file to write (through a temporary file beside it, renamed when
    /// complete).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Replace FILE if it exists.
    #[arg(long)]
    force: bool,
}

impl BackupCmd {
    pub(super) fn run(self, ctx: &Context) -> anyhow::Result<()> {
        // The server may run in another directory: it gets an absolute path.
        let out = std::path::absolute(&self.out)?;
        let bar = Bar::new("backing up", false);
        let answer = ctx.admin_with(
            Request::Backup {
                out: out.clone(),
                force: self.force,
            },
            &mut |done, total| bar.update(done, total),
        )?;
        bar.finish();
        let Response::Backup(b) = answer else {
            return Err(super::unexpected("backup"));
        };
        println!("backup written to {}: {}", b.path, b.summary);
        println!(
            "restoring it needs the key file ({}) and its passphrase, which are not in the backup: keep a copy of \
             keys/ apart from the backups",
            ctx.paths().key_file().display()
        );
        Ok(())
    }
}

/// `coffer restore`.
#[derive(Debug, Args)]
pub struct RestoreCmd {
    /// The backup file.
    file: PathBuf,
    /// Only verify the backup (every frame, entry and count) and change nothing.
    #[arg(long)]
    check: bool,
    /// Do not keep the replaced database as `coffer.redb.pre-restore`.
    #[arg(long)]
    no_keep: bool,
}

impl RestoreCmd {
    pub(super) fn run(self, ctx: &Context) -> anyhow::Result<()> {
        let paths = ctx.paths();
        if !self.check && crate::admin::socket::connect(&paths.data_dir)?.is_some() {
            anyhow::bail!(
                "coffer serve is running on {}: stop it first (e.g. `systemctl stop coffer`), restore, then start it \
                 again (to try a backup while it serves, use `coffer restore --check`)",
                paths.data_dir.display()
            );
        }
        // Before the passphrase is asked for: a mistyped name is the likelier mistake.
        if let Err(e) = std::fs::metadata(&self.file)
            && e.kind() == std::io::ErrorKind::NotFound
        {
            anyhow::bail!(
                "no backup file at {}: check the path (backups are the files `coffer backup --out FILE` wrote)",
                self.file.display()
            );
        }
        let passphrase = ctx.passphrase()?;
        if self.check {
            let bar = Bar::new("verifying", true);
            let summary =
                crate::app::backup::verify_backup(&paths, &passphrase, &self.file, &mut |d, t| bar.update(d, t))?;
            bar.finish();
            println!(
                "{} is a complete, authentic backup taken {} under master key version {}: {}",
                self.file.display(),
                crate::http::rfc3339(summary.created),
                summary.key_version,
                summary.describe()
            );
            return Ok(());
        }
        let verifying = Bar::new("verifying", true);
        let restoring = Bar::new("restoring", true);
        let report = crate::app::backup::restore(
            &paths,
            &passphrase,
            &self.file,
            !self.no_keep,
            ctx.store_options(),
            &mut |phase, done, total| {
                if phase == 1 {
                    verifying.update(done, total);
                } else {
                    verifying.finish();
                    restoring.update(done, total);
                }
            },
        )?;
        verifying.finish();
        restoring.finish();
        println!(
            "restored {} (taken {}) into {}: {}",
            self.file.display(),
            crate::http::rfc3339(report.summary.created),
            report.database.display(),
            report.summary.describe()
        );
        if let Some(kept) = &report.kept {
            println!(
                "previous database kept as {} (delete it once the restore is confirmed)",
                kept.display()
            );
        }
        println!(
            "sessions and unused enrolment codes are not in backups: users log in again; devices revoked after the \
             backup was taken are active again in it, so revoke them again (see `coffer device list`)"
        );
        // The restored database opens with this key file, and the restore is on record.
        let vault = ctx.open_vault()?;
        vault.audit_admin("restore", Some(self.file.display().to_string()), Ok(()))?;
        Ok(())
    }
}
