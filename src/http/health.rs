//! The health listener (plain HTTP, loopback by default, `health.listen`): `/healthz`
//! (the process answers), `/readyz` (it can serve: keys unlocked, the database takes a
//! durable write, the server certificate is valid for more than
//! `health.min_server_cert_days`) and `/metrics` (Prometheus text format).
//!
//! It serves no data and needs no authentication: keep it off the network (the default
//! address is 127.0.0.1:9464, and the EC2 guide scrapes it from the instance).

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::Serialize;

use super::State;
use super::limits::Transfer;
use super::metrics::KindLabels;
use super::tls::ServerCert;
use crate::model::Timestamp;

/// How long `/readyz` waits for the database write.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// A database probe's result is reused for this long, so polling `/readyz` (or flooding
/// it) costs at most one durable write per interval, and probes never overlap.
const PROBE_REUSE: Duration = Duration::from_secs(5);
/// Connections the health listener holds at once; more wait in the backlog.
const MAX_CONNECTIONS: usize = 16;

/// What the health routes look at.
pub struct Health {
    /// The API server's state (vault, metrics, transfers, ERP cache).
    /// Weak: the state drops with the API server (its drop flushes the audit log).
    pub state: std::sync::Weak<State>,
    /// Set when the server is asked to stop: `/readyz` then fails.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// The server certificate in use (SIGHUP replaces it).
    pub cert: Arc<ServerCert>,
    /// `/readyz` fails when the certificate expires within this many days.
    pub min_cert_days: u32,
    /// The last database probe: when, and what it found.
    probe: tokio::sync::Mutex<Option<(std::time::Instant, Result<(), String>)>>,
}

impl Health {
    /// What the routes look at, before any probe.
    pub fn new(
        state: &web::Data<State>,
        draining: Arc<std::sync::atomic::AtomicBool>,
        cert: Arc<ServerCert>,
        min_cert_days: u32,
    ) -> Self {
        Self {
            state: Arc::downgrade(&state.clone().into_inner()),
            draining,
            cert,
            min_cert_days,
            probe: tokio::sync::Mutex::new(None),
        }
    }
}

/// The health listener, running on its own thread.
pub struct HealthServer {
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl HealthServer {
    /// Stops it and waits for its thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take() {
            drop(self.handle.stop(false));
            let _ = thread.join();
        }
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `listener`, apart from the API: one
/// worker, at most [`MAX_CONNECTIONS`] connections, one request per connection (no
/// keep-alive), 5 s for the request; its own signal handling is off (the API server's
/// owner stops it).
pub fn spawn(listener: std::net::TcpListener, health: web::Data<Health>) -> std::io::Result<HealthServer> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("coffer-health".into())
        .spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = actix_server::Server::build()
                    .workers(1)
                    .max_concurrent_connections(MAX_CONNECTIONS)
                    .disable_signals()
                    .shutdown_timeout(1)
                    .listen("coffer-health", listener, move || {
                        let app = actix_web::App::new().app_data(health.clone()).configure(configure);
                        actix_http::HttpService::build()
                            .keep_alive(actix_http::KeepAlive::Disabled)
                            .client_request_timeout(Duration::from_secs(5))
                            .client_disconnect_timeout(Duration::from_secs(1))
                            .finish(actix_service::map_config(app, |()| {
                                actix_web::dev::AppConfig::default()
                            }))
                            .tcp()
                    });
                let server = match server {
                    Ok(s) => s.run(),
                    Err(e) => {
                        let _ = tx.send(None);
                        return Err(e);
                    }
                };
                let _ = tx.send(Some(server.handle()));
                server.await
            })
        })?;
    match rx.recv() {
        Ok(Some(handle)) => Ok(HealthServer {
            handle,
            thread: Some(thread),
        }),
        _ => match thread.join() {
            Ok(Err(e)) => Err(e),
            _ => Err(std::io::Error::other("the health listener did not start")),
        },
    }
}

/// Registers `/healthz`, `/readyz` and `/metrics`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .default_service(web::to(|| async {
            HttpResponse::NotFound()
                .content_type("text/plain; charset=utf-8")
                .body("not found: this listener serves /healthz, /readyz and /metrics\n")
        }));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("ok\n")
}

/// One readiness check.
#[derive(Debug, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// What was found, and what to do when it failed.
    pub detail: String,
}

#[derive(Debug, Serialize)]
struct Readiness {
    ready: bool,
    checks: Vec<Check>,
}

fn days_left(not_after: i64) -> f64 {
    (not_after as f64 - Timestamp::now().0 as f64 / 1000.0) / 86_400.0
}

fn stopping() -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .content_type("text/plain; charset=utf-8")
        .body("the server is stopping\n")
}

async fn readyz(health: web::Data<Health>) -> HttpResponse {
    let Some(state) = health.state.upgrade() else {
        return stopping();
    };
    let mut checks = Vec::with_capacity(4);
    let vault = state.vault.clone();
    drop(state);
    if health.draining.load(std::sync::atomic::Ordering::Relaxed) {
        checks.push(Check {
            name: "serving",
            ok: false,
            detail: "the server is stopping (SIGTERM): it accepts no new connections".to_owned(),
        });
    }
    checks.push(Check {
        name: "unlocked",
        // The server starts only once the key file is unlocked, and keeps the keys.
        ok: true,
        detail: "the master key is unlocked".to_owned(),
    });
    let found = database(&health, vault).await;
    checks.push(Check {
        name: "database",
        ok: found.is_ok(),
        detail: match found {
            Ok(()) => "the database took a durable write".to_owned(),
            Err(why) => why,
        },
    });
    checks.push(match health.cert.not_after() {
        Some(not_after) => {
            let days = days_left(not_after);
            let min = f64::from(health.min_cert_days);
            Check {
                name: "server_certificate",
                ok: days > min,
                detail: if days <= 0.0 {
                    "the server certificate has expired: run `coffer cert renew-server` (a running server picks it up at once)"
                        .to_owned()
                } else if days <= min {
                    format!(
                        "the server certificate expires in {days:.1} days (less than {min}): run `coffer cert \
                         renew-server` (a running server picks it up at once)"
                    )
                } else {
                    format!("the server certificate is valid for {days:.1} more days")
                },
            }
        }
        None => Check {
            name: "server_certificate",
            ok: false,
            detail: "the server certificate in use cannot be read".to_owned(),
        },
    });
    let ready = checks.iter().all(|c| c.ok);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if !ready {
        for c in checks.iter().filter(|c| !c.ok) {
            tracing::warn!(check = c.name, "not ready: {}", c.detail);
        }
    }
    HttpResponse::build(status)
        .insert_header(("cache-control", "no-store"))
        .json(Readiness { ready, checks })
}

/// The database probe's result: a fresh one, or the last one if it is recent. One probe
/// at a time; callers arriving meanwhile wait for it and share its result.
async fn database(health: &Health, vault: Arc<crate::app::Vault>) -> Result<(), String> {
    let Ok(mut last) = tokio::time::timeout(PROBE_TIMEOUT, health.probe.lock()).await else {
        return Err(format!(
            "the database check did not finish within {} s (a long write is holding it, or the disk hangs)",
            PROBE_TIMEOUT.as_secs()
        ));
    };
    if let Some((at, found)) = last.as_ref()
        && at.elapsed() < PROBE_REUSE
    {
        return found.clone();
    }
    let probe = tokio::time::timeout(PROBE_TIMEOUT, web::block(move || vault.store().probe_writable())).await;
    let found = match probe {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(format!(
            "the database refused a write ({e}): check free space and permissions of the data directory"
        )),
        Ok(Err(_)) => Err("the database write failed: see the log".to_owned()),
        Err(_) => Err(format!(
            "the database did not take a write within {} s (a long write is holding it, or the disk hangs)",
            PROBE_TIMEOUT.as_secs()
        )),
    };
    *last = Some((std::time::Instant::now(), found.clone()));
    found
}

async fn metrics(health: web::Data<Health>) -> HttpResponse {
    let Some(state) = health.state.upgrade() else {
        return stopping();
    };
    let h = health.clone();
    let text = web::block(move || {
        refresh(&h, &state);
        state.metrics.encode()
    })
    .await;
    match text {
        Ok(Ok(text)) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .insert_header(("cache-control", "no-store"))
            .body(text),
        _ => HttpResponse::InternalServerError()
            .content_type("text/plain; charset=utf-8")
            .body("the metrics could not be encoded: see the log\n"),
    }
}

/// Brings the values read at scrape time up to date.
fn refresh(health: &Health, state: &State) {
    let m = &state.metrics;
    let _one_at_a_time = m.scrape.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for (kind, label) in [(Transfer::Upload, "upload"), (Transfer::Download, "download")] {
        m.transfers
            .get_or_create(&KindLabels { kind: label })
            .set(i64::from(state.transfers.in_progress(kind)));
    }
    let erp = &state.options.erp;
    for name in erp.names() {
        if let Some(c) = erp.counters(name) {
            m.mirror_erp(name, "hit", c.hits);
            m.mirror_erp(name, "miss", c.misses);
            m.mirror_erp(name, "stale", c.stale);
        }
    }
    if let Some(not_after) = health.cert.not_after() {
        m.server_cert_days.set(days_left(not_after));
    }
    match state.vault.devices() {
        Ok(devices) => {
            let now = Timestamp::now();
            let active: Vec<_> = devices.iter().filter(|d| !d.body.revoked && d.expires > now).collect();
            m.devices.set(i64::try_from(active.len()).unwrap_or(i64::MAX));
            // Without an active device there is no soonest expiry: NaN, not 0 (which
            // would read as "expires today").
            let soonest = active.iter().map(|d| d.expires.0).min();
            m.device_cert_days
                .set(soonest.map_or(f64::NAN, |ms| days_left(ms / 1000)));
        }
        Err(e) => tracing::warn!("metrics: cannot list devices: {e}"),
    }
    match std::fs::metadata(state.vault.paths().database()) {
        Ok(meta) => {
            m.database_bytes.set(i64::try_from(meta.len()).unwrap_or(i64::MAX));
        }
        Err(e) => tracing::warn!("metrics: cannot read the database size: {e}"),
    }
}
