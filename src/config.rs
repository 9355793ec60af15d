//! Configuration: one typed [`Config`], layered as defaults → TOML file → `COFFER_*`
//! environment variables → command-line flags, and validated once.
//!
//! The file is `--config FILE`, else `$COFFER_CONFIG`, else `./coffer.toml` when present.
//! Unknown keys are an error naming the key, so a typo never silently falls back to a
//! default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::crypto::kdf::KdfParams;

/// Environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "COFFER_CONFIG";
/// The file used when neither `--config` nor `$COFFER_CONFIG` names one, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "coffer.toml";
/// Default listen address of `coffer serve`.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
/// Default largest document, bytes (256 MiB).
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 256 * 1024 * 1024;

/// Every setting of coffer.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address `coffer serve` listens on (`serve --dev` ignores it: 127.0.0.1:8443 unless
    /// its own `--listen` says otherwise).
    pub listen: Option<SocketAddr>,
    /// Data directory (holds coffer.redb).
    pub data_dir: PathBuf,
    /// Keys directory (key file, CA and server certificates).
    pub keys_dir: PathBuf,
    /// redb page cache, MiB.
    pub cache_mib: usize,
    /// TLS settings.
    pub tls: TlsConfig,
    /// Request limits.
    pub limits: Limits,
    /// argon2id cost for new key files and new password hashes.
    pub argon2: Argon2Config,
    /// Certificate lifetimes.
    pub pki: PkiConfig,
    /// Request signatures, sessions, login lockout and failure rate limits.
    pub auth: AuthConfig,
    /// The URL devices reach the server at (`https://host:port`), written into client
    /// profiles; default: the server certificate's first name and the listen port.
    pub public_url: Option<String>,
    /// Networks connections are accepted from (`["203.0.113.0/24", "2001:db8::/32"]`);
    /// others are closed before the TLS handshake. Required by `coffer serve` (use
    /// `["0.0.0.0/0", "::/0"]` to allow every address); `serve --dev` allows loopback only.
    pub allow_cidrs: Option<Vec<String>>,
    /// The ERP record cache: its collections and limits.
    pub erp: ErpConfig,
    /// The audit log.
    pub audit: AuditConfig,
    /// Server logs (stderr).
    pub log: LogConfig,
    /// The plain-HTTP health and metrics listener.
    pub health: HealthConfig,
}

/// How server logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum LogFormat {
    /// One readable line per event (colours only on a terminal).
    #[default]
    #[serde(rename = "human")]
    Human,
    /// One JSON object per line, for journald, CloudWatch or any log shipper.
    #[serde(rename = "json")]
    Json,
}

/// Least severity that is logged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
pub enum LogLevel {
    /// Failures only.
    #[serde(rename = "error")]
    Error,
    /// Failures and conditions an admin should look at.
    #[serde(rename = "warn")]
    Warn,
    /// Also one line per request, start, stop and reload (the default).
    #[default]
    #[serde(rename = "info")]
    Info,
    /// Also detail useful when chasing a problem.
    #[serde(rename = "debug")]
    Debug,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "human" => Ok(Self::Human),
            "json" => Ok(Self::Json),
            _ => Err("expected human or json".to_owned()),
        }
    }
}

impl std::str::FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "error" => Ok(Self::Error),
            "warn" => Ok(Self::Warn),
            "info" => Ok(Self::Info),
            "debug" => Ok(Self::Debug),
            _ => Err("expected error, warn, info or debug".to_owned()),
        }
    }
}

/// `[log]`: server logs, written to stderr (journald keeps them under systemd).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `"human"` (default) or `"json"` (one object per line).
    pub format: LogFormat,
    /// `"error"`, `"warn"`, `"info"` (default) or `"debug"`; changes on SIGHUP.
    pub level: LogLevel,
}

/// `[health]`: `/healthz`, `/readyz` and `/metrics` over plain HTTP, for a local
/// monitoring agent. Never expose it beyond the machine.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Address of the listener (default `127.0.0.1:9464`); `"off"` turns it off.
    pub listen: String,
    /// `/readyz` fails when the server certificate expires within this many days.
    pub min_server_cert_days: u32,
    /// Allow `listen` to be an address beyond loopback (the routes have no
    /// authentication: restrict the port in the security group then).
    pub allow_remote: bool,
}

/// Default address of the health and metrics listener.
pub const DEFAULT_HEALTH_LISTEN: &str = "127.0.0.1:9464";

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_HEALTH_LISTEN.to_owned(),
            min_server_cert_days: 14,
            allow_remote: false,
        }
    }
}

impl HealthConfig {
    /// The listener's address, or `None` when turned off.
    pub fn address(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let addr: SocketAddr = match self.listen.trim() {
            "off" => return Ok(None),
            a => a.parse().map_err(|_| ConfigError::Invalid {
                key: "health.listen",
                message: format!("{a:?} is not an address: write e.g. 127.0.0.1:9464, or \"off\""),
            })?,
        };
        if !addr.ip().is_loopback() && !self.allow_remote {
            return Err(ConfigError::Invalid {
                key: "health.listen",
                message: format!(
                    "{addr} is not a loopback address, and /healthz, /readyz and /metrics have no authentication: \
                     keep it on 127.0.0.1 and scrape from the instance, or set health.allow_remote = true and \
                     restrict the port in the security group"
                ),
            });
        }
        Ok(Some(addr))
    }
}

/// `[audit]`: the tamper-evident audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Entries older than this many days are pruned (the chain stays verifiable from an
    /// anchor). 1 to 36500.
    pub retention_days: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            retention_days: crate::app::audit::DEFAULT_RETENTION_DAYS,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: None,
            data_dir: PathBuf::from("./data"),
            keys_dir: PathBuf::from("./keys"),
            cache_mib: 32,
            tls: TlsConfig::default(),
            limits: Limits::default(),
            argon2: Argon2Config::default(),
            pki: PkiConfig::default(),
            auth: AuthConfig::default(),
            public_url: None,
            allow_cidrs: None,
            erp: ErpConfig::default(),
            audit: AuditConfig::default(),
            log: LogConfig::default(),
            health: HealthConfig::default(),
        }
    }
}

/// Lowest TLS version offered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum TlsVersion {
    /// TLS 1.2 (then only ECDHE key exchange with AEAD suites) and 1.3.
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[default]
    #[serde(rename = "1.3")]
    Tls13,
}

/// `[tls]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// `"1.3"` (default) or `"1.2"`.
    pub min_version: TlsVersion,
}

/// `[limits]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest document accepted, bytes.
    pub max_upload_bytes: u64,
    /// Most documents in one page of `GET /v1/documents`.
    pub max_page_size: u32,
    /// Most open connections with a client certificate; beyond it each request is
    /// answered `503 too-many-connections` and the connection closed, and beyond twice it
    /// (counting every TCP connection, handshakes included) connections are closed before
    /// TLS.
    pub max_connections: u32,
    /// Most open connections from one address (IPv6: one /64); more are closed before TLS.
    pub max_connections_per_ip: u32,
    /// Most open connections without a client certificate (enrolment, strangers); more
    /// are answered `503 too-many-connections` and closed. They do not count towards
    /// `max_connections`, so strangers cannot crowd devices out.
    pub max_anonymous_connections: u32,
    /// Most uploads in progress at once, over all devices.
    pub max_uploads: u32,
    /// Most downloads and listings in progress at once, over all devices.
    pub max_downloads: u32,
    /// Most uploads plus downloads in progress at once for one device.
    pub max_transfers_per_device: u32,
    /// Seconds a client may take to send a request's headers.
    pub header_timeout_secs: u32,
    /// Seconds a request body may stall (no bytes arriving) before the request fails.
    pub body_idle_timeout_secs: u32,
    /// Requests one device may make per minute (burst and refill); more are answered
    /// `429 too-many-requests` with `Retry-After`.
    pub device_requests_per_minute: u32,
    /// Seconds requests in flight may take to finish after SIGTERM before they are cut
    /// (an upload cut then leaves nothing).
    pub shutdown_grace_secs: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            max_page_size: 500,
            max_connections: 1024,
            max_connections_per_ip: 128,
            max_anonymous_connections: 64,
            max_uploads: 32,
            max_downloads: 64,
            max_transfers_per_device: 6,
            header_timeout_secs: 10,
            body_idle_timeout_secs: 30,
            device_requests_per_minute: 600,
            shutdown_grace_secs: 30,
        }
    }
}

/// `[argon2]`: cost of new key files (`init`, `key passphrase`) and new password hashes.
/// Existing hashes and key files keep the parameters they were made with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Argon2Config {
    /// Memory, KiB.
    pub memory_kib: u32,
    /// Iterations.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for Argon2Config {
    fn default() -> Self {
        Self {
            memory_kib: KdfParams::DEFAULT.m_cost_kib,
            iterations: KdfParams::DEFAULT.t_cost,
            parallelism: KdfParams::DEFAULT.p_cost,
        }
    }
}

impl Argon2Config {
    /// As KDF parameters.
    pub fn params(self) -> KdfParams {
        KdfParams {
            m_cost_kib: self.memory_kib,
            t_cost: self.iterations,
            p_cost: self.parallelism,
        }
    }
}

/// `[pki]`: lifetimes of the certificates coffer issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PkiConfig {
    /// CA certificate, days (made once at `init`).
    pub ca_days: u32,
    /// Server certificate, days (`init`, `cert renew-server`).
    pub server_days: u32,
    /// Device certificates, days.
    pub device_days: u32,
}

impl Default for PkiConfig {
    fn default() -> Self {
        Self {
            ca_days: 3650,
            server_days: 397,
            device_days: 365,
        }
    }
}

/// `[auth]`: how requests prove who sent them.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Require an AWS SigV4 signature on every `/v1/` request.
    pub signatures: bool,
    /// Require a user session (`X-Amz-Security-Token`) for documents.
    pub sessions: bool,
    /// The SigV4 region (the service is always `coffer`).
    pub region: String,
    /// Absolute lifetime of a session, seconds.
    pub session_ttl_secs: u32,
    /// A session unused for this long expires, seconds.
    pub session_idle_secs: u32,
    /// Failed logins in a row that lock the account.
    pub max_login_failures: u32,
    /// The first lock's length, seconds; each further failure doubles it.
    pub lockout_secs: u32,
    /// The longest lock, seconds.
    pub lockout_max_secs: u32,
    /// Authentication failures one device may make per minute (burst and refill).
    pub device_failures_per_minute: u32,
    /// Authentication failures per minute from one IP address that are not attributable to
    /// an active device, and the budget for devices that are already failing.
    pub ip_failures_per_minute: u32,
    /// Password verifications (argon2id, ~64 MiB each) running at once.
    pub max_password_checks: u32,
    /// How far ahead of the server's clock a write may be dated, seconds. After a restart,
    /// writes are refused for this long (plus a second), so none that the previous process
    /// accepted can be replayed.
    pub max_future_write_secs: u32,
    /// Enrolment attempts (`POST /v1/enroll`, the one route open without a client
    /// certificate) per minute from one IP address (IPv6: per /64).
    pub enrolments_per_ip_per_minute: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            signatures: true,
            sessions: true,
            region: "local".to_owned(),
            session_ttl_secs: 8 * 3600,
            session_idle_secs: 30 * 60,
            max_login_failures: 5,
            lockout_secs: 60,
            lockout_max_secs: 3600,
            device_failures_per_minute: 10,
            ip_failures_per_minute: 60,
            max_password_checks: 2,
            max_future_write_secs: 10,
            enrolments_per_ip_per_minute: 10,
        }
    }
}

/// `[erp]`: the encrypted cache of ERP records.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ErpConfig {
    /// How often records past their stale window are purged (a duration, e.g. `10m`).
    pub purge_interval: String,
    /// Largest record value (JSON text), bytes.
    pub max_record_bytes: u32,
    /// Upstream calls in flight at once, over all collections; more wait for a turn.
    pub max_upstream_fetches: u32,
    /// The collections, by name (`[erp.collections.customers]`).
    pub collections: std::collections::BTreeMap<String, ErpCollectionConfig>,
}

impl Default for ErpConfig {
    fn default() -> Self {
        Self {
            purge_interval: "10m".to_owned(),
            max_record_bytes: 1024 * 1024,
            max_upstream_fetches: 16,
            collections: std::collections::BTreeMap::new(),
        }
    }
}

/// `[erp.collections.NAME]`: one collection of ERP records.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ErpCollectionConfig {
    /// Roles that may read (`admin`, `member`, `integration`); only `integration` writes.
    pub read_roles: Vec<String>,
    /// How long a stored record is fresh (default `15m`).
    #[serde(default = "default_erp_ttl")]
    pub ttl: String,
    /// How long past its freshness a record may still be served when the upstream fails
    /// (or, without an upstream, at all); default `24h`.
    #[serde(default = "default_erp_stale")]
    pub stale_if_error: String,
    /// URL template of the upstream ERP with `{key}` once in its path, e.g.
    /// `https://erp.internal/api/customers/{key}`. Without it, only pushed records exist.
    pub upstream: Option<String>,
    /// File holding the bearer token sent to the upstream (`Authorization: Bearer ...`).
    pub upstream_bearer_token_file: Option<PathBuf>,
    /// PEM file of the certificate authorities trusted for an `https` upstream (default:
    /// the system's).
    pub upstream_ca_file: Option<PathBuf>,
    /// PEM certificate chain presented to the upstream (with `upstream_client_key_file`).
    pub upstream_client_cert_file: Option<PathBuf>,
    /// PEM private key of `upstream_client_cert_file`.
    pub upstream_client_key_file: Option<PathBuf>,
    /// Time allowed to connect to the upstream (default `2s`).
    #[serde(default = "default_erp_connect_timeout")]
    pub upstream_connect_timeout: String,
    /// Time allowed for the whole upstream call (default `10s`); past it: `504`.
    #[serde(default = "default_erp_timeout")]
    pub upstream_timeout: String,
}

fn default_erp_ttl() -> String {
    "15m".to_owned()
}
fn default_erp_stale() -> String {
    "24h".to_owned()
}
fn default_erp_connect_timeout() -> String {
    "2s".to_owned()
}
fn default_erp_timeout() -> String {
    "10s".to_owned()
}

/// Parses a duration: a whole number with a unit, `s`, `m`, `h` or `d` (`90s`, `15m`,
/// `24h`, `7d`), or plain seconds. Returns seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: write e.g. 90s, 15m, 24h or 7d"))?;
    let unit_secs: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(unit_secs)
        .ok_or_else(|| format!("{text:?} is too long a duration"))
}

/// The configuration is invalid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file named by `--config` or `$COFFER_CONFIG` cannot be read.
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What toml reported (it names the key and the line).
        message: String,
    },
    /// An environment variable does not parse.
    #[error("environment variable {name}: {message}")]
    Env {
        /// The variable.
        name: &'static str,
        /// Why.
        message: String,
    },
    /// A value inside a named table (one ERP collection) is invalid.
    #[error("{key}: {message}")]
    InvalidAt {
        /// The key, as written in the file (`erp.collections.customers.ttl`).
        key: String,
        /// What is accepted.
        message: String,
    },
    /// A value is out of range.
    #[error("{key}: {message}")]
    Invalid {
        /// The key, as written in the file.
        key: &'static str,
        /// What is accepted.
        message: String,
    },
}

/// Environment variables that override file settings, with the key each sets.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("COFFER_LISTEN", "listen"),
    ("COFFER_DATA_DIR", "data_dir"),
    ("COFFER_KEYS_DIR", "keys_dir"),
    ("COFFER_CACHE_MIB", "cache_mib"),
    ("COFFER_TLS_MIN_VERSION", "tls.min_version"),
    ("COFFER_MAX_UPLOAD_BYTES", "limits.max_upload_bytes"),
    ("COFFER_MAX_PAGE_SIZE", "limits.max_page_size"),
    ("COFFER_MAX_CONNECTIONS", "limits.max_connections"),
    ("COFFER_MAX_CONNECTIONS_PER_IP", "limits.max_connections_per_ip"),
    ("COFFER_MAX_ANONYMOUS_CONNECTIONS", "limits.max_anonymous_connections"),
    ("COFFER_MAX_UPLOADS", "limits.max_uploads"),
    ("COFFER_MAX_DOWNLOADS", "limits.max_downloads"),
    ("COFFER_MAX_TRANSFERS_PER_DEVICE", "limits.max_transfers_per_device"),
    ("COFFER_HEADER_TIMEOUT_SECS", "limits.header_timeout_secs"),
    ("COFFER_BODY_IDLE_TIMEOUT_SECS", "limits.body_idle_timeout_secs"),
    ("COFFER_DEVICE_REQUESTS_PER_MINUTE", "limits.device_requests_per_minute"),
    ("COFFER_SHUTDOWN_GRACE_SECS", "limits.shutdown_grace_secs"),
    ("COFFER_LOG_FORMAT", "log.format"),
    ("COFFER_LOG_LEVEL", "log.level"),
    ("COFFER_HEALTH_LISTEN", "health.listen"),
    ("COFFER_KDF_MEMORY_KIB", "argon2.memory_kib"),
    ("COFFER_KDF_ITERATIONS", "argon2.iterations"),
    ("COFFER_KDF_PARALLELISM", "argon2.parallelism"),
    ("COFFER_CA_DAYS", "pki.ca_days"),
    ("COFFER_SERVER_CERT_DAYS", "pki.server_days"),
    ("COFFER_DEVICE_CERT_DAYS", "pki.device_days"),
    ("COFFER_SIGNATURES", "auth.signatures"),
    ("COFFER_SESSIONS", "auth.sessions"),
    ("COFFER_REGION", "auth.region"),
    ("COFFER_SESSION_TTL_SECS", "auth.session_ttl_secs"),
    ("COFFER_SESSION_IDLE_SECS", "auth.session_idle_secs"),
    ("COFFER_MAX_LOGIN_FAILURES", "auth.max_login_failures"),
    ("COFFER_LOCKOUT_SECS", "auth.lockout_secs"),
    ("COFFER_LOCKOUT_MAX_SECS", "auth.lockout_max_secs"),
    ("COFFER_DEVICE_FAILURES_PER_MINUTE", "auth.device_failures_per_minute"),
    ("COFFER_IP_FAILURES_PER_MINUTE", "auth.ip_failures_per_minute"),
    ("COFFER_MAX_PASSWORD_CHECKS", "auth.max_password_checks"),
    ("COFFER_MAX_FUTURE_WRITE_SECS", "auth.max_future_write_secs"),
    (
        "COFFER_ENROLMENTS_PER_IP_PER_MINUTE",
        "auth.enrolments_per_ip_per_minute",
    ),
    ("COFFER_PUBLIC_URL", "public_url"),
    ("COFFER_ALLOW_CIDRS", "allow_cidrs"),
];

impl Config {
    /// Parses a TOML document (`path` is only for messages).
    pub fn from_toml(text: &str, path: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })
    }

    /// Reads and parses a file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::from_toml(&text, &shown)
    }

    /// Defaults, then the file (`explicit`, else `$COFFER_CONFIG`, else `./coffer.toml` if
    /// present), then the environment. Flags are applied by the caller, then
    /// [`validate`](Self::validate).
    pub fn load(
        explicit: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(Self, Option<PathBuf>), ConfigError> {
        let file = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => match env(CONFIG_ENV) {
                Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
                _ => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.is_file()),
            },
        };
        let mut config = match &file {
            Some(p) => Self::from_file(p)?,
            None => Self::default(),
        };
        config.apply_env(env)?;
        Ok((config, file))
    }

    /// Applies the `COFFER_*` variables of [`ENV_KEYS`].
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(name: &'static str, value: &str) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            value.trim().parse().map_err(|e: T::Err| ConfigError::Env {
                name,
                message: e.to_string(),
            })
        }
        for &(name, _) in ENV_KEYS {
            let Some(value) = env(name) else { continue };
            match name {
                "COFFER_LISTEN" => self.listen = Some(parse(name, &value)?),
                "COFFER_DATA_DIR" => self.data_dir = PathBuf::from(value),
                "COFFER_KEYS_DIR" => self.keys_dir = PathBuf::from(value),
                "COFFER_CACHE_MIB" => self.cache_mib = parse(name, &value)?,
                "COFFER_TLS_MIN_VERSION" => {
                    self.tls.min_version = match value.trim() {
                        "1.2" => TlsVersion::Tls12,
                        "1.3" => TlsVersion::Tls13,
                        _ => {
                            return Err(ConfigError::Env {
                                name,
                                message: "expected 1.2 or 1.3".into(),
                            });
                        }
                    }
                }
                "COFFER_MAX_UPLOAD_BYTES" => self.limits.max_upload_bytes = parse(name, &value)?,
                "COFFER_MAX_PAGE_SIZE" => self.limits.max_page_size = parse(name, &value)?,
                "COFFER_MAX_CONNECTIONS" => self.limits.max_connections = parse(name, &value)?,
                "COFFER_MAX_CONNECTIONS_PER_IP" => self.limits.max_connections_per_ip = parse(name, &value)?,
                "COFFER_MAX_ANONYMOUS_CONNECTIONS" => self.limits.max_anonymous_connections = parse(name, &value)?,
                "COFFER_MAX_UPLOADS" => self.limits.max_uploads = parse(name, &value)?,
                "COFFER_MAX_DOWNLOADS" => self.limits.max_downloads = parse(name, &value)?,
                "COFFER_MAX_TRANSFERS_PER_DEVICE" => self.limits.max_transfers_per_device = parse(name, &value)?,
                "COFFER_HEADER_TIMEOUT_SECS" => self.limits.header_timeout_secs = parse(name, &value)?,
                "COFFER_BODY_IDLE_TIMEOUT_SECS" => self.limits.body_idle_timeout_secs = parse(name, &value)?,
                "COFFER_DEVICE_REQUESTS_PER_MINUTE" => self.limits.device_requests_per_minute = parse(name, &value)?,
                "COFFER_SHUTDOWN_GRACE_SECS" => self.limits.shutdown_grace_secs = parse(name, &value)?,
                "COFFER_LOG_FORMAT" => self.log.format = parse(name, &value)?,
                "COFFER_LOG_LEVEL" => self.log.level = parse(name, &value)?,
                "COFFER_HEALTH_LISTEN" => self.health.listen = value.trim().to_owned(),
                "COFFER_KDF_MEMORY_KIB" => self.argon2.memory_kib = parse(name, &value)?,
                "COFFER_KDF_ITERATIONS" => self.argon2.iterations = parse(name, &value)?,
                "COFFER_KDF_PARALLELISM" => self.argon2.parallelism = parse(name, &value)?,
                "COFFER_CA_DAYS" => self.pki.ca_days = parse(name, &value)?,
                "COFFER_SERVER_CERT_DAYS" => self.pki.server_days = parse(name, &value)?,
                "COFFER_DEVICE_CERT_DAYS" => self.pki.device_days = parse(name, &value)?,
                "COFFER_SIGNATURES" => self.auth.signatures = parse(name, &value)?,
                "COFFER_SESSIONS" => self.auth.sessions = parse(name, &value)?,
                "COFFER_REGION" => self.auth.region = value.trim().to_owned(),
                "COFFER_SESSION_TTL_SECS" => self.auth.session_ttl_secs = parse(name, &value)?,
                "COFFER_SESSION_IDLE_SECS" => self.auth.session_idle_secs = parse(name, &value)?,
                "COFFER_MAX_LOGIN_FAILURES" => self.auth.max_login_failures = parse(name, &value)?,
                "COFFER_LOCKOUT_SECS" => self.auth.lockout_secs = parse(name, &value)?,
                "COFFER_LOCKOUT_MAX_SECS" => self.auth.lockout_max_secs = parse(name, &value)?,
                "COFFER_DEVICE_FAILURES_PER_MINUTE" => self.auth.device_failures_per_minute = parse(name, &value)?,
                "COFFER_IP_FAILURES_PER_MINUTE" => self.auth.ip_failures_per_minute = parse(name, &value)?,
                "COFFER_MAX_PASSWORD_CHECKS" => self.auth.max_password_checks = parse(name, &value)?,
                "COFFER_MAX_FUTURE_WRITE_SECS" => self.auth.max_future_write_secs = parse(name, &value)?,
                "COFFER_ENROLMENTS_PER_IP_PER_MINUTE" => self.auth.enrolments_per_ip_per_minute = parse(name, &value)?,
                "COFFER_PUBLIC_URL" => self.public_url = Some(value.trim().to_owned()),
                "COFFER_ALLOW_CIDRS" => {
                    self.allow_cidrs = Some(
                        value
                            .split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect(),
                    )
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Checks every value's range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_owned(),
            })
        };
        if !(1..=65536).contains(&self.cache_mib) {
            return invalid("cache_mib", "must be 1 to 65536 (MiB)");
        }
        if !(1..=36_500).contains(&self.audit.retention_days) {
            return invalid("audit.retention_days", "must be 1 to 36500 (days)");
        }
        if self.limits.max_upload_bytes == 0 || self.limits.max_upload_bytes > 1 << 40 {
            return invalid("limits.max_upload_bytes", "must be 1 byte to 1 TiB");
        }
        if !(1..=10_000).contains(&self.limits.max_page_size) {
            return invalid("limits.max_page_size", "must be 1 to 10000");
        }
        let l = &self.limits;
        if !(1..=1_000_000).contains(&l.max_connections) {
            return invalid("limits.max_connections", "must be 1 to 1000000");
        }
        // Above `max_connections` it simply never binds.
        if !(1..=1_000_000).contains(&l.max_connections_per_ip) {
            return invalid("limits.max_connections_per_ip", "must be 1 to 1000000");
        }
        if !(1..=1_000_000).contains(&l.max_anonymous_connections) {
            return invalid("limits.max_anonymous_connections", "must be 1 to 1000000");
        }
        if !(1..=10_000).contains(&l.max_uploads) {
            return invalid("limits.max_uploads", "must be 1 to 10000");
        }
        if !(1..=10_000).contains(&l.max_downloads) {
            return invalid("limits.max_downloads", "must be 1 to 10000");
        }
        if !(1..=1_000).contains(&l.max_transfers_per_device) {
            return invalid("limits.max_transfers_per_device", "must be 1 to 1000");
        }
        if !(1..=3_600).contains(&l.header_timeout_secs) {
            return invalid("limits.header_timeout_secs", "must be 1 to 3600");
        }
        if !(1..=3_600).contains(&l.body_idle_timeout_secs) {
            return invalid("limits.body_idle_timeout_secs", "must be 1 to 3600");
        }
        if !(1..=1_000_000).contains(&l.device_requests_per_minute) {
            return invalid("limits.device_requests_per_minute", "must be 1 to 1000000");
        }
        if l.shutdown_grace_secs > 3_600 {
            return invalid("limits.shutdown_grace_secs", "must be 0 to 3600");
        }
        self.health.address()?;
        if !(1..=365).contains(&self.health.min_server_cert_days) {
            return invalid("health.min_server_cert_days", "must be 1 to 365");
        }
        if let Err(e) = self.argon2.params().validate() {
            return invalid("argon2", &e.to_string());
        }
        if !(1..=36_500).contains(&self.pki.ca_days) {
            return invalid("pki.ca_days", "must be 1 to 36500");
        }
        if !(1..=3650).contains(&self.pki.server_days) {
            return invalid("pki.server_days", "must be 1 to 3650");
        }
        if !(1..=3650).contains(&self.pki.device_days) {
            return invalid("pki.device_days", "must be 1 to 3650");
        }
        let a = &self.auth;
        let region_ok = !a.region.is_empty()
            && a.region.len() <= 64
            && a.region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !region_ok {
            return invalid("auth.region", "must be 1 to 64 letters, digits, '-' or '_'");
        }
        if !(60..=30 * 86_400).contains(&a.session_ttl_secs) {
            return invalid("auth.session_ttl_secs", "must be 60 to 2592000 (30 days)");
        }
        if !(60..=a.session_ttl_secs).contains(&a.session_idle_secs) {
            return invalid("auth.session_idle_secs", "must be 60 to auth.session_ttl_secs");
        }
        if !(1..=100).contains(&a.max_login_failures) {
            return invalid("auth.max_login_failures", "must be 1 to 100");
        }
        if !(1..=86_400).contains(&a.lockout_secs) {
            return invalid("auth.lockout_secs", "must be 1 to 86400");
        }
        if !(a.lockout_secs..=30 * 86_400).contains(&a.lockout_max_secs) {
            return invalid("auth.lockout_max_secs", "must be auth.lockout_secs to 2592000");
        }
        if !(1..=100_000).contains(&a.device_failures_per_minute) {
            return invalid("auth.device_failures_per_minute", "must be 1 to 100000");
        }
        if !(1..=1_000_000).contains(&a.ip_failures_per_minute) {
            return invalid("auth.ip_failures_per_minute", "must be 1 to 1000000");
        }
        if !(1..=64).contains(&a.max_password_checks) {
            return invalid("auth.max_password_checks", "must be 1 to 64");
        }
        if a.max_future_write_secs > 300 {
            return invalid("auth.max_future_write_secs", "must be 0 to 300");
        }
        if !(1..=10_000).contains(&a.enrolments_per_ip_per_minute) {
            return invalid("auth.enrolments_per_ip_per_minute", "must be 1 to 10000");
        }
        if let Some(cidrs) = &self.allow_cidrs
            && let Err(e) = crate::http::allowlist::Allowlist::parse(cidrs)
        {
            return invalid("allow_cidrs", &e.to_string());
        }
        crate::erp::Erp::parse(&self.erp)?;
        if let Some(url) = &self.public_url {
            let ok = url.starts_with("https://") && url.len() > 8 && !url.chars().any(char::is_whitespace);
            if !ok {
                return invalid(
                    "public_url",
                    "must be an https:// URL such as https://coffer.example.com:8443",
                );
            }
        }
        Ok(())
    }

    /// The keys (dotted, as written in the file: `limits.max_uploads`,
    /// `erp.collections.customers.ttl`) whose values differ between `self` and `other`.
    pub fn changed_keys(&self, other: &Self) -> Vec<String> {
        fn walk(prefix: &str, a: Option<&toml::Value>, b: Option<&toml::Value>, out: &mut Vec<String>) {
            match (a, b) {
                (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
                    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                    for k in keys {
                        let key = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        walk(&key, a.get(k), b.get(k), out);
                    }
                }
                (a, b) if a != b => out.push(prefix.to_owned()),
                _ => {}
            }
        }
        let (a, b) = (toml::Value::try_from(self).ok(), toml::Value::try_from(other).ok());
        let mut out = Vec::new();
        walk("", a.as_ref(), b.as_ref(), &mut out);
        out
    }

    /// The listen address: the configured one, else `fallback`.
    pub fn listen_or(&self, fallback: SocketAddr) -> SocketAddr {
        self.listen.unwrap_or(fallback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration(" 24h "), Ok(86_400));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        assert_eq!(parse_duration("30"), Ok(30));
        for bad in ["", "m", "1.5h", "-1s", "10w", "1 h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn changed_keys_are_named_as_written() {
        let a = Config::from_toml(
            "[limits]\nmax_uploads = 3\n[erp.collections.c]\nread_roles = [\"member\"]\n",
            "a",
        )
        .unwrap();
        let b = Config::from_toml(
            "public_url = \"https://x\"\n[limits]\nmax_uploads = 4\n[erp.collections.c]\nread_roles = [\"member\"]\nttl = \"1h\"\n",
            "b",
        )
        .unwrap();
        assert_eq!(a.changed_keys(&a.clone()), Vec::<String>::new());
        assert_eq!(
            a.changed_keys(&b),
            ["erp.collections.c.ttl", "limits.max_uploads", "public_url"]
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("lisen = \"1.2.3.4:1\"\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen"), "{err}");
        let err = Config::from_toml("[limits]\nmax_upload = 5\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_upload"), "{err}");
    }

    #[test]
    fn layers_apply_in_order() {
        let mut c = Config::from_toml("cache_mib = 8\n[limits]\nmax_upload_bytes = 10\n", "x").unwrap();
        c.apply_env(|k| (k == "COFFER_MAX_UPLOAD_BYTES").then(|| "20".to_owned()))
            .unwrap();
        assert_eq!(c.cache_mib, 8);
        assert_eq!(c.limits.max_upload_bytes, 20);
        assert_eq!(c.tls.min_version, TlsVersion::Tls13);
        c.validate().unwrap();
    }

    #[test]
    fn auth_defaults_are_on_and_bad_auth_values_are_named() {
        let c = Config::default();
        assert!(c.auth.signatures && c.auth.sessions);
        assert_eq!(c.auth.region, "local");
        for (toml, key) in [
            ("[auth]\nregion = \"eu west\"\n", "auth.region"),
            (
                "[auth]\nsession_ttl_secs = 600\nsession_idle_secs = 601\n",
                "auth.session_idle_secs",
            ),
            ("[auth]\nmax_login_failures = 0\n", "auth.max_login_failures"),
            (
                "[auth]\nlockout_secs = 120\nlockout_max_secs = 60\n",
                "auth.lockout_max_secs",
            ),
            ("public_url = \"http://x\"\n", "public_url"),
        ] {
            let err = Config::from_toml(toml, "x")
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
        let mut c = Config::default();
        c.apply_env(|k| match k {
            "COFFER_SIGNATURES" => Some("false".into()),
            "COFFER_REGION" => Some("eu-central-1".into()),
            _ => None,
        })
        .unwrap();
        assert!(!c.auth.signatures);
        assert_eq!(c.auth.region, "eu-central-1");
        c.validate().unwrap();
        assert!(
            c.apply_env(|k| (k == "COFFER_SESSIONS").then(|| "maybe".into()))
                .is_err()
        );
    }

    #[test]
    fn bad_values_are_refused() {
        let c = Config::from_toml("[pki]\ndevice_days = 0\n", "x").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("pki.device_days"));
        let err = Config::from_toml("[tls]\nmin_version = \"1.1\"\n", "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("1.1") || err.contains("min_version"), "{err}");
        let mut c = Config::default();
        assert!(
            c.apply_env(|k| (k == "COFFER_LISTEN").then(|| "nowhere".into()))
                .is_err()
        );
    }
}
