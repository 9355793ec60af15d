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
use crate::model::{DeviceId, Role, Timestamp};
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

/// Deepest nesting of arrays and objects accepted in a record (serde_json's own limit,
/// which refuses a 128th level): deeper documents would break the apps' parsers.
pub const MAX_JSON_DEPTH: usize = 127;

/// Checks that `bytes` is one JSON value in UTF-8, nested at most [`MAX_JSON_DEPTH`] deep,
/// without building it (a parsed tree takes many times the text's size). Numbers beyond
/// `f64` (`1e400`) and lone surrogate escapes (`"\ud800"`) are refused, as serde_json does.
pub fn check_json(bytes: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "the record is not UTF-8 text".to_owned())?;
    serde_json::from_str::<ValidJson>(text)
        .map(drop)
        .map_err(|e| format!("the record is not valid JSON (at most {MAX_JSON_DEPTH} levels deep): {e}"))
}

/// A JSON value, checked and thrown away as it is read.
struct ValidJson;

impl<'de> serde::Deserialize<'de> for ValidJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValidJsonVisitor).map(|()| ValidJson)
    }
}

struct ValidJsonVisitor;

impl<'de> serde::de::Visitor<'de> for ValidJsonVisitor {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<ValidJson>()?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<ValidJson, ValidJson>()?.is_some() {}
        Ok(())
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
    busy: AtomicU64,
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
    /// Reads refused `503 upstream-busy` (too many upstream calls waiting).
    #[serde(default)]
    pub busy: u64,
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
    /// (time of the last upstream-failure log line, failures not logged since).
    failure_log: Mutex<(Option<std::time::Instant>, u64)>,
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

    /// The upstream call's time limit (zero without an upstream).
    pub fn upstream_timeout(&self) -> Duration {
        self.settings.as_ref().map_or(Duration::ZERO, |s| s.timeout)
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

    /// Logs an upstream failure, at most once per 10 s (with the count of those not
    /// logged), so a flood of failing reads cannot flood the log.
    fn log_failure(&self, origin: &str, why: &str) {
        let now = std::time::Instant::now();
        let mut log = self.failure_log.lock().unwrap_or_else(PoisonError::into_inner);
        if log.0.is_some_and(|last| now.duration_since(last) < FAILURE_LOG_EVERY) {
            log.1 += 1;
            return;
        }
        let more = std::mem::take(&mut log.1);
        log.0 = Some(now);
        drop(log);
        if more > 0 {
            tracing::warn!(
                "erp: upstream of collection {} ({origin}) failed: {why} (and {more} more failure(s) since the last report)",
                self.name
            );
        } else {
            tracing::warn!("erp: upstream of collection {} ({origin}) failed: {why}", self.name);
        }
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
    /// No turn for an upstream call came within the upstream timeout.
    Busy,
    /// Storing failed.
    Internal(String),
}

type Flight = watch::Receiver<Option<Arc<Outcome>>>;

/// Most upstream calls one device may be waiting on at once.
pub const MAX_MISSES_PER_DEVICE: u32 = 8;
/// Flights (distinct keys being fetched or queued) per allowed concurrent upstream call.
const FLIGHTS_PER_FETCH: usize = 16;
/// At most one log line per collection about upstream failures this often.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);
/// How often a request waiting on an upstream call tells the connection watchdog it is
/// alive, and a queued call checks whether anyone still waits for it.
const WAIT_TICK: Duration = Duration::from_millis(250);

#[derive(Debug)]
struct Inner {
    collections: BTreeMap<String, Collection>,
    purge_interval: Duration,
    max_record_bytes: u32,
    fetches: Arc<Semaphore>,
    max_flights: usize,
    flights: Mutex<HashMap<(String, String), Flight>>,
    misses: Mutex<HashMap<DeviceId, u32>>,
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
    /// Too many upstream calls are waiting (overall, or for this device) and no stale
    /// record could stand in.
    Busy,
    /// The record is larger than the caller's budget (multi-get).
    TooLarge,
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
                    failure_log: Mutex::new((None, 0)),
                },
            );
        }
        Ok(Self {
            inner: Arc::new(Inner {
                collections,
                purge_interval: Duration::from_secs(purge),
                max_record_bytes: config.max_record_bytes,
                fetches: Arc::new(Semaphore::new(config.max_upstream_fetches as usize)),
                max_flights: FLIGHTS_PER_FETCH * config.max_upstream_fetches as usize,
                flights: Mutex::new(HashMap::new()),
                misses: Mutex::new(HashMap::new()),
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
            busy: c.busy.load(Ordering::Relaxed),
        })
    }

    /// Reads `key` of `collection` (already authorised and checked) for `device`: from the
    /// cache when fresh, else from the upstream (one call per key at a time), else stale
    /// within its window. `how` bounds the read: a byte budget shared by the records of
    /// one answer (a record that does not fit is not opened: [`ReadError::TooLarge`]),
    /// whether the upstream may be asked, and what to call while waiting on it (the
    /// connection's watchdog).
    pub async fn read(
        &self,
        vault: &Arc<Vault>,
        collection: &Collection,
        key: &str,
        device: DeviceId,
        how: &ReadOptions<'_>,
    ) -> Result<Served, ReadError> {
        let reserved = Arc::new(AtomicU64::new(0));
        let result = self.read_inner(vault, collection, key, device, how, &reserved).await;
        if let (Err(_), Some(budget)) = (&result, &how.budget) {
            // Nothing was served: its reservation is given back.
            budget.give(reserved.swap(0, Ordering::AcqRel));
        }
        result
    }

    async fn read_inner(
        &self,
        vault: &Arc<Vault>,
        collection: &Collection,
        key: &str,
        device: DeviceId,
        how: &ReadOptions<'_>,
        reserved: &Arc<AtomicU64>,
    ) -> Result<Served, ReadError> {
        // On the worker thread, as the device and session lookups of every request are: a
        // read transaction and one record's decryption take microseconds, less than a
        // hand-over to the blocking pool costs (measured: 11.5 µs against 33.5 µs).
        let cached = vault.erp_get_admitted(&collection.name, key, |size, _| match &how.budget {
            None => true,
            Some(b) if b.take(size) => {
                reserved.store(size, Ordering::Release);
                true
            }
            Some(_) => false,
        })?;
        let cached = match cached {
            Some(Err(_too_large)) => return Err(ReadError::TooLarge),
            Some(Ok(r)) => Some(r),
            None => None,
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
        let (outcome, collapsed) = if !how.upstream {
            (Arc::new(Outcome::Failed(FetchError::Timeout)), false)
        } else {
            match self.take_miss(device) {
                Some(turn) => self.fly(vault, collection, upstream, key, turn, how.keepalive).await,
                None => (Arc::new(Outcome::Busy), false),
            }
        };
        let now = Timestamp::now();
        let stale = |fwd_status: u16, otherwise: ReadError| match &cached {
            Some(r) if now < collection.stale_until(r) => {
                collection.count(|c| &c.stale);
                Ok(Served {
                    record: r.clone(),
                    via: Via::StaleIfError { fwd_status },
                    now,
                })
            }
            _ => Err(otherwise),
        };
        // A record from the flight replaces the cached one in the budget.
        let fits = |r: &ErpRecord| match &how.budget {
            None => true,
            Some(b) => {
                b.give(reserved.swap(0, Ordering::AcqRel));
                let size = r.value.len() as u64;
                let taken = b.take(size);
                if taken {
                    reserved.store(size, Ordering::Release);
                }
                taken
            }
        };
        match &*outcome {
            Outcome::Fresh(r) | Outcome::Stored(r) if !fits(r) => Err(ReadError::TooLarge),
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
            Outcome::Failed(FetchError::Timeout) => stale(504, ReadError::UpstreamTimeout),
            Outcome::Failed(FetchError::Failed(_)) => stale(502, ReadError::UpstreamFailed),
            Outcome::Busy => {
                collection.count(|c| &c.busy);
                stale(503, ReadError::Busy)
            }
            Outcome::Internal(_) => Err(ReadError::Internal),
        }
    }

    /// A turn among the upstream calls `device` may wait on, if it has one left.
    fn take_miss(&self, device: DeviceId) -> Option<MissTurn> {
        let mut misses = self.inner.misses.lock().unwrap_or_else(PoisonError::into_inner);
        let n = misses.entry(device).or_insert(0);
        if *n >= MAX_MISSES_PER_DEVICE {
            return None;
        }
        *n += 1;
        Some(MissTurn {
            erp: self.clone(),
            device,
        })
    }

    /// Joins the flight for (collection, key), or starts it. Returns its outcome and
    /// whether this request joined another's flight. A request that starts a flight hands
    /// its device's turn to it (held until the call ends, even if the caller goes away);
    /// one that joins holds its turn while it waits.
    async fn fly(
        &self,
        vault: &Arc<Vault>,
        collection: &Collection,
        upstream: &Arc<Upstream>,
        key: &str,
        turn: MissTurn,
        keepalive: &(dyn Fn() + Sync),
    ) -> (Arc<Outcome>, bool) {
        let flight_key = (collection.name.clone(), key.to_owned());
        let joined = {
            let mut flights = self.inner.flights.lock().unwrap_or_else(PoisonError::into_inner);
            // A flight whose task is gone (its runtime stopped) is replaced.
            let live = flights.get(&flight_key).filter(|rx| rx.has_changed().is_ok()).cloned();
            if live.is_none() && flights.len() >= self.inner.max_flights {
                flights.retain(|_, rx| rx.has_changed().is_ok());
            }
            match live {
                Some(rx) => Some((rx, Some(turn))),
                None if flights.len() >= self.inner.max_flights => None,
                None => {
                    let (tx, rx) = watch::channel(None);
                    flights.insert(flight_key.clone(), rx.clone());
                    self.launch(
                        vault.clone(),
                        collection,
                        upstream.clone(),
                        flight_key,
                        tx,
                        rx.clone(),
                        turn,
                    );
                    Some((rx, None))
                }
            }
        };
        let Some((mut rx, held)) = joined else {
            return (Arc::new(Outcome::Busy), false);
        };
        let joined = held.is_some();
        // The flight is bounded by its wait for a turn and the upstream timeout; waiting
        // here is bounded too, and tells the watchdog the connection is alive.
        let patience = upstream.timeout() * 2 + Duration::from_secs(5);
        let started = tokio::time::Instant::now();
        let outcome = loop {
            match tokio::time::timeout(WAIT_TICK, rx.wait_for(Option::is_some)).await {
                Ok(Ok(value)) => break value.clone(),
                Ok(Err(_)) => break None,
                Err(_) if started.elapsed() >= patience => break Some(Arc::new(Outcome::Failed(FetchError::Timeout))),
                Err(_) => keepalive(),
            }
        };
        drop(held);
        (
            outcome.unwrap_or_else(|| Arc::new(Outcome::Internal("the upstream call was abandoned".into()))),
            joined,
        )
    }

    /// Starts a flight on its own task, so a caller going away does not cancel it.
    #[allow(clippy::too_many_arguments)]
    fn launch(
        &self,
        vault: Arc<Vault>,
        collection: &Collection,
        upstream: Arc<Upstream>,
        flight_key: (String, String),
        tx: watch::Sender<Option<Arc<Outcome>>>,
        own: Flight,
        turn: MissTurn,
    ) {
        let erp = self.clone();
        let ttl_ms = collection.ttl_ms;
        let stale_ms = collection.stale_ms;
        tokio::spawn(async move {
            let _turn = turn;
            // However this task ends, its entry leaves the map (only its own: a newer
            // flight for the same key may have replaced it).
            let entry = FlightEntry {
                erp: erp.clone(),
                key: flight_key.clone(),
                own,
            };
            // A turn among the upstream calls, waited for at most the upstream timeout,
            // and given up as soon as nobody waits for the answer any more.
            let permit = {
                let acquire = erp.inner.fetches.clone().acquire_owned();
                tokio::pin!(acquire);
                let deadline = tokio::time::Instant::now() + upstream.timeout();
                loop {
                    tokio::select! {
                        p = &mut acquire => break p.ok(),
                        () = tokio::time::sleep(WAIT_TICK) => {
                            if entry.abandon_if_unwanted(&tx) {
                                return;
                            }
                            if tokio::time::Instant::now() >= deadline {
                                break None;
                            }
                        }
                    }
                }
            };
            let Some(permit) = permit else {
                let _ = tx.send(Some(Arc::new(Outcome::Busy)));
                return;
            };
            if entry.abandon_if_unwanted(&tx) {
                return;
            }
            let (name, key) = flight_key.clone();
            let counting = erp.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                // Another flight may have stored it since this request looked; the record
                // seen now decides whether the answer may replace (or remove) what is
                // stored, and keeps its entity tag if the content did not change.
                let seen = match vault.erp_get(&name, &key) {
                    Ok(Some(r)) if Timestamp::now() < r.fresh_until => return Outcome::Fresh(r),
                    Ok(r) => r,
                    Err(e) => return Outcome::Internal(e.to_string()),
                };
                let Some(c) = counting.collection(&name) else {
                    return Outcome::Internal("the collection is gone".into());
                };
                c.count(|c| &c.upstream_calls);
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
                        match vault.erp_store_fetched(&name, new.clone(), now, seen.as_ref()) {
                            Ok(Some(r)) => Outcome::Stored(r),
                            // The record seen was removed meanwhile (a purge, the sweep, an
                            // integration): the ERP's answer is stored if nothing else was.
                            Ok(None) => match vault.erp_store_fetched(&name, new, now, None) {
                                Ok(Some(r)) => Outcome::Stored(r),
                                Ok(None) => Outcome::Gone,
                                Err(e) => Outcome::Internal(e.to_string()),
                            },
                            Err(e) => Outcome::Internal(e.to_string()),
                        }
                    }
                    Ok(Fetched::Gone) => {
                        // Removed only if it is still the record seen (not synced: like a
                        // fetched record, it can be learnt again); a record pushed while
                        // the call ran stays and is served.
                        if let Some(r) = &seen
                            && let Err(e) = vault.erp_forget_fetched(&name, &key, r.id)
                        {
                            return Outcome::Internal(e.to_string());
                        }
                        match vault.erp_get(&name, &key) {
                            Ok(Some(r)) => Outcome::Fresh(r),
                            Ok(None) => Outcome::Gone,
                            Err(e) => Outcome::Internal(e.to_string()),
                        }
                    }
                    Err(e) => {
                        c.count(|c| &c.errors);
                        let why = match &e {
                            FetchError::Timeout => "timed out".to_owned(),
                            FetchError::Failed(m) => m.clone(),
                        };
                        c.log_failure(upstream.origin(), &why);
                        Outcome::Failed(e)
                    }
                }
            })
            .await
            .unwrap_or_else(|_| Outcome::Internal("the upstream call panicked".into()));
            if let Outcome::Internal(why) = &outcome {
                tracing::error!("erp: collection {}: {why}", flight_key.0);
            }
            let _ = tx.send(Some(Arc::new(outcome)));
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

/// How a read is bounded.
pub struct ReadOptions<'a> {
    /// The byte budget of the answer this read is part of (multi-get), if any.
    pub budget: Option<Arc<Budget>>,
    /// Whether the upstream may be asked (a multi-get past its deadline answers from the
    /// cache only).
    pub upstream: bool,
    /// Called while waiting on the upstream (tells the connection watchdog the request
    /// is alive).
    pub keepalive: &'a (dyn Fn() + Sync),
}

impl ReadOptions<'_> {
    /// A single read: no budget, the upstream may be asked, nothing to keep alive.
    pub fn single() -> ReadOptions<'static> {
        ReadOptions {
            budget: None,
            upstream: true,
            keepalive: &|| {},
        }
    }
}

/// Bytes of record values one answer may hold. A read reserves a record's size before it
/// is opened; a read that serves nothing gives its reservation back.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    spent: AtomicU64,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            spent: AtomicU64::new(0),
        })
    }

    /// Takes `size` bytes if they fit.
    fn take(&self, size: u64) -> bool {
        self.spent
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |spent| {
                spent.checked_add(size).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn give(&self, size: u64) {
        let _ = self.spent.fetch_update(Ordering::AcqRel, Ordering::Acquire, |spent| {
            Some(spent.saturating_sub(size))
        });
    }

    /// Bytes taken so far.
    pub fn spent(&self) -> u64 {
        self.spent.load(Ordering::Acquire)
    }
}

/// One of a device's turns at waiting on an upstream call; given back when dropped.
struct MissTurn {
    erp: Erp,
    device: DeviceId,
}

impl Drop for MissTurn {
    fn drop(&mut self) {
        let mut misses = self.erp.inner.misses.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = misses.get_mut(&self.device) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                misses.remove(&self.device);
            }
        }
    }
}

/// A flight's entry in the map, removed when its task ends (normally or not).
struct FlightEntry {
    erp: Erp,
    key: (String, String),
    own: Flight,
}

impl FlightEntry {
    /// When nobody waits for this flight any more (the map and this entry hold the only
    /// receivers), removes it from the map and returns true. Checked under the map's lock,
    /// which a joining request also takes, so nobody joins a flight being dropped.
    fn abandon_if_unwanted(&self, tx: &watch::Sender<Option<Arc<Outcome>>>) -> bool {
        let mut flights = self.erp.inner.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if tx.receiver_count() > 2 {
            return false;
        }
        if flights.get(&self.key).is_some_and(|rx| rx.same_channel(&self.own)) {
            flights.remove(&self.key);
        }
        true
    }
}

impl Drop for FlightEntry {
    fn drop(&mut self) {
        let mut flights = self.erp.inner.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if flights.get(&self.key).is_some_and(|rx| rx.same_channel(&self.own)) {
            flights.remove(&self.key);
        }
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
    fn records_must_be_utf8_json_of_bounded_depth() {
        assert!(check_json(br#"{"a":[1,2,{"b":null}]}"#).is_ok());
        assert!(check_json(b"null").is_ok());
        assert!(check_json(b"{\"a\":\"\xff\xfe\"}").is_err());
        assert!(check_json(b"{\"a\":1} x").is_err());
        assert!(check_json(b"").is_err());
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(check_json(deep(MAX_JSON_DEPTH).as_bytes()).is_ok());
        assert!(check_json(deep(MAX_JSON_DEPTH + 1).as_bytes()).is_err());
        assert!(check_json(deep(100_000).as_bytes()).is_err());
    }

    #[test]
    fn cache_status_follows_rfc_9211() {
        let record = ErpRecord {
            id: 1,
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
