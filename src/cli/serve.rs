//! `coffer serve [--dev]`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;

use super::Context;
use crate::app::dev;
use crate::http::allowlist::Allowlist;
use crate::http::{ServerOptions, start};

/// Where `serve --dev` listens unless told otherwise.
const DEV_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8443);

/// Run the HTTPS API.
#[derive(Debug, Args)]
pub struct ServeCmd {
    /// Address to listen on [config: listen, env: COFFER_LISTEN; default 0.0.0.0:8443;
    /// with --dev only this flag counts, default 127.0.0.1:8443].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Zero-setup development server: creates ./keys and ./data if absent (development
    /// passphrase, a demo member and its device credentials in keys/dev/) and prints curl
    /// commands that work from this directory.
    #[arg(long)]
    dev: bool,
}

/// Quotes a path for a POSIX shell when it needs it.
fn sh(path: &Path) -> String {
    let s = path.display().to_string();
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:@".contains(c)) {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The URL base a client on this machine uses for `addr`.
fn base_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    match ip {
        IpAddr::V4(v4) => format!("https://{v4}:{}", addr.port()),
        IpAddr::V6(v6) => format!("https://[{v6}]:{}", addr.port()),
    }
}

/// What `serve --dev` prints: shell commands that work verbatim from the current
/// directory.
#[derive(Debug, Clone)]
pub struct DevCommands {
    /// curl: logs the demo user in and keeps the session token in `$TOKEN`.
    pub curl_login: String,
    /// curl: uploads the sample file and keeps the new document's id in `$ID`.
    pub curl_upload: String,
    /// curl: fetches it back.
    pub curl_fetch: String,
    /// The reference client: uploads the sample file (logging in by itself).
    pub client_put: String,
    /// The reference client: lists the documents.
    pub client_list: String,
    /// The reference client: reads the demo ERP record.
    pub client_erp: String,
}

/// The commands for the demo profile; `exe` is how to run coffer.
pub fn dev_commands(keys_dir: &Path, profile: &crate::client::Profile, exe: &Path) -> DevCommands {
    let dir = keys_dir.join(dev::DEV_DIR);
    let curl = format!(
        "curl -sS --cacert {} --cert {} --key {} --aws-sigv4 'aws:amz:{}:{}' --user '{}:{}'",
        sh(&keys_dir.join(crate::app::pki::CA_CERT_FILE)),
        sh(&dir.join(dev::CLIENT_CERT)),
        sh(&dir.join(dev::CLIENT_KEY)),
        profile.region,
        profile.service,
        profile.access_key_id,
        profile.secret_access_key.expose(),
    );
    let url = &profile.endpoint;
    let password = sh(&dev::password_file_in(keys_dir));
    let profile_path = sh(&dir.join(dev::PROFILE_FILE));
    let exe = sh(exe);
    DevCommands {
        curl_login: format!(
            "TOKEN=$({curl} -H 'Content-Type: application/json' \
             --data-binary \"{{\\\"username\\\":\\\"{user}\\\",\\\"password\\\":\\\"$(cat {password})\\\"}}\" \
             {url}/v1/session | sed -n 's/.*\"token\":\"\\([^\"]*\\)\".*/\\1/p'); echo \"session token: ${{#TOKEN}} characters\"",
            user = profile.username,
        ),
        curl_upload: format!(
            "ID=$({curl} -H \"X-Amz-Security-Token: $TOKEN\" -H 'X-Coffer-Name: {name}' -H 'Content-Type: text/plain' \
             --data-binary @{file} {url}/v1/documents | sed -n 's/.*\"id\":\"\\([0-9a-f]*\\)\".*/\\1/p'); echo \"uploaded document $ID\"",
            name = dev::SAMPLE_FILE,
            file = sh(&dir.join(dev::SAMPLE_FILE)),
        ),
        curl_fetch: format!("{curl} -H \"X-Amz-Security-Token: $TOKEN\" {url}/v1/documents/$ID"),
        client_put: format!(
            "{exe} client --profile {profile_path} put {}",
            sh(&dir.join(dev::SAMPLE_FILE))
        ),
        client_list: format!("{exe} client --profile {profile_path} list"),
        client_erp: format!(
            "{exe} client --profile {profile_path} erp {} {}",
            dev::DEMO_COLLECTION,
            dev::DEMO_RECORD
        ),
    }
}

/// How to run this program from the current directory (relative when below it).
fn this_exe() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("coffer"));
    match std::env::current_dir() {
        Ok(cwd) => match exe.strip_prefix(&cwd) {
            Ok(rel) => PathBuf::from(".").join(rel),
            Err(_) => exe,
        },
        Err(_) => exe,
    }
}

/// Devices whose certificates expire within this many days are named at start.
const DEVICE_EXPIRY_WARNING_DAYS: i64 = 30;

/// Warns about active devices whose certificates expire soon, so they can be re-issued
/// before their owners are locked out.
fn warn_expiring_devices(vault: &crate::app::Vault) {
    let now = crate::model::Timestamp::now();
    let soon = now.0.saturating_add(DEVICE_EXPIRY_WARNING_DAYS * 86_400_000);
    match vault.devices() {
        Ok(devices) => {
            for d in devices {
                if !d.body.revoked && d.expires > now && d.expires.0 <= soon {
                    let days = (d.expires.0 - now.0) / 86_400_000;
                    tracing::warn!(
                        "the certificate of device {} expires in {days} day(s): issue the device again",
                        d.id
                    );
                }
            }
        }
        Err(e) => tracing::warn!("cannot list devices to check their expiry: {e}"),
    }
}

/// Raises the soft limit on open files to the hard limit: every connection is a
/// descriptor, and the usual soft limit (1024) is below what `max_connections` allows.
fn raise_open_files(max_connections: u32, max_anonymous: u32) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    // Two descriptors per connection (its socket and the watchdog's duplicate), and up to
    // twice `max_connections` connections (the ones beyond it are answered 503).
    let wanted = 2 * (2 * u64::from(max_connections) + u64::from(max_anonymous)) + 256;
    if limit.current.is_some_and(|c| c < wanted) {
        limit.current = limit.maximum;
        if setrlimit(Resource::Nofile, limit).is_err() {
            tracing::warn!("could not raise the open-file limit; connections may be refused early");
        }
    }
    let now = getrlimit(Resource::Nofile).current;
    if now.is_some_and(|c| c < wanted) {
        tracing::warn!(
            "the open-file limit ({}) is below 4 x limits.max_connections + 2 x limits.max_anonymous_connections + 256; raise LimitNOFILE",
            now.unwrap_or(0)
        );
    }
}

/// Loads the server certificate again; on failure the old one stays in use.
fn reload(why: &str, reloader: &crate::http::TlsReloader) {
    match reloader.reload() {
        Ok(info) => tracing::info!(
            "{why}: reloaded the server certificate (valid until {})",
            time::OffsetDateTime::from_unix_timestamp(info.not_after)
                .map(|t| t.date().to_string())
                .unwrap_or_default()
        ),
        Err(e) => tracing::warn!("{why}: kept the current server certificate: {e}"),
    }
}

/// What SIGHUP reloads: the server certificate, and the settings that can change while
/// the server runs.
struct Reloadable {
    tls: crate::http::TlsReloader,
    live: crate::http::LiveSettings,
    config_file: Option<PathBuf>,
    running: std::sync::Mutex<crate::config::Config>,
    dev: bool,
}

impl Reloadable {
    /// Reads the configuration again (same file, same environment) and applies what can
    /// change live: `log.level`, `allow_cidrs` (not with `--dev`) and
    /// `limits.device_requests_per_minute`. Other changed settings are named: they take
    /// effect at the next start. An invalid file changes nothing.
    fn reload_config(&self) {
        let mut running = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut new = match crate::config::Config::load(self.config_file.as_deref(), |k| std::env::var(k).ok()) {
            Ok((c, _)) => c,
            Err(e) => {
                tracing::warn!("SIGHUP: kept the running configuration: {e}; fix the file and send SIGHUP again");
                return;
            }
        };
        // Command-line flags (directories, cache) stay as the server started with.
        new.data_dir.clone_from(&running.data_dir);
        new.keys_dir.clone_from(&running.keys_dir);
        new.cache_mib = running.cache_mib;
        if let Err(e) = new.validate() {
            tracing::warn!("SIGHUP: kept the running configuration: {e}; fix the file and send SIGHUP again");
            return;
        }
        let mut applied = Vec::new();
        if new.log.level != running.log.level {
            crate::telemetry::set_level(new.log.level);
            applied.push("log.level");
        }
        if new.limits.device_requests_per_minute != running.limits.device_requests_per_minute {
            self.live
                .set_device_requests_per_minute(new.limits.device_requests_per_minute);
            applied.push("limits.device_requests_per_minute");
        }
        if new.allow_cidrs != running.allow_cidrs && !self.dev {
            match new.allow_cidrs.as_deref().map(Allowlist::parse) {
                Some(Ok(allow)) if !allow.networks().is_empty() => {
                    tracing::info!("SIGHUP: accepting connections from {allow}");
                    self.live.set_allowlist(allow);
                    applied.push("allow_cidrs");
                }
                _ => {
                    tracing::warn!(
                        "SIGHUP: allow_cidrs is missing or empty in the new configuration: kept the running allowlist"
                    );
                    new.allow_cidrs.clone_from(&running.allow_cidrs);
                }
            }
        }
        // Everything else that changed waits for a restart.
        let restart: Vec<String> = running
            .changed_keys(&new)
            .into_iter()
            .filter(|k| !applied.contains(&k.as_str()))
            .collect();
        if applied.is_empty() && restart.is_empty() {
            tracing::info!("SIGHUP: the configuration is unchanged");
        }
        if !applied.is_empty() {
            tracing::info!("SIGHUP: applied {}", applied.join(", "));
        }
        if !restart.is_empty() {
            tracing::warn!(
                "SIGHUP: changed settings that take effect at the next start: {}; restart coffer (systemctl restart coffer) to apply them",
                restart.join(", ")
            );
        }
        // What runs now: the start's configuration with the settings applied live (the
        // others stay as they run, so the next SIGHUP names them again).
        let mut next = running.clone();
        next.log.level = new.log.level;
        next.limits.device_requests_per_minute = new.limits.device_requests_per_minute;
        if applied.contains(&"allow_cidrs") {
            next.allow_cidrs = new.allow_cidrs;
        }
        *running = next;
    }
}

/// What the signal thread acts on.
#[derive(Default)]
struct Signals {
    /// The running server, once attached.
    server: std::sync::OnceLock<Reloadable>,
    /// Set just before the server is started: from then on SIGTERM no longer ends the
    /// process directly.
    starting: std::sync::atomic::AtomicBool,
    /// A SIGTERM arrived while the server was being started.
    term_pending: std::sync::atomic::AtomicBool,
}

/// Handles SIGHUP (reload the server certificate) on a thread of its own, and rewrites the
/// CRL once a day so that it never goes stale for TLS terminators that read it. Installed
/// first thing in `serve` (SIGHUP's default action would end the process); the server it
/// acts on is attached once it runs.
fn watch_signals() -> anyhow::Result<Arc<Signals>> {
    let target: Arc<Signals> = Arc::default();
    let signals = target.clone();
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("coffer-signals".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            runtime.block_on(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (mut hup, mut term) = match (signal(SignalKind::hangup()), signal(SignalKind::terminate())) {
                (Ok(h), Ok(t)) => (h, t),
                (Err(e), _) | (_, Err(e)) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = tx.send(Ok(()));
            let mut daily = tokio::time::interval(std::time::Duration::from_secs(86_400));
            daily.tick().await;
            loop {
                tokio::select! {
                    got = hup.recv() => {
                        if got.is_none() {
                            return;
                        }
                        match signals.server.get() {
                            Some(r) => {
                                reload("SIGHUP", &r.tls);
                                r.reload_config();
                            }
                            None => tracing::info!("SIGHUP during start-up: the certificate is loaded as the server starts"),
                        }
                    }
                    got = term.recv() => {
                        if got.is_none() {
                            return;
                        }
                        // actix-server stops on the same signal; this only says so.
                        match signals.server.get() {
                            Some(r) => {
                                r.live.set_draining();
                                tracing::info!(
                                "SIGTERM: no new connections; requests in flight may finish within {} s, then the \
                                 rest are cut (an upload cut leaves nothing)",
                                r.live.shutdown_grace_secs()
                            );
                            }
                            // While the server is being started, it is stopped as soon as it
                            // runs (the caller checks `term_pending`).
                            None if signals.starting.load(std::sync::atomic::Ordering::SeqCst) => {
                                signals.term_pending.store(true, std::sync::atomic::Ordering::SeqCst);
                                tracing::info!("SIGTERM while the server starts: it stops as soon as it runs");
                            }
                            // Before that (asking for the passphrase, unlocking, opening the
                            // database) nothing is in flight: stop now, as the signal's
                            // default action would.
                            None => {
                                tracing::info!("SIGTERM during start-up: stopping before the server starts");
                                std::process::exit(0);
                            }
                        }
                    }
                    _ = daily.tick() => {
                        if let Some(r) = signals.server.get()
                            && let Err(e) = r.tls.rewrite_crl()
                        {
                            tracing::warn!("could not rewrite the CRL: {e}");
                        }
                    }
                }
            }
        });
        })?;
    match rx.recv() {
        Ok(Ok(())) => Ok(target),
        Ok(Err(e)) => anyhow::bail!("cannot watch for SIGHUP and SIGTERM: {e}"),
        Err(_) => anyhow::bail!("cannot watch for SIGHUP and SIGTERM"),
    }
}

impl ServeCmd {
    pub(super) fn run(self, ctx: &Context) -> anyhow::Result<()> {
        crate::telemetry::init(ctx.config.log.format, ctx.config.log.level);
        let signals = watch_signals()?;
        let paths = ctx.paths();
        // A development server listens on loopback unless told otherwise on its own command
        // line: a `listen` in a configuration file or the environment is for production.
        let listen = match (self.listen, self.dev) {
            (Some(l), _) => l,
            (None, true) => DEV_LISTEN,
            (None, false) => ctx.config.listen_or(SocketAddr::from(([0, 0, 0, 0], 8443))),
        };
        // Checked before the key file is unlocked: a missing allowlist needs no passphrase.
        let allow = if self.dev {
            Allowlist::loopback()
        } else {
            let cidrs = ctx.config.allow_cidrs.as_ref().ok_or_else(|| {
                anyhow::anyhow!(
                    "allow_cidrs is not set: list the networks devices connect from in the configuration \
                     file (allow_cidrs = [\"203.0.113.0/24\", \"2001:db8::/32\"]) or in COFFER_ALLOW_CIDRS; \
                     [\"0.0.0.0/0\", \"::/0\"] allows every address"
                )
            })?;
            let allow = Allowlist::parse(cidrs)?;
            if allow.networks().is_empty() {
                anyhow::bail!("allow_cidrs is empty: no device could connect; list the networks devices connect from");
            }
            allow
        };
        // Also before the unlock: unreadable upstream credentials need no passphrase.
        let erp = if self.dev {
            crate::erp::Erp::from_config(&dev::demo_erp(&ctx.config.erp))?
        } else {
            crate::erp::Erp::from_config(&ctx.config.erp)?
        };
        let vault = if self.dev {
            let passphrase = match &ctx.passphrase_file {
                Some(f) => crate::app::unlock::from_file(f)?,
                None => dev::passphrase(&paths)?,
            };
            tracing::warn!("development mode: a development passphrase and demo credentials are in use");
            let (vault, report) = dev::prepare(
                &paths,
                &passphrase,
                ctx.config.argon2.params(),
                ctx.store_options(),
                ctx.config.pki,
            )?;
            if report.initialised {
                tracing::info!("created {} and {}", paths.keys_dir.display(), paths.data_dir.display());
            }
            if report.issued_device {
                tracing::info!(
                    "wrote demo device credentials to {}",
                    dev::dev_dir(&paths).join(dev::CLIENT_CERT).display()
                );
            }
            if !listen.ip().is_loopback() {
                tracing::warn!("the development server listens on {listen}, beyond this machine");
            }
            if dev::seed_demo_record(&vault, &erp)? {
                tracing::info!(
                    "stored the demo ERP record {}/{}",
                    dev::DEMO_COLLECTION,
                    dev::DEMO_RECORD
                );
            }
            vault
        } else {
            ctx.open_vault()?
        };
        let server_cert = crate::app::pki::read_cert(&crate::app::pki::server_cert_path(&paths), "server.crt")?;
        let info = crate::pki::cert_info(&server_cert, "server.crt")?;
        let days_left = (info.not_after - crate::model::Timestamp::now().0 / 1000) / 86_400;
        if days_left < 0 || info.not_after <= crate::model::Timestamp::now().0 / 1000 {
            anyhow::bail!(
                "the server certificate {} has expired: run `coffer cert renew-server` (with the server stopped)",
                crate::app::pki::server_cert_path(&paths).display()
            );
        }
        if days_left < 14 {
            tracing::warn!("the server certificate expires in {days_left} day(s): run `coffer cert renew-server`");
        }
        warn_expiring_devices(&vault);
        tracing::info!("accepting connections from {allow}");
        let options = ServerOptions {
            listen,
            tls_min: ctx.config.tls.min_version,
            limits: ctx.config.limits.clone(),
            workers: None,
            auth: ctx.config.auth.clone(),
            device_days: ctx.config.pki.device_days,
            allow,
            erp: erp.clone(),
            audit_retention_days: ctx.config.audit.retention_days,
            health_listen: ctx.config.health.address()?,
            min_server_cert_days: ctx.config.health.min_server_cert_days,
        };
        for name in erp.names() {
            if let Some(c) = erp.collection(name) {
                tracing::info!(
                    "erp: collection {name}: {}",
                    c.upstream_origin()
                        .map_or_else(|| "pushed records only".to_owned(), |o| format!("reads through {o}"))
                );
            }
        }
        raise_open_files(
            ctx.config.limits.max_connections,
            ctx.config.limits.max_anonymous_connections,
        );
        // The database is open here, so no other server runs on this data directory: a
        // socket file left by one that died is stale.
        let admin_listener = crate::admin::socket::bind(&paths.data_dir)?;
        if let Err(e) = vault.write_crl() {
            tracing::warn!("could not rewrite {}: {e}", crate::app::pki::crl_path(&paths).display());
        }
        let vault = Arc::new(vault);
        let server_vault = self.dev.then(|| vault.clone());
        let admin_vault = vault.clone();
        signals.starting.store(true, std::sync::atomic::Ordering::SeqCst);
        let server = start(vault, options)?;
        let endpoint = match &ctx.config.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None if self.dev => base_url(server.addr()),
            None => super::device::endpoint_on_port(ctx, server.addr().port())?,
        };
        let settings = crate::admin::Settings {
            argon2: ctx.config.argon2.params(),
            device_days: ctx.config.pki.device_days,
            server_days: ctx.config.pki.server_days,
            region: ctx.config.auth.region.clone(),
            endpoint,
            erp: erp.clone(),
        };
        let reloader = server.reloader();
        let admin_reloader = reloader.clone();
        let _admin = admin_listener.serve(move |frame, send| {
            crate::admin::serve_frame(&admin_vault, &settings, frame, send, &|answer| {
                if matches!(answer, crate::admin::Response::ServerCert { .. }) {
                    reload("admin command", &admin_reloader);
                }
            })
        })?;
        let _ = signals.server.set(Reloadable {
            tls: reloader,
            live: server.live(),
            config_file: ctx.config_file.clone(),
            running: std::sync::Mutex::new(ctx.config.clone()),
            dev: self.dev,
        });
        println!("coffer listening on {}", base_url(server.addr()));
        if let Some(health) = server.health_addr() {
            tracing::info!("health and metrics on http://{health} (/healthz, /readyz, /metrics)");
        }
        if self.dev {
            let vault = server_vault.as_ref().ok_or_else(|| anyhow::anyhow!("no vault"))?;
            let profile = dev::write_profile(&paths, vault, &base_url(server.addr()), &ctx.config.auth.region)?;
            let c = dev_commands(&paths.keys_dir, &profile, &this_exe());
            println!(
                "with the reference client (it logs in by itself; profile in {}):",
                dev::dev_dir(&paths).join(dev::PROFILE_FILE).display()
            );
            println!("  {}", c.client_put);
            println!("  {}", c.client_list);
            if erp.collection(dev::DEMO_COLLECTION).is_some() {
                println!("  {}", c.client_erp);
            }
            println!("with curl (from this directory): log in, upload a file, fetch it back:");
            println!("  {}", c.curl_login);
            println!("  {}", c.curl_upload);
            println!("  {}", c.curl_fetch);
        }
        drop(server_vault);
        if signals.term_pending.load(std::sync::atomic::Ordering::SeqCst) {
            // Asked to stop while starting (actix-server may not have been listening
            // for signals yet): stop now, gracefully.
            server.stop()?;
        } else {
            server.wait()?;
        }
        tracing::info!("coffer stopped");
        Ok(())
    }
}
