//! The HTTPS API: actix-web over rustls with client certificates. Thin over [`crate::app`]:
//! handlers parse, authorise and map errors; the vault does the work.

pub mod allowlist;
pub mod audit;
pub mod auth;
pub mod error;
pub mod health;
pub mod limits;
pub mod metrics;
mod observe;
pub mod ratelimit;
pub mod replay;
mod routes;
pub use routes::rfc3339;
pub mod tls;
pub mod watchdog;

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{App, web};

use crate::app::Vault;
use crate::app::pki::PkiFileError;
use crate::config::{AuthConfig, Limits, TlsVersion};

/// What the server needs besides the vault.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// Lowest TLS version.
    pub tls_min: TlsVersion,
    /// Sizes, counts and timeouts (`[limits]` of the configuration).
    pub limits: Limits,
    /// Worker threads (default: one per CPU core).
    pub workers: Option<usize>,
    /// Signatures, sessions, lockout and failure budgets (`[auth]` of the configuration).
    pub auth: AuthConfig,
    /// Validity of device certificates issued at enrolment, days (`pki.device_days`).
    pub device_days: u32,
    /// Addresses connections are accepted from (`allow_cidrs`); others are closed before
    /// the TLS handshake.
    pub allow: allowlist::Allowlist,
    /// The ERP record cache (`[erp]` of the configuration, with its upstream agents).
    pub erp: crate::erp::Erp,
    /// Audit entries older than this many days are pruned (`audit.retention_days`).
    pub audit_retention_days: u32,
    /// Address of the plain-HTTP health and metrics listener (`health.listen`); `None`:
    /// none.
    pub health_listen: Option<SocketAddr>,
    /// `/readyz` fails when the server certificate expires within this many days.
    pub min_server_cert_days: u32,
}

/// Shared by every handler.
pub struct State {
    /// The unlocked vault.
    pub vault: Arc<Vault>,
    /// Server options.
    pub options: ServerOptions,
    /// Transfer slots.
    pub transfers: Arc<limits::Transfers>,
    /// How requests are authenticated.
    pub auth: auth::AuthSettings,
    /// Authentication-failure budgets.
    pub limiter: ratelimit::AuthLimiter,
    /// Request budgets per device (`limits.device_requests_per_minute`).
    pub requests: ratelimit::RequestLimiter,
    /// The server's metrics.
    pub metrics: Arc<metrics::Metrics>,
    /// Throttle of the log lines of refused requests without a device.
    pub log_gate: Arc<observe::LogGate>,
    /// Enrolment attempts per address.
    pub enrolments: ratelimit::AttemptLimiter,
    /// Requests refused for want of a client certificate (counted, logged sparingly).
    pub anonymous_refusals: allowlist::Refusals,
    /// Enrolment attempts refused by the per-address budget (counted, logged sparingly).
    pub enrolment_refusals: allowlist::Refusals,
    /// Signatures of accepted writes.
    pub replay: replay::ReplayGuard,
    /// Bounds the password verifications (argon2id) in flight.
    pub password_checks: Arc<tokio::sync::Semaphore>,
    /// Login attempts per device: one at a time, and a budget per minute.
    pub logins: ratelimit::LoginGate,
    /// The audit log's writer.
    pub audit: crate::app::audit::AuditLog,
    /// Throttle of audit entries for refusals.
    pub refusals_audited: audit::RefusalGate,
    /// Derived SigV4 signing keys per device and day (AWS SDKs cache them the same way).
    signing_keys: std::sync::Mutex<SigningKeys>,
    /// When each session's last use was last sent to the database (ms), so that the
    /// requests arriving before that write lands do not each start another.
    session_touches: std::sync::Mutex<std::collections::HashMap<[u8; 32], i64>>,
}

/// (device, scope date) → (SHA-256 of the secret it was derived from, signing key).
type SigningKeys =
    std::collections::HashMap<(crate::model::DeviceId, String), ([u8; 32], zeroize::Zeroizing<[u8; 32]>)>;

/// Entries of the signing-key cache before it is emptied (a few per device).
const SIGNING_KEYS_MAX: usize = 4096;

impl State {
    /// Whether this request should record its session's use: the first one to ask within
    /// [`crate::app::sessions::TOUCH_EVERY_MS`].
    pub fn first_touch(&self, token_hash: [u8; 32], now: crate::model::Timestamp) -> bool {
        let every = crate::app::sessions::TOUCH_EVERY_MS;
        let mut touches = self
            .session_touches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if touches.get(&token_hash).is_some_and(|&t| now.0 - t < every) {
            return false;
        }
        if touches.len() >= 10_000 {
            touches.retain(|_, t| now.0 - *t < every);
        }
        touches.insert(token_hash, now.0);
        true
    }

    /// The SigV4 signing key of `secret` for `date` (`YYYYMMDD`) and `region`, derived once
    /// per device and day. A changed secret (the entry remembers which one it came from)
    /// is derived afresh.
    pub fn signing_key(
        &self,
        device: crate::model::DeviceId,
        secret: &crate::secret::SecretString,
        date: &str,
        region: &str,
    ) -> zeroize::Zeroizing<[u8; 32]> {
        use sha2::Digest;
        let fingerprint: [u8; 32] = sha2::Sha256::digest(secret.expose().as_bytes()).into();
        let mut cache = self
            .signing_keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((fp, key)) = cache.get(&(device, date.to_owned()))
            && *fp == fingerprint
        {
            return key.clone();
        }
        let key = crate::sigv4::signing_key(secret.expose(), date, region, auth::SERVICE);
        if cache.len() >= SIGNING_KEYS_MAX {
            cache.clear();
        }
        cache.insert((device, date.to_owned()), (fingerprint, key.clone()));
        key
    }
}

/// The server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The certificates or keys could not be loaded.
    #[error(transparent)]
    Pki(#[from] PkiFileError),
    /// The TLS configuration is invalid.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The address cannot be bound.
    #[error(
        "cannot listen on {addr}: {source}; if another process holds the port (`ss -ltnp`), stop it or choose \
         another address (`listen`/`--listen`, `health.listen`)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why (in use, permission).
        source: std::io::Error,
    },
    /// The server thread failed.
    #[error("the server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    routes::configure(cfg);
}

/// A server running on its own thread.
pub struct RunningServer {
    addr: SocketAddr,
    not_before: i64,
    handle: actix_web::dev::ServerHandle,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
    reloader: TlsReloader,
    refusals: Arc<allowlist::Refusals>,
    health_addr: Option<SocketAddr>,
    health: Option<health::HealthServer>,
    live: LiveSettings,
}

/// The settings of a running server that can change without a restart (SIGHUP).
#[derive(Clone)]
pub struct LiveSettings {
    allow: Arc<std::sync::RwLock<Arc<allowlist::Allowlist>>>,
    /// Weak: the state must drop with the server (its drop flushes the audit log).
    state: std::sync::Weak<State>,
    shutdown_grace_secs: u32,
    draining: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for LiveSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveSettings")
    }
}

impl LiveSettings {
    /// Replaces the allowlist for connections from now on (open ones stay).
    pub fn set_allowlist(&self, allow: allowlist::Allowlist) {
        *self.allow.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(allow);
    }

    /// Changes `limits.device_requests_per_minute`.
    pub fn set_device_requests_per_minute(&self, per_minute: u32) {
        if let Some(state) = self.state.upgrade() {
            state.requests.set_per_minute(per_minute);
        }
    }

    /// The server is stopping: `/readyz` fails from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// `limits.shutdown_grace_secs` of the running server.
    pub fn shutdown_grace_secs(&self) -> u32 {
        self.shutdown_grace_secs
    }
}

/// Reloads the server certificate (from `keys/server.crt` and the server key in the
/// database) into a running server; handshakes from then on use it.
#[derive(Clone, Debug)]
pub struct TlsReloader {
    vault: Arc<Vault>,
    cert: Arc<tls::ServerCert>,
}

impl TlsReloader {
    /// Loads the current server certificate and key; on error the old ones stay in use.
    pub fn reload(&self) -> Result<crate::pki::CertInfo, ServeError> {
        let (cert, key) = self.vault.server_identity()?;
        let info = crate::pki::cert_info(&cert, "server.crt").map_err(PkiFileError::from)?;
        self.cert.replace(cert, &key)?;
        Ok(info)
    }

    /// Rewrites `keys/crl.pem` (the server does so daily, so it never goes stale).
    pub fn rewrite_crl(&self) -> Result<usize, ServeError> {
        Ok(self.vault.write_crl()?)
    }
}

impl RunningServer {
    /// The address actually listened on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle that reloads the server certificate.
    pub fn reloader(&self) -> TlsReloader {
        self.reloader.clone()
    }

    /// What SIGHUP can change in this server.
    pub fn live(&self) -> LiveSettings {
        self.live.clone()
    }

    /// The address of the health and metrics listener, if there is one.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_addr
    }

    /// Connections closed by the allowlist since the start.
    pub fn refused_connections(&self) -> u64 {
        self.refusals.total()
    }

    /// The first Unix second whose signatures the server accepts (for writes, add
    /// `auth.max_future_write_secs`).
    pub fn signatures_from(&self) -> i64 {
        self.not_before
    }

    /// Stops accepting, lets requests in flight finish, and waits for the thread.
    pub fn stop(self) -> Result<(), ServeError> {
        self.live.set_draining();
        // The command is sent when `stop` is called; joining the thread waits for it.
        drop(self.handle.stop(true));
        self.wait()
    }

    /// Waits until the server stops (on SIGINT/SIGTERM, or [`stop`](Self::stop)), then
    /// stops the health listener.
    pub fn wait(self) -> Result<(), ServeError> {
        let result = match self.thread.join() {
            Ok(r) => r.map_err(ServeError::from),
            Err(_) => Err(ServeError::Io(std::io::Error::other("the server thread panicked"))),
        };
        if let Some(health) = self.health {
            health.stop();
        }
        result
    }
}

/// Starts the HTTPS server for `vault` on its own thread and returns once it listens.
///
/// The pipeline per connection: the allowlist (a refused address is closed before any
/// TLS byte), the TLS handshake (actix-tls, 3 s bound), then HTTP/1.1.
pub fn start(vault: Arc<Vault>, options: ServerOptions) -> Result<RunningServer, ServeError> {
    let ca_der = crate::app::pki::read_cert(&crate::app::pki::ca_cert_path(vault.paths()), "ca.crt")?;
    let (server_cert, server_key) = vault.server_identity()?;
    let cert = Arc::new(tls::ServerCert::new(server_cert, &server_key, options.tls_min)?);
    drop(server_key);
    let tls = tls::server_config(&ca_der, cert.clone(), options.tls_min)?;
    let reloader = TlsReloader {
        vault: vault.clone(),
        cert: cert.clone(),
    };
    let listener = std::net::TcpListener::bind(options.listen).map_err(|source| ServeError::Bind {
        addr: options.listen,
        source,
    })?;
    let addr = listener.local_addr()?;
    let health_listener = match options.health_listen {
        Some(a) => Some(std::net::TcpListener::bind(a).map_err(|source| ServeError::Bind { addr: a, source })?),
        None => None,
    };
    let health_addr = health_listener
        .as_ref()
        .map(std::net::TcpListener::local_addr)
        .transpose()?;
    let l = &options.limits;
    let transfers = limits::Transfers::new(l.max_uploads, l.max_downloads, l.max_transfers_per_device);
    let workers = options
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
        .max(1);
    // Past `max_connections` a connection is still served, with `503
    // too-many-connections` to each request; past `hard_cap` it is closed before TLS.
    // actix's own cap (per worker: connections need not spread evenly) lies beyond both,
    // so it never leaves connections waiting unanswered in the backlog.
    let hard_cap = (l.max_connections as usize)
        .saturating_mul(2)
        .saturating_add(l.max_anonymous_connections as usize);
    let metrics = Arc::new(metrics::Metrics::default());
    let connections = limits::Connections::new(l.max_connections, metrics.open_connections.clone());
    // Connections without a client certificate have their own, smaller pool, and a few
    // per address.
    let anonymous = limits::Connections::new(l.max_anonymous_connections, metrics.open_connections.clone());
    let anonymous_per_address = allowlist::PerAddress::new(ANONYMOUS_PER_ADDRESS.min(l.max_anonymous_connections));
    let grace = std::time::Duration::from_secs(u64::from(l.shutdown_grace_secs));
    let header_timeout = std::time::Duration::from_secs(u64::from(l.header_timeout_secs));
    // The backstop: twice the body idle timeout, so a stalled upload still gets its 408
    // from the handler before the watchdog cuts the connection.
    // Never before the header timeout, so a slow first request gets its 408 from actix.
    let idle = (2 * u64::from(l.body_idle_timeout_secs)).max(u64::from(l.header_timeout_secs) + 2);
    let watchdog = watchdog::Watchdog::start(std::time::Duration::from_secs(idle))?;
    let a = &options.auth;
    let audit_log = crate::app::audit::AuditLog::start(vault.clone())?;
    let state = web::Data::new(State {
        vault,
        transfers,
        auth: auth::AuthSettings {
            signatures: a.signatures,
            sessions: a.sessions,
            region: a.region.clone(),
            policy: crate::app::sessions::SessionPolicy::from(a),
            // The first whole second after the start: a request signed in the second the
            // server started could have been accepted by the process before it.
            not_before: time::OffsetDateTime::now_utc().unix_timestamp() + 1,
            max_future_write_secs: i64::from(a.max_future_write_secs),
        },
        limiter: ratelimit::AuthLimiter::new(a.device_failures_per_minute, a.ip_failures_per_minute),
        requests: ratelimit::RequestLimiter::new(l.device_requests_per_minute),
        metrics: metrics.clone(),
        log_gate: Arc::default(),
        enrolments: ratelimit::AttemptLimiter::new(a.enrolments_per_ip_per_minute),
        anonymous_refusals: allowlist::Refusals::new(
            "auth: refused requests without a client certificate (client-certificate-required)",
        ),
        enrolment_refusals: allowlist::Refusals::new(
            "enrol: refused attempts over auth.enrolments_per_ip_per_minute (too-many-enrolments)",
        ),
        replay: replay::ReplayGuard::default(),
        password_checks: Arc::new(tokio::sync::Semaphore::new(a.max_password_checks.max(1) as usize)),
        logins: ratelimit::LoginGate::new(ratelimit::LOGINS_PER_DEVICE_PER_MINUTE),
        audit: audit_log,
        refusals_audited: audit::RefusalGate::default(),
        signing_keys: std::sync::Mutex::new(SigningKeys::new()),
        session_touches: std::sync::Mutex::new(std::collections::HashMap::new()),
        options: options.clone(),
    });
    let not_before = state.auth.not_before;
    let sweep_vault = state.vault.clone();
    let sweep_erp = options.erp.clone();
    let summary_state = state.clone();
    let audit_days = options.audit_retention_days;
    let allow = Arc::new(std::sync::RwLock::new(Arc::new(options.allow.clone())));
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let live = LiveSettings {
        draining: draining.clone(),
        allow: allow.clone(),
        state: Arc::downgrade(&state.clone().into_inner()),
        shutdown_grace_secs: options.limits.shutdown_grace_secs,
    };
    let refusals = Arc::new(allowlist::Refusals::default());
    let pipeline_refusals = refusals.clone();
    let per_address = allowlist::PerAddress::new(options.limits.max_connections_per_ip);
    let crowded = Arc::new(allowlist::Refusals::new(
        "limits: closed a connection before TLS (limits.max_connections_per_ip reached)",
    ));
    let flooded = Arc::new(allowlist::Refusals::new(
        "limits: closed a connection before TLS (twice limits.max_connections open)",
    ));
    let tcp_open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let health = health_listener.map(|l| {
        (
            l,
            web::Data::new(health::Health::new(
                &state,
                draining.clone(),
                cert.clone(),
                options.min_server_cert_days,
            )),
        )
    });
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new().name("coffer-http".into()).spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let factory = move || {
                use actix_service::map_config;
                let state = state.clone();
                let watchdog = watchdog.clone();
                let allow = allow.clone();
                let refusals = pipeline_refusals.clone();
                let per_address = per_address.clone();
                let crowded = crowded.clone();
                let flooded = flooded.clone();
                let tcp_open = tcp_open.clone();
                let connections = connections.clone();
                let anonymous = anonymous.clone();
                let anonymous_per_address = anonymous_per_address.clone();
                let metrics = metrics.clone();
                let app = App::new()
                    .app_data(state)
                    // A request starting and ending is activity for the watchdog.
                    .wrap_fn(|req, srv| {
                        let activity = req.conn_data::<watchdog::ConnActivity>().map(|c| c.activity.clone());
                        if let Some(a) = &activity {
                            a.touch();
                        }
                        let call = actix_web::dev::Service::call(srv, req);
                        async move {
                            let res = call.await;
                            if let Some(a) = activity {
                                a.touch();
                            }
                            res
                        }
                    })
                    // A connection beyond `limits.max_connections` gets its answer and is
                    // closed.
                    .wrap_fn(|req, srv| {
                        use futures_util::future::Either;
                        if req.conn_data::<limits::OverCapacity>().is_some() {
                            let problem = error::Problem::detail(
                                error::Reason::TooManyConnections,
                                "the server has too many open connections; retry shortly",
                            );
                            Either::Left(std::future::ready(Ok(req.error_response(problem))))
                        } else {
                            Either::Right(actix_web::dev::Service::call(srv, req))
                        }
                    })
                    // Outermost: every request gets an id, an audit entry and a log line,
                    // refusals too.
                    .wrap_fn(|mut req, srv| {
                        let pending = audit::begin(&req);
                        let observed = observe::begin(
                            &mut req,
                            pending.request_id().to_owned(),
                            pending.pattern().to_owned(),
                            pending.who_reader(),
                        );
                        let call = actix_web::dev::Service::call(srv, req);
                        async move {
                            let mut res = call.await?;
                            let reason = audit::finish(pending, &mut res);
                            Ok(observe::finish(observed, reason, res))
                        }
                    })
                    .configure(configure);
                let http = actix_http::HttpService::build()
                    // Nagle would hold back the last segment of a streamed body until the
                    // client's delayed ACK (~40 ms per download).
                    .tcp_nodelay(true)
                    // Headers of a connection's first request (the TLS handshake has
                    // actix-tls's own 3 s bound); stalled bodies and connections: see
                    // `watchdog`.
                    .client_request_timeout(header_timeout)
                    .client_disconnect_timeout(std::time::Duration::from_secs(1))
                    .on_connect_ext(move |io: &TlsStream, ext| {
                        auth::on_connect(io, ext);
                        let with_cert = ext.get::<auth::ClientCert>().is_some_and(|c| c.0.is_some());
                        let pool = if with_cert { &connections } else { &anonymous };
                        let (counted, mut over) = pool.enter();
                        ext.insert(std::rc::Rc::new(counted));
                        if !with_cert {
                            // A few connections per address without a certificate: one
                            // address cannot take the whole anonymous pool (and with it
                            // enrolment) from everyone.
                            match io
                                .get_ref()
                                .0
                                .peer_addr()
                                .ok()
                                .and_then(|p| anonymous_per_address.admit(p.ip()))
                            {
                                Some(slot) => {
                                    ext.insert(std::rc::Rc::new(slot));
                                }
                                None => over = true,
                            }
                        }
                        let watched = watchdog.watch(io.get_ref().0);
                        if over {
                            ext.insert(limits::OverCapacity);
                            // A stranger beyond the pool is answered if it asks at once,
                            // and cut within a second if it only holds the connection.
                            if !with_cert && let Some(w) = &watched {
                                w.cut_soon();
                            }
                        }
                        if let Some(watched) = watched {
                            ext.insert(watched);
                        }
                    })
                    // Handlers read the peer address from the request, never the
                    // `AppConfig` (whose `secure` and host are defaults here).
                    .finish(map_config(app, |()| actix_web::dev::AppConfig::default()))
                    .rustls_0_23(tls.clone());
                // Before the handshake: the allowlist, then a slot among the connections
                // of the peer's address, held until the connection ends. A refused
                // connection is dropped (closed) without a byte written.
                actix_service::apply_fn_factory(http, move |io: actix_web::rt::net::TcpStream, http| {
                    let refused = |reason: &'static str| {
                        metrics
                            .connections_refused
                            .get_or_create(&metrics::ReasonLabels { reason })
                            .inc();
                    };
                    let open = TcpSlot::enter(&tcp_open);
                    let admitted = match io.peer_addr() {
                        Ok(peer)
                            if !allow
                                .read()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .allows(peer.ip()) =>
                        {
                            refusals.record(peer.ip());
                            refused("allowlist");
                            None
                        }
                        Ok(peer) if open.count > hard_cap => {
                            flooded.record(peer.ip());
                            refused("capacity");
                            None
                        }
                        Ok(peer) => {
                            let slot = per_address.admit(peer.ip());
                            if slot.is_none() {
                                crowded.record(peer.ip());
                                refused("per_address");
                            }
                            slot
                        }
                        Err(_) => None,
                    };
                    let connection = admitted.map(|slot| (slot, actix_web::dev::Service::call(http, io)));
                    async move {
                        match connection {
                            Some((slot, connection)) => {
                                let result = connection.await;
                                drop(slot);
                                drop(open);
                                result
                            }
                            None => Err(actix_tls::accept::TlsError::Tls(std::io::Error::other(
                                "connection refused before TLS",
                            ))),
                        }
                    }
                })
            };
            let builder = actix_server::Server::build()
                .workers(workers)
                .max_concurrent_connections(hard_cap + 16)
                // SIGTERM: stop accepting, let requests in flight finish this long.
                .shutdown_timeout(grace.as_secs())
                .listen("coffer-https", listener, factory);
            let server = match builder {
                Ok(s) => s.run(),
                Err(e) => {
                    let _ = tx.send(None);
                    return Err(e);
                }
            };
            let _ = tx.send(Some(server.handle()));
            // Ends with the server's runtime.
            actix_web::rt::spawn(prune_audit(sweep_vault.clone(), audit_days));
            actix_web::rt::spawn(summarise_refusals(summary_state));
            actix_web::rt::spawn(sweep(sweep_vault, sweep_erp));
            server.await
        })
    })?;
    let started = rx.recv();
    // The health listener runs apart (its own thread, worker and connection cap), so
    // nothing done to it can take connections or workers from the API.
    let health = match (&started, health) {
        (Ok(Some(api)), Some((listener, data))) => match health::spawn(listener, data) {
            Ok(h) => Some(h),
            Err(e) => {
                // Not half a server: the API stops too.
                drop(api.stop(false));
                let _ = thread.join();
                return Err(e.into());
            }
        },
        _ => None,
    };
    match started {
        Ok(Some(handle)) => Ok(RunningServer {
            addr,
            handle,
            thread,
            not_before,
            reloader,
            refusals,
            health_addr,
            health,
            live,
        }),
        _ => match thread.join() {
            Ok(Err(e)) => Err(e.into()),
            _ => Err(ServeError::Io(std::io::Error::other("the server did not start"))),
        },
    }
}

/// Purges ERP records past their stale window every `erp.purge_interval`.
async fn sweep(vault: Arc<Vault>, erp: crate::erp::Erp) {
    let mut tick = tokio::time::interval(erp.purge_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (v, e) = (vault.clone(), erp.clone());
        match web::block(move || e.sweep(&v, crate::model::Timestamp::now())).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!("erp: purged {n} record(s) past their stale window"),
            Ok(Err(e)) => tracing::warn!("erp: the sweep failed: {e}"),
            Err(_) => tracing::warn!("erp: the sweep failed"),
        }
    }
}

/// Writes the summary entries of refusals left out of the audit log, as their windows
/// close.
async fn summarise_refusals(state: web::Data<State>) {
    let mut tick = tokio::time::interval(audit::REFUSALS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for event in state.refusals_audited.summaries(false) {
            state.audit.record(event);
        }
        state.log_gate.flush(false);
    }
}

impl Drop for State {
    fn drop(&mut self) {
        // The server stops: what the refusal windows counted is written before the
        // audit writer (a field, dropped after this) flushes and ends.
        for event in self.refusals_audited.summaries(true) {
            self.audit.record(event);
        }
        self.log_gate.flush(true);
    }
}

/// Prunes audit entries past their retention at start and every hour.
async fn prune_audit(vault: Arc<Vault>, days: u32) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let v = vault.clone();
        let before = crate::model::Timestamp(crate::model::Timestamp::now().0 - i64::from(days) * 86_400_000);
        match web::block(move || v.audit_prune(before)).await {
            Ok(Ok(r)) => {
                if r.removed > 0 {
                    tracing::info!(
                        "audit: pruned {} entries older than {days} days (the chain stays verifiable)",
                        r.removed
                    );
                }
                if let Some((seq, why)) = r.damage {
                    tracing::warn!(
                        "audit: pruning stopped at entry {seq}: {why}; run `coffer audit verify` and compare \
                         with a backup"
                    );
                }
            }
            Ok(Err(e)) => tracing::warn!("audit: pruning failed: {e}"),
            Err(_) => tracing::warn!("audit: pruning failed"),
        }
    }
}

/// A TLS connection as the HTTP layer sees it.
type TlsStream = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;

/// Connections without a client certificate one address (IPv6: /64) may hold; more are
/// answered `503 too-many-connections` and cut.
pub const ANONYMOUS_PER_ADDRESS: u32 = 8;

/// A TCP connection counted from its accept (TLS handshake included) to its end.
struct TcpSlot {
    open: Arc<std::sync::atomic::AtomicUsize>,
    count: usize,
}

impl TcpSlot {
    fn enter(open: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        let count = open.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        Self {
            open: open.clone(),
            count,
        }
    }
}

impl Drop for TcpSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
