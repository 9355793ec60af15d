//! The ERP record cache at run time: the configured collections, read-through from the
//! upstream ERP with one upstream call per key at a time ("single flight"), serving stale
//! records when the upstream fails, the counters `coffer erp stats` shows, and the sweep
//! that purges records past their stale window. Storage and encryption are in
//! [`crate::app::erp`].

pub mod upstream;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};

use crate::app::erp::{ErpRecord, NewErpRecord};
use crate::app::{Vault, VaultError};
use crate::config::{ConfigError, ErpConfig, parse_duration};
use crate::model::{Role, Timestamp};
use upstream::{FetchError, Fetched, Template, TlsFiles, Upstream};

/// Longest record key, bytes (UTF-8).
pub const MAX_KEY_BYTES: usize = 512;
/// Largest `erp.max_record_bytes`.
pub const MAX_RECORD_BYTES_LIMIT: u32 = 16 * 1024 * 1024;
/// The cache's name in `Cache-Status`.
pub const CACHE_NAME: &str = "coffer";

/// Checks a record key: 1 to 512 bytes of UTF-8 without control characters, not `.` or
/// `..` (which a URL path would resolve).
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!("a record key is 1 to {MAX_KEY_BYTES} bytes"));
    }
    if key.chars().any(char::is_control) {
        return Err("a record key must not contain control characters".into());
    }
    if key == "." || key == ".." {
        return Err("a record key cannot be \".\" or \"..\"".into());
    }
    Ok(())
}

/// Checks a collection name: 1 to 64 of `a-z`, `0-9`, `_`, `-`, starting with a letter or
/// digit.
pub fn check_collection_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err("a collection name is 1 to 64 of a-z, 0-9, '_' and '-', starting with a letter or digit".into())
    }
}

/// Counts since the server started, per collection.
#[derive(Debug, Default)]
struct AtomicCounters {
    hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
    refreshes: AtomicU64,
    errors: AtomicU64,
    upstream_calls: AtomicU64,
}

/// A snapshot of a collection's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// Fresh records served from the cache.
    pub hits: u64,
    /// Reads that found no usable record (fetched from the upstream, or 404).
    pub misses: u64,
    /// Stale records served (the upstream failed, or the collection has none).
    pub stale: u64,
    /// Expired records fetched again successfully.
    pub refreshes: u64,
    /// Upstream calls that failed or timed out.
    pub errors: u64,
    /// Upstream calls made.
    pub upstream_calls: u64,
}

/// The upstream part of a collection's settings.
#[derive(Debug)]
struct UpstreamSettings {
    template: Template,
    bearer_file: Option<std::path::PathBuf>,
    ca_file: Option<std::path::PathBuf>,
    client: Option<(std::path::PathBuf, std::path::PathBuf)>,
    connect_timeout: Duration,
    timeout: Duration,
}

/// One configured collection.
#[derive(Debug)]
pub struct Collection {
    name: String,
    read_roles: Vec<Role>,
    ttl_ms: i64,
    stale_ms: i64,
    settings: Option<UpstreamSettings>,
    upstream: Option<Arc<Upstream>>,
    counters: AtomicCounters,
}

impl Collection {
    /// The collection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `role` may read it.
    pub fn readable_by(&self, role: Role) -> bool {
        self.read_roles.contains(&role)
    }

    /// Whether records are fetched from an upstream.
    pub fn has_upstream(&self) -> bool {
        self.settings.is_some()
    }

    /// The upstream's origin (`scheme://authority`), if it has one.
    pub fn upstream_origin(&self) -> Option<&str> {
        self.settings.as_ref().map(|s| s.template.origin())
    }

    /// Freshness of a newly stored record.
    pub fn ttl_ms(&self) -> i64 {
        self.ttl_ms
    }

    /// How long past freshness a record may be served stale.
    pub fn stale_ms(&self) -> i64 {
        self.stale_ms
    }

    fn count(&self, which: impl Fn(&AtomicCounters) -> &AtomicU64) {
        which(&self.counters).fetch_add(1, Ordering::Relaxed);
    }

    /// Until when `r` may be served stale under the current configuration.
    fn stale_until(&self, r: &ErpRecord) -> Timestamp {
        Timestamp(r.fresh_until.0.saturating_add(self.stale_ms))
    }
}

/// What a single flight produced.
#[derive(Debug)]
enum Outcome {
    /// The record was fresh by the time the flight started (another flight stored it).
    Fresh(ErpRecord),
    /// Fetched and stored (or a newer pushed record kept).
    Stored(ErpRecord),
    /// The upstream has no such record; any cached copy was removed.
    Gone,
    /// The upstream call failed.
    Failed(FetchError),
    /// Storing failed.
    Internal(String),
}

type Flight = watch::Receiver<Option<Arc<Outcome>>>;

#[derive(Debug)]
struct Inner {
    collections: BTreeMap<String, Collection>,
    purge_interval: Duration,
    max_record_bytes: u32,
    fetches: Arc<Semaphore>,
    flights: Mutex<HashMap<(String, String), Flight>>,
    live: bool,
}

/// The configured ERP collections and their run-time state. Cloning shares it.
#[derive(Clone, Debug)]
pub struct Erp {
    inner: Arc<Inner>,
}

impl Default for Erp {
    fn default() -> Self {
        Self::parse(&ErpConfig::default()).unwrap_or_else(|_| unreachable!("the default ERP configuration is valid"))
    }
}

/// How a record was served, for `Cache-Status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// Fresh from the cache.
    Hit,
    /// Served stale: the collection has no upstream.
    StaleNoUpstream,
    /// Fetched because there was no record (`collapsed`: waited on another request's call).
    Miss {
        /// Waited on another request's fetch.
        collapsed: bool,
    },
    /// Fetched because the record had expired.
    Refreshed {
        /// Waited on another request's fetch.
        collapsed: bool,
    },
    /// The upstream failed; a stale record was served.
    StaleIfError {
        /// 502 or 504.
        fwd_status: u16,
    },
}

/// A record served, and how.
#[derive(Clone, Debug)]
pub struct Served {
    /// The record.
    pub record: ErpRecord,
    /// How it was served.
    pub via: Via,
    /// The time it was served at.
    pub now: Timestamp,
}

impl Served {
    /// Whole seconds of freshness left (negative: past freshness).
    pub fn ttl_secs(&self) -> i64 {
        (self.record.fresh_until.0 - self.now.0).div_euclid(1000)
    }

    /// Whole seconds since coffer stored it.
    pub fn age_secs(&self) -> u64 {
        u64::try_from((self.now.0 - self.record.stored.0).max(0) / 1000).unwrap_or(0)
    }

    /// The `Cache-Status` field value (RFC 9211).
    pub fn cache_status(&self) -> String {
        let ttl = self.ttl_secs();
        match &self.via {
            Via::Hit => format!("{CACHE_NAME}; hit; ttl={ttl}"),
            Via::StaleNoUpstream => format!("{CACHE_NAME}; hit; ttl={ttl}; detail=stale"),
            Via::Miss { collapsed } => format!(
                "{CACHE_NAME}; fwd=miss; fwd-status=200; stored; ttl={ttl}{}",
                if *collapsed { "; collapsed" } else { "" }
            ),
            Via::Refreshed { collapsed } => format!(
                "{CACHE_NAME}; fwd=stale; fwd-status=200; stored; ttl={ttl}{}",
                if *collapsed { "; collapsed" } else { "" }
            ),
            Via::StaleIfError { fwd_status } => {
                format!("{CACHE_NAME}; fwd=stale; fwd-status={fwd_status}; ttl={ttl}; detail=stale-if-error")
            }
        }
    }
}

/// Why a read produced no record.
#[derive(Debug)]
pub enum ReadError {
    /// No such record (and the upstream has none either, or there is no upstream).
    NotFound,
    /// The upstream failed and no stale record could stand in.
    UpstreamFailed,
    /// The upstream did not answer in time and no stale record could stand in.
    UpstreamTimeout,
    /// The vault failed (damage, I/O).
    Vault(VaultError),
    /// Something else failed; logged.
    Internal,
}

impl From<VaultError> for ReadError {
    fn from(e: VaultError) -> Self {
        Self::Vault(e)
    }
}

fn duration(key: &str, text: &str) -> Result<u64, ConfigError> {
    parse_duration(text).map_err(|message| ConfigError::InvalidAt {
        key: key.to_owned(),
        message,
    })
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ReadError> {
    tokio::task::spawn_blocking(f).await.map_err(|_| ReadError::Internal)
}

impl Erp {
    /// Checks the configuration without touching any file or network (for `validate`
    /// and for admin commands run without the server).
    pub fn parse(config: &ErpConfig) -> Result<Self, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::InvalidAt {
            key: key.to_owned(),
            message,
        };
        let purge = duration("erp.purge_interval", &config.purge_interval)?;
        if !(10..=7 * 86_400).contains(&purge) {
            return Err(invalid("erp.purge_interval", "must be 10s to 7d".into()));
        }
        if !(1..=MAX_RECORD_BYTES_LIMIT).contains(&config.max_record_bytes) {
            return Err(invalid(
                "erp.max_record_bytes",
                format!("must be 1 to {MAX_RECORD_BYTES_LIMIT}"),
            ));
        }
        if !(1..=1024).contains(&config.max_upstream_fetches) {
            return Err(invalid("erp.max_upstream_fetches", "must be 1 to 1024".into()));
        }
        let mut collections = BTreeMap::new();
        for (name, c) in &config.collections {
            let at = |field: &str| format!("erp.collections.{name}.{field}");
            check_collection_name(name).map_err(|m| invalid(&format!("erp.collections.{name}"), m))?;
            let mut read_roles = Vec::new();
            for r in &c.read_roles {
                let role: Role = r.parse().map_err(|m| invalid(&at("read_roles"), m))?;
                if !read_roles.contains(&role) {
                    read_roles.push(role);
                }
            }
            let ttl = duration(&at("ttl"), &c.ttl)?;
            if !(1..=365 * 86_400).contains(&ttl) {
                return Err(invalid(&at("ttl"), "must be 1s to 365d".into()));
            }
            let stale = duration(&at("stale_if_error"), &c.stale_if_error)?;
            if stale > 365 * 86_400 {
                return Err(invalid(&at("stale_if_error"), "must be 0s to 365d".into()));
            }
            let connect_timeout = duration(&at("upstream_connect_timeout"), &c.upstream_connect_timeout)?;
            let timeout = duration(&at("upstream_timeout"), &c.upstream_timeout)?;
            if !(1..=300).contains(&connect_timeout) {
                return Err(invalid(&at("upstream_connect_timeout"), "must be 1s to 300s".into()));
            }
            if !(1..=300).contains(&timeout) {
                return Err(invalid(&at("upstream_timeout"), "must be 1s to 300s".into()));
            }
            let client = match (&c.upstream_client_cert_file, &c.upstream_client_key_file) {
                (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
                (None, None) => None,
                _ => {
                    return Err(invalid(
                        &at("upstream_client_cert_file"),
                        "set both upstream_client_cert_file and upstream_client_key_file, or neither".into(),
                    ));
                }
            };
            let settings = match &c.upstream {
                Some(url) => {
                    let template = Template::parse(url).map_err(|m| invalid(&at("upstream"), m))?;
                    if !template.is_https() && (c.upstream_ca_file.is_some() || client.is_some()) {
                        return Err(invalid(
                            &at("upstream"),
                            "TLS files are set but the upstream is http://; use https://".into(),
                        ));
                    }
                    Some(UpstreamSettings {
                        template,
                        bearer_file: c.upstream_bearer_token_file.clone(),
                        ca_file: c.upstream_ca_file.clone(),
                        client,
                        connect_timeout: Duration::from_secs(connect_timeout),
                        timeout: Duration::from_secs(timeout),
                    })
                }
                None if c.upstream_bearer_token_file.is_some() || c.upstream_ca_file.is_some() || client.is_some() => {
                    return Err(invalid(
                        &at("upstream"),
                        "upstream credentials are set but no upstream URL".into(),
                    ));
                }
                None => None,
            };
            collections.insert(
                name.clone(),
                Collection {
                    name: name.clone(),
                    read_roles,
                    ttl_ms: i64::try_from(ttl * 1000).unwrap_or(i64::MAX),
                    stale_ms: i64::try_from(stale * 1000).unwrap_or(i64::MAX),
                    settings,
                    upstream: None,
                    counters: AtomicCounters::default(),
                },
            );
        }
        Ok(Self {
            inner: Arc::new(Inner {
                collections,
                purge_interval: Duration::from_secs(purge),
                max_record_bytes: config.max_record_bytes,
                fetches: Arc::new(Semaphore::new(config.max_upstream_fetches as usize)),
                flights: Mutex::new(HashMap::new()),
                live: false,
            }),
        })
    }

    /// Checks the configuration, reads the upstream credentials and builds the upstream
    /// agents: what the server runs with.
    pub fn from_config(config: &ErpConfig) -> Result<Self, ConfigError> {
        let parsed = Self::parse(config)?;
        let Ok(mut inner) = Arc::try_unwrap(parsed.inner) else {
            unreachable!("a freshly parsed configuration is not shared")
        };
        let max = u64::from(inner.max_record_bytes);
        for c in inner.collections.values_mut() {
            if let Some(s) = &c.settings {
                let tls = TlsFiles {
                    ca: s.ca_file.as_deref(),
                    client: s.client.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
                };
                let upstream = Upstream::new(
                    s.template.clone(),
                    s.bearer_file.as_deref(),
                    &tls,
                    s.connect_timeout,
                    s.timeout,
                    max,
                )
                .map_err(|message| ConfigError::InvalidAt {
                    key: format!("erp.collections.{}.upstream", c.name),
                    message,
                })?;
                c.upstream = Some(Arc::new(upstream));
            }
        }
        inner.live = true;
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The collection `name`, if configured.
    pub fn collection(&self, name: &str) -> Option<&Collection> {
        self.inner.collections.get(name)
    }

    /// The configured collections' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.inner.collections.keys().map(String::as_str)
    }

    /// Largest record value, bytes.
    pub fn max_record_bytes(&self) -> usize {
        self.inner.max_record_bytes as usize
    }

    /// How often the sweep runs.
    pub fn purge_interval(&self) -> Duration {
        self.inner.purge_interval
    }

    /// Whether this is the server's cache (counters mean something).
    pub fn is_live(&self) -> bool {
        self.inner.live
    }

    /// The counters of `collection` since the start.
    pub fn counters(&self, collection: &str) -> Option<Counters> {
        let c = &self.inner.collections.get(collection)?.counters;
        Some(Counters {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            stale: c.stale.load(Ordering::Relaxed),
            refreshes: c.refreshes.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            upstream_calls: c.upstream_calls.load(Ordering::Relaxed),
        })
    }

    /// Reads `key` of `collection` (already authorised and checked): from the cache when
    /// fresh, else from the upstream (one call per key at a time), else stale within its
    /// window.
    pub async fn read(&self, vault: &Arc<Vault>, collection: &Collection, key: &str) -> Result<Served, ReadError> {
        let cached = {
            let (vault, name, key) = (vault.clone(), collection.name.clone(), key.to_owned());
            blocking(move || vault.erp_get(&name, &key)).await??
        };
        let now = Timestamp::now();
        if let Some(r) = &cached
            && now < r.fresh_until
        {
            collection.count(|c| &c.hits);
            return Ok(Served {
                record: r.clone(),
                via: Via::Hit,
                now,
            });
        }
        let Some(upstream) = &collection.upstream else {
            return match cached {
                Some(r) if now < collection.stale_until(&r) => {
                    collection.count(|c| &c.stale);
                    Ok(Served {
                        record: r,
                        via: Via::StaleNoUpstream,
                        now,
                    })
                }
                _ => {
                    collection.count(|c| &c.misses);
                    Err(ReadError::NotFound)
                }
            };
        };
        let (outcome, collapsed) = self.fly(vault, collection, upstream, key).await;
        let now = Timestamp::now();
        match &*outcome {
            Outcome::Fresh(r) => {
                collection.count(|c| &c.hits);
                Ok(Served {
                    record: r.clone(),
                    via: Via::Hit,
                    now,
                })
            }
            Outcome::Stored(r) => {
                let via = if cached.is_some() {
                    collection.count(|c| &c.refreshes);
                    Via::Refreshed { collapsed }
                } else {
                    collection.count(|c| &c.misses);
                    Via::Miss { collapsed }
                };
                Ok(Served {
                    record: r.clone(),
                    via,
                    now,
                })
            }
            Outcome::Gone => {
                collection.count(|c| &c.misses);
                Err(ReadError::NotFound)
            }
            Outcome::Failed(e) => {
                let fwd_status = if *e == FetchError::Timeout { 504 } else { 502 };
                match cached {
                    Some(r) if now < collection.stale_until(&r) => {
                        collection.count(|c| &c.stale);
                        Ok(Served {
                            record: r,
                            via: Via::StaleIfError { fwd_status },
                            now,
                        })
                    }
                    _ if fwd_status == 504 => Err(ReadError::UpstreamTimeout),
                    _ => Err(ReadError::UpstreamFailed),
                }
            }
            Outcome::Internal(_) => Err(ReadError::Internal),
        }
    }

    /// Joins the flight for (collection, key), or starts it. Returns its outcome and
    /// whether this request joined another's flight.
    async fn fly(
        &self,
        vault: &Arc<Vault>,
        collection: &Collection,
        upstream: &Arc<Upstream>,
        key: &str,
    ) -> (Arc<Outcome>, bool) {
        let flight_key = (collection.name.clone(), key.to_owned());
        let (mut rx, joined) = {
            let mut flights = self.inner.flights.lock().unwrap_or_else(PoisonError::into_inner);
            match flights.get(&flight_key) {
                Some(rx) => (rx.clone(), true),
                None => {
                    let (tx, rx) = watch::channel(None);
                    flights.insert(flight_key.clone(), rx.clone());
                    self.launch(vault.clone(), collection, upstream.clone(), flight_key, tx);
                    (rx, false)
                }
            }
        };
        // The flight runs on its own task, bounded by the upstream timeout; waiting here is
        // bounded too, in case it queued long for a turn.
        let patience = upstream.timeout() * 2 + Duration::from_secs(5);
        let done = tokio::time::timeout(patience, rx.wait_for(Option::is_some)).await;
        let outcome = match done {
            Ok(Ok(value)) => value.clone(),
            Ok(Err(_)) => None,
            Err(_) => Some(Arc::new(Outcome::Failed(FetchError::Timeout))),
        };
        (
            outcome.unwrap_or_else(|| Arc::new(Outcome::Internal("the upstream call was abandoned".into()))),
            joined,
        )
    }

    /// Starts a flight on its own task, so a caller going away does not cancel it.
    fn launch(
        &self,
        vault: Arc<Vault>,
        collection: &Collection,
        upstream: Arc<Upstream>,
        flight_key: (String, String),
        tx: watch::Sender<Option<Arc<Outcome>>>,
    ) {
        let erp = self.clone();
        let ttl_ms = collection.ttl_ms;
        let stale_ms = collection.stale_ms;
        tokio::spawn(async move {
            let permit = erp.inner.fetches.clone().acquire_owned().await;
            // Everyone who asked may have given up while this waited for its turn (the
            // map holds one receiver): then the ERP is not called for nobody.
            // Checked under the map's lock, which a joining request also takes to clone
            // its receiver, so nobody can join a flight that is being dropped.
            {
                let mut flights = erp.inner.flights.lock().unwrap_or_else(PoisonError::into_inner);
                if tx.receiver_count() <= 1 {
                    flights.remove(&flight_key);
                    return;
                }
            }
            let (name, key) = flight_key.clone();
            let counting = erp.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                // Another flight may have stored it since this request looked.
                match vault.erp_get(&name, &key) {
                    Ok(Some(r)) if Timestamp::now() < r.fresh_until => return Outcome::Fresh(r),
                    Ok(_) => {}
                    Err(e) => return Outcome::Internal(e.to_string()),
                }
                if let Some(c) = counting.collection(&name) {
                    c.count(|c| &c.upstream_calls);
                }
                let started = Timestamp::now();
                match upstream.fetch(&key) {
                    Ok(Fetched::Found(value)) => {
                        let now = Timestamp::now();
                        let fresh_until = Timestamp(now.0.saturating_add(ttl_ms));
                        let new = NewErpRecord {
                            key: key.clone(),
                            value,
                            fresh_until,
                            stale_until: Timestamp(fresh_until.0.saturating_add(stale_ms)),
                        };
                        match vault.erp_store_fetched(&name, new, now, started) {
                            Ok(r) => Outcome::Stored(r),
                            Err(e) => Outcome::Internal(e.to_string()),
                        }
                    }
                    Ok(Fetched::Gone) => match vault.erp_delete(&name, &key) {
                        Ok(_) => Outcome::Gone,
                        Err(e) => Outcome::Internal(e.to_string()),
                    },
                    Err(e) => {
                        if let Some(c) = counting.collection(&name) {
                            c.count(|c| &c.errors);
                        }
                        let why = match &e {
                            FetchError::Timeout => "timed out".to_owned(),
                            FetchError::Failed(m) => m.clone(),
                        };
                        eprintln!(
                            "erp: upstream of collection {name} ({}) failed: {why}",
                            upstream.origin()
                        );
                        Outcome::Failed(e)
                    }
                }
            })
            .await
            .unwrap_or_else(|_| Outcome::Internal("the upstream call panicked".into()));
            if let Outcome::Internal(why) = &outcome {
                eprintln!("error: erp: collection {}: {why}", flight_key.0);
            }
            let _ = tx.send(Some(Arc::new(outcome)));
            let mut flights = erp.inner.flights.lock().unwrap_or_else(PoisonError::into_inner);
            flights.remove(&flight_key);
        });
    }

    /// Removes records past their stale window (for collections no longer configured: past
    /// the window recorded when they were stored). Returns how many.
    pub fn sweep(&self, vault: &Vault, now: Timestamp) -> Result<u64, VaultError> {
        vault.erp_sweep(|name, fresh_until, stale_until| match self.collection(name) {
            Some(c) => now.0 >= fresh_until.0.saturating_add(c.stale_ms),
            None => now >= stale_until,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_names_are_checked() {
        for good in [
            "C-10023",
            "a/b",
            "Müller & Co",
            "x".repeat(512).as_str(),
            "...",
            "a b?c#d",
        ] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a\nb", "a\u{7f}", "x".repeat(513).as_str()] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        assert!(check_collection_name("price_lists-2").is_ok());
        for bad in ["", "Customers", "_x", "a.b", "x".repeat(65).as_str()] {
            assert!(check_collection_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn configuration_errors_name_the_key() {
        let parse = |toml: &str| {
            crate::config::Config::from_toml(toml, "x")
                .and_then(|c| c.validate().map(|()| c))
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        assert!(parse("[erp.collections.customers]\nread_roles = [\"member\"]\n").is_ok());
        for (toml, key) in [
            ("[erp.collections.customers]\n", "read_roles"),
            (
                "[erp.collections.customers]\nread_roles = [\"boss\"]\n",
                "erp.collections.customers.read_roles",
            ),
            (
                "[erp.collections.customers]\nread_roles = []\nttl = \"0s\"\n",
                "erp.collections.customers.ttl",
            ),
            (
                "[erp.collections.customers]\nread_roles = []\nupstream = \"https://erp/x\"\n",
                "erp.collections.customers.upstream",
            ),
            (
                "[erp.collections.customers]\nread_roles = []\nupstream_bearer_token_file = \"/t\"\n",
                "erp.collections.customers.upstream",
            ),
            (
                "[erp.collections.Customers]\nread_roles = []\n",
                "erp.collections.Customers",
            ),
            ("[erp]\nmax_record_bytes = 0\n", "erp.max_record_bytes"),
            ("[erp]\npurge_interval = \"1s\"\n", "erp.purge_interval"),
            ("[erp.collections.c]\nread_roles = []\ncolour = 1\n", "colour"),
        ] {
            let err = parse(toml).expect_err(toml);
            assert!(err.contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn cache_status_follows_rfc_9211() {
        let record = ErpRecord {
            key: "k".into(),
            value: b"{}".to_vec(),
            etag: [0; 16],
            stored: Timestamp(1_000),
            fresh_until: Timestamp(61_000),
            stale_until: Timestamp(100_000),
        };
        let served = |via, now| Served {
            record: record.clone(),
            via,
            now: Timestamp(now),
        };
        assert_eq!(served(Via::Hit, 31_500).cache_status(), "coffer; hit; ttl=29");
        assert_eq!(served(Via::Hit, 31_500).age_secs(), 30);
        assert_eq!(
            served(Via::Miss { collapsed: true }, 1_000).cache_status(),
            "coffer; fwd=miss; fwd-status=200; stored; ttl=60; collapsed"
        );
        assert_eq!(
            served(Via::StaleIfError { fwd_status: 504 }, 81_000).cache_status(),
            "coffer; fwd=stale; fwd-status=504; ttl=-20; detail=stale-if-error"
        );
        assert_eq!(
            served(Via::StaleNoUpstream, 61_500).cache_status(),
            "coffer; hit; ttl=-1; detail=stale"
        );
    }
}
