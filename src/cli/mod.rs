//! The command line. One file per subcommand; each talks to [`crate::app`].

mod compact;
mod init;
mod key;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::app::{Paths, UnlockError, Vault};
use crate::crypto::kdf::KdfParams;
use crate::store::StoreOptions;

/// Exit code for a wrong passphrase (and for usage errors, as clap does).
pub const EXIT_WRONG_PASSPHRASE: u8 = 2;

/// coffer: encrypted document and ERP-record store for the company's mobile app.
#[derive(Debug, Parser)]
#[command(name = "coffer", version, about)]
pub struct Cli {
    /// Options every subcommand shares.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by all subcommands.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Data directory (holds coffer.redb).
    #[arg(long, global = true, env = "COFFER_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Keys directory (holds master.key).
    #[arg(long, global = true, env = "COFFER_KEYS_DIR", default_value = "./keys")]
    pub keys_dir: PathBuf,
    /// Read the passphrase from this file instead of $CREDENTIALS_DIRECTORY/coffer-passphrase,
    /// $COFFER_PASSPHRASE or the terminal.
    #[arg(long, global = true, env = "COFFER_PASSPHRASE_FILE", value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// redb page cache, MiB.
    #[arg(
        long,
        global = true,
        env = "COFFER_CACHE_MIB",
        default_value_t = 32,
        value_name = "MIB"
    )]
    pub cache_mib: usize,
}

impl GlobalArgs {
    fn paths(&self) -> Paths {
        Paths {
            data_dir: self.data_dir.clone(),
            keys_dir: self.keys_dir.clone(),
        }
    }

    fn store_options(&self) -> StoreOptions {
        StoreOptions {
            cache_bytes: self.cache_mib.saturating_mul(1024 * 1024),
        }
    }

    /// Unlocks the key file and opens the database.
    fn open_vault(&self) -> anyhow::Result<Vault> {
        warn_if_exposed(&self.paths().key_file());
        let passphrase = crate::app::unlock::existing(self.passphrase_file.as_deref())?;
        let (vault, report) = Vault::open(&self.paths(), &passphrase, self.store_options())?;
        if report.staged_uploads_removed > 0 {
            eprintln!(
                "note: removed {} unfinished upload(s) ({} chunks) left by an earlier stop",
                report.staged_uploads_removed, report.staged_chunks_removed
            );
        }
        Ok(vault)
    }
}

/// Warns when the key file can be read by other users: the passphrase is then the only
/// thing between them and the master keys.
fn warn_if_exposed(key_file: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(key_file)
        && meta.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "warning: {} is readable by other users; run `chmod 600 {}`",
            key_file.display(),
            key_file.display()
        );
    }
}

/// argon2id cost of the passphrase KDF. Lower values than the defaults are for tests only.
#[derive(Debug, Args)]
pub struct KdfArgs {
    /// Memory, KiB.
    #[arg(long, env = "COFFER_KDF_MEMORY_KIB", default_value_t = KdfParams::DEFAULT.m_cost_kib)]
    pub kdf_memory_kib: u32,
    /// Iterations.
    #[arg(long, env = "COFFER_KDF_ITERATIONS", default_value_t = KdfParams::DEFAULT.t_cost)]
    pub kdf_iterations: u32,
    /// Lanes.
    #[arg(long, env = "COFFER_KDF_PARALLELISM", default_value_t = KdfParams::DEFAULT.p_cost)]
    pub kdf_parallelism: u32,
}

impl KdfArgs {
    fn params(&self) -> anyhow::Result<KdfParams> {
        let p = KdfParams {
            m_cost_kib: self.kdf_memory_kib,
            t_cost: self.kdf_iterations,
            p_cost: self.kdf_parallelism,
        }
        .validate()?;
        if p.is_weaker_than_default() {
            eprintln!(
                "warning: argon2id parameters below the production default (64 MiB, 3 iterations): acceptable for tests only"
            );
        }
        Ok(p)
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the key file and an empty database (refuses to overwrite a key file).
    Init(init::InitCmd),
    /// Master key management: passphrase change, rotation, status.
    #[command(subcommand)]
    Key(key::KeyCmd),
    /// Rewrite the database into a fresh file: reclaims space, and removes deleted
    /// documents and superseded keys from free pages.
    Compact,
}

/// Runs a parsed command line; prints a one-line error on failure.
pub fn run(cli: Cli) -> ExitCode {
    harden_process();
    let result = match cli.command {
        Command::Init(cmd) => cmd.run(&cli.global),
        Command::Key(cmd) => cmd.run(&cli.global),
        Command::Compact => compact::run(&cli.global),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let wrong = e
                .chain()
                .any(|c| matches!(c.downcast_ref::<UnlockError>(), Some(UnlockError::WrongPassphrase(_))));
            ExitCode::from(if wrong { EXIT_WRONG_PASSPHRASE } else { 1 })
        }
    }
}

/// Keeps key material out of core dumps: no core file, and not dumpable (which also
/// stops same-user ptrace and /proc/PID/mem reads).
fn harden_process() {
    use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};
    // Everything coffer creates is for its own user only.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let no_core = setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    );
    let not_dumpable = set_dumpable_behavior(DumpableBehavior::NotDumpable);
    if no_core.is_err() || not_dumpable.is_err() {
        eprintln!("warning: could not disable core dumps; key material could reach a core file");
    }
}
