//! The command line. One file per subcommand; each talks to [`crate::app`].

mod audit;
mod backup;
mod client;
mod compact;
mod completions;
mod config;
mod device;
mod erp;
mod init;
mod key;
mod pki;
mod progress;
mod serve;
mod user;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::app::{Paths, UnlockError, Vault};
use crate::config::{Config, ConfigError};
use crate::crypto::kdf::KdfParams;
use crate::store::StoreOptions;

/// Exit code for a wrong passphrase (and for usage errors, as clap does).
pub const EXIT_WRONG_PASSPHRASE: u8 = 2;

/// What `coffer --version` prints after the name: the crate version and the git revision
/// it was built from (see build.rs), e.g. `0.1.0 (git 1a2b3c4d5e6f, 2026-11-29)`.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("COFFER_GIT_REV"), ")");

/// coffer: encrypted document and ERP-record store for the company's mobile app.
#[derive(Debug, Parser)]
#[command(name = "coffer", version = VERSION, about)]
pub struct Cli {
    /// Options every subcommand shares.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by all subcommands. Every setting can also come from the configuration
/// file and `COFFER_*` environment variables (see the README); flags win.
#[derive(Clone, Debug, Args)]
pub struct GlobalArgs {
    /// Configuration file (default: $COFFER_CONFIG, else ./coffer.toml when present).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (holds coffer.redb) [config: data_dir, env: COFFER_DATA_DIR].
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Keys directory (key file, certificates) [config: keys_dir, env: COFFER_KEYS_DIR].
    #[arg(long, global = true, value_name = "DIR")]
    pub keys_dir: Option<PathBuf>,
    /// Read the passphrase from this file instead of $CREDENTIALS_DIRECTORY/coffer-passphrase,
    /// $COFFER_PASSPHRASE or the terminal.
    #[arg(long, global = true, env = "COFFER_PASSPHRASE_FILE", value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// redb page cache, MiB [config: cache_mib, env: COFFER_CACHE_MIB].
    #[arg(long, global = true, value_name = "MIB")]
    pub cache_mib: Option<usize>,
}

impl GlobalArgs {
    /// Defaults → file → environment → these flags, validated.
    fn context(&self) -> anyhow::Result<Context> {
        let (mut config, file) =
            Config::load(self.config.as_deref(), |k| std::env::var(k).ok()).map_err(with_config_hint)?;
        if let Some(d) = &self.data_dir {
            config.data_dir = d.clone();
        }
        if let Some(d) = &self.keys_dir {
            config.keys_dir = d.clone();
        }
        if let Some(c) = self.cache_mib {
            config.cache_mib = c;
        }
        config.validate()?;
        Ok(Context {
            config,
            config_file: file,
            passphrase_file: self.passphrase_file.clone(),
        })
    }
}

/// A configuration error with the next step where its message names only the problem
/// (the others say what is accepted, or end with an operating-system error that
/// [`crate::admin::describe`] explains).
fn with_config_hint(e: ConfigError) -> anyhow::Error {
    match e {
        ConfigError::Parse { .. } => {
            anyhow::anyhow!("{e}; fix the file there and retry (`coffer config check` validates it)")
        }
        ConfigError::Env { .. } => anyhow::anyhow!("{e}; fix or unset the variable and retry"),
        e => e.into(),
    }
}

/// The resolved settings a subcommand runs with.
#[derive(Debug)]
pub struct Context {
    /// Every setting.
    pub config: Config,
    /// The file they were read from, if any.
    pub config_file: Option<PathBuf>,
    /// `--passphrase-file`.
    pub passphrase_file: Option<PathBuf>,
}

impl Context {
    pub(crate) fn paths(&self) -> Paths {
        Paths {
            data_dir: self.config.data_dir.clone(),
            keys_dir: self.config.keys_dir.clone(),
        }
    }

    fn store_options(&self) -> StoreOptions {
        StoreOptions {
            cache_bytes: self.config.cache_mib.saturating_mul(1024 * 1024),
        }
    }

    /// The passphrase of the existing key file, from the usual sources or, next to a
    /// development server, from `keys/dev/passphrase`.
    fn passphrase(&self) -> anyhow::Result<crate::secret::Passphrase> {
        let dev = crate::app::dev::passphrase_file(&self.paths());
        Ok(crate::app::unlock::existing_or_dev(
            self.passphrase_file.as_deref(),
            Some(&dev),
            &mut |path| {
                eprintln!(
                    "warning: using the development passphrase in {}: never use it for real data",
                    path.display()
                )
            },
        )?)
    }

    /// The settings an admin command runs with when this process executes it. Only the
    /// commands that hand out an endpoint (device issue, enroll, renew) read the server
    /// certificate for it, so the others work with the key file alone (e.g. after a
    /// restore on a new machine).
    fn admin_settings(&self, request: &crate::admin::Request) -> anyhow::Result<crate::admin::Settings> {
        use crate::admin::Request;
        let needs_endpoint = matches!(
            request,
            Request::DeviceIssue { .. } | Request::DeviceEnroll { .. } | Request::DeviceRenew { .. }
        );
        Ok(crate::admin::Settings {
            argon2: self.config.argon2.params(),
            device_days: self.config.pki.device_days,
            server_days: self.config.pki.server_days,
            region: self.config.auth.region.clone(),
            endpoint: if needs_endpoint {
                device::endpoint(self, None)?
            } else {
                String::new()
            },
            erp: crate::erp::Erp::parse(&self.config.erp)?,
        })
    }

    /// Runs an admin command through the running server's admin socket or, when no server
    /// runs on this data directory, on the database opened here.
    pub(crate) fn admin(&self, request: crate::admin::Request) -> anyhow::Result<crate::admin::Response> {
        self.admin_with(request, &mut |_, _| {})
    }

    /// [`admin`](Self::admin) for long commands: `progress` hears (done, total) as they run.
    pub(crate) fn admin_with(
        &self,
        request: crate::admin::Request,
        progress: &mut dyn FnMut(u64, u64),
    ) -> anyhow::Result<crate::admin::Response> {
        if let Some(answer) = crate::admin::call(&self.config.data_dir, &request, progress)? {
            return Ok(answer);
        }
        if matches!(request, crate::admin::Request::UserAdd { .. }) {
            warn_if_weak(self.config.argon2.params());
        }
        let settings = self.admin_settings(&request)?;
        let mut vault = self.open_vault()?;
        if matches!(request, crate::admin::Request::KeyRotate) {
            // With the database to itself, a rotation also retires the old versions.
            return key::rotate_offline(&mut vault, progress);
        }
        crate::admin::execute(&vault, &settings, request, progress)
    }

    /// Unlocks the key file and opens the database.
    fn open_vault(&self) -> anyhow::Result<Vault> {
        warn_if_exposed(&self.paths().key_file());
        let passphrase = self.passphrase()?;
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

/// argon2id cost of the passphrase KDF [config: argon2.*, env: COFFER_KDF_*]. Lower values
/// than the defaults are for tests only.
#[derive(Debug, Args)]
pub struct KdfArgs {
    /// Memory, KiB.
    #[arg(long, value_name = "KIB")]
    pub kdf_memory_kib: Option<u32>,
    /// Iterations.
    #[arg(long, value_name = "N")]
    pub kdf_iterations: Option<u32>,
    /// Lanes.
    #[arg(long, value_name = "N")]
    pub kdf_parallelism: Option<u32>,
}

impl KdfArgs {
    fn params(&self, ctx: &Context) -> anyhow::Result<KdfParams> {
        let base = ctx.config.argon2.params();
        let p = KdfParams {
            m_cost_kib: self.kdf_memory_kib.unwrap_or(base.m_cost_kib),
            t_cost: self.kdf_iterations.unwrap_or(base.t_cost),
            p_cost: self.kdf_parallelism.unwrap_or(base.p_cost),
        }
        .validate()?;
        warn_if_weak(p);
        Ok(p)
    }
}

fn warn_if_weak(p: KdfParams) {
    if p.is_weaker_than_default() {
        eprintln!(
            "warning: argon2id parameters below the production default (64 MiB, 3 iterations): acceptable for tests only"
        );
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
    /// Run the HTTPS API (`--dev`: zero-setup development server).
    Serve(serve::ServeCmd),
    /// Users: add, list, disable.
    #[command(subcommand)]
    User(user::UserCmd),
    /// Devices: issue certificates, list, revoke.
    #[command(subcommand)]
    Device(device::DeviceCmd),
    /// Print the SPKI pins of the current and next server keys, for the app's pinning config.
    Pins(pki::PinsCmd),
    /// Server certificate management.
    #[command(subcommand)]
    Cert(pki::CertCmd),
    /// Configuration file tools.
    #[command(subcommand)]
    Config(config::ConfigCmd),
    /// The ERP record cache: statistics, purge.
    #[command(subcommand)]
    Erp(erp::ErpCmd),
    /// Write a consistent, encrypted backup of the whole database (online: the server
    /// keeps serving).
    Backup(backup::BackupCmd),
    /// Replace the database with a backup, after verifying all of it (server stopped).
    Restore(backup::RestoreCmd),
    /// Check the database: structure and every data key (`--deep`: every chunk and
    /// content hash).
    Verify(verify::VerifyCmd),
    /// The tamper-evident audit log: verify the chain, export entries.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// The reference client: sign requests with a device profile, log in, upload and
    /// download documents.
    Client(client::ClientCmd),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to standard
    /// output.
    #[command(after_help = COMPLETIONS_HELP)]
    Completions(completions::CompletionsCmd),
}

/// Installing the completion scripts, shown by `coffer completions --help`.
const COMPLETIONS_HELP: &str = "\
Examples:
  coffer completions bash > /etc/bash_completion.d/coffer
  coffer completions bash > ~/.local/share/bash-completion/completions/coffer
  coffer completions zsh > ~/.zfunc/_coffer    (with fpath+=(~/.zfunc) before compinit in ~/.zshrc)
  coffer completions fish > ~/.config/fish/completions/coffer.fish
  coffer completions powershell >> $PROFILE

Open a new shell afterwards. No configuration, passphrase or data directory is needed.";

impl Command {
    /// The subcommand as typed, for messages about which process holds the database.
    fn name(&self) -> &'static str {
        match self {
            Self::Init(_) => "coffer init",
            Self::Key(_) => "coffer key",
            Self::Compact => "coffer compact",
            Self::Serve(_) => "coffer serve",
            Self::User(_) => "coffer user",
            Self::Device(_) => "coffer device",
            Self::Pins(_) => "coffer pins",
            Self::Cert(_) => "coffer cert",
            Self::Config(_) => "coffer config",
            Self::Erp(_) => "coffer erp",
            Self::Backup(_) => "coffer backup",
            Self::Restore(_) => "coffer restore",
            Self::Verify(_) => "coffer verify",
            Self::Audit(_) => "coffer audit",
            Self::Client(_) => "coffer client",
            Self::Completions(_) => "coffer completions",
        }
    }
}

/// Runs a parsed command line; prints a one-line error on failure: `error: ` and the
/// message, its causes, and what to do next.
pub fn run(cli: Cli) -> ExitCode {
    harden_process();
    crate::app::set_process_name(cli.command.name());
    let result = match cli.command {
        // `config check` reports a broken configuration itself instead of failing on it.
        Command::Config(cmd) => cmd.run(&cli.global),
        // The client needs no coffer on this machine, only its profile.
        Command::Client(cmd) => cmd.run(),
        // Completions describe the command line only.
        Command::Completions(cmd) => cmd.run(),
        command => cli.global.context().and_then(|ctx| {
            if !matches!(command, Command::Serve(_)) {
                // Warnings from the work an admin command does (`serve` sets up its own
                // logs from the configuration).
                crate::telemetry::init_cli();
            }
            match command {
                Command::Init(cmd) => cmd.run(&ctx),
                Command::Key(cmd) => cmd.run(&ctx),
                Command::Compact => compact::run(&ctx),
                Command::Serve(cmd) => cmd.run(&ctx),
                Command::User(cmd) => cmd.run(&ctx),
                Command::Device(cmd) => cmd.run(&ctx),
                Command::Pins(cmd) => cmd.run(&ctx),
                Command::Cert(cmd) => cmd.run(&ctx),
                Command::Erp(cmd) => cmd.run(&ctx),
                Command::Backup(cmd) => cmd.run(&ctx),
                Command::Restore(cmd) => cmd.run(&ctx),
                Command::Verify(cmd) => cmd.run(&ctx),
                Command::Audit(cmd) => cmd.run(&ctx),
                Command::Config(_) | Command::Client(_) | Command::Completions(_) => Ok(()),
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", crate::admin::describe(&e));
            let wrong = e
                .chain()
                .any(|c| matches!(c.downcast_ref::<UnlockError>(), Some(UnlockError::WrongPassphrase(_))));
            ExitCode::from(if wrong { EXIT_WRONG_PASSPHRASE } else { 1 })
        }
    }
}

/// The error for an admin answer of the wrong kind: the server runs another coffer version.
fn unexpected(request: &str) -> anyhow::Error {
    anyhow::anyhow!("unexpected answer to {request}: run the same coffer version as the server")
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
