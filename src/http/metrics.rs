//! Prometheus metrics of one server, served as text (format 0.0.4) by the health
//! listener's `/metrics`.
//!
//! Labels are bounded: routes are the router's patterns (`(no route)` for the rest),
//! methods the usual seven (`other` for the rest), statuses what the server sends, reasons
//! the problem slugs. Nothing a client chooses freely becomes a label.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// A request's route and method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route pattern (`/v1/documents/{id}`).
    pub route: String,
    /// The method (`other` for unusual ones).
    pub method: &'static str,
}

/// A request's route, method and status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route pattern.
    pub route: String,
    /// The method.
    pub method: &'static str,
    /// The status code.
    pub status: u16,
}

/// Why something was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// A problem slug, or a connection-level reason.
    pub reason: &'static str,
}

/// ERP cache outcomes per collection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErpLabels {
    /// The collection.
    pub collection: String,
    /// `hit`, `miss` or `stale`.
    pub result: &'static str,
}

/// Transfer kinds in progress.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `upload` or `download`.
    pub kind: &'static str,
}

/// The method as a label.
pub fn method_label(method: &actix_web::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~33 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

/// Every metric of a server.
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by route, method and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from a request's headers to the end of its answer, by route and method.
    pub latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Requests refused by authentication, by problem type.
    pub auth_rejections: Family<ReasonLabels, Counter>,
    /// Connections closed or refused before a request (allowlist, per-address cap,
    /// connection cap).
    pub connections_refused: Family<ReasonLabels, Counter>,
    /// Request body bytes received.
    pub bytes_in: Counter,
    /// Response body bytes sent.
    pub bytes_out: Counter,
    /// Open client connections (past the TLS handshake).
    pub open_connections: Gauge,
    /// Transfers in progress.
    pub transfers: Family<KindLabels, Gauge>,
    /// ERP reads by collection and result (counted by the cache since the start).
    pub erp: Family<ErpLabels, Counter>,
    /// Days until the server certificate expires.
    pub server_cert_days: Gauge<f64, AtomicU64>,
    /// Days until the soonest active device certificate expires (absent without devices).
    pub device_cert_days: Gauge<f64, AtomicU64>,
    /// Active (not revoked) devices.
    pub devices: Gauge,
    /// Size of the database file.
    pub database_bytes: Gauge,
    /// Serialises scrapes (their refresh of the snapshot values).
    pub scrape: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("coffer");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "Requests answered, by route, method and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time from a request's headers to the end of its answer",
            Unit::Seconds,
            latency.clone(),
        );
        let auth_rejections = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "auth_rejections",
            "Requests refused by authentication, by problem type",
            auth_rejections.clone(),
        );
        let connections_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed before a request: allowlist, per_address, capacity",
            connections_refused.clone(),
        );
        let bytes_in = Counter::default();
        registry.register_with_unit(
            "http_request_body",
            "Request body bytes received",
            Unit::Bytes,
            bytes_in.clone(),
        );
        let bytes_out = Counter::default();
        registry.register_with_unit(
            "http_response_body",
            "Response body bytes sent",
            Unit::Bytes,
            bytes_out.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections open past the TLS handshake",
            open_connections.clone(),
        );
        let transfers = Family::<KindLabels, Gauge>::default();
        registry.register(
            "transfers_active",
            "Uploads and downloads in progress",
            transfers.clone(),
        );
        let erp = Family::<ErpLabels, Counter>::default();
        registry.register(
            "erp_reads",
            "ERP cache reads by collection and result (hit, miss, stale)",
            erp.clone(),
        );
        let server_cert_days = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "server_certificate_expiry_days",
            "Days until the server certificate expires",
            server_cert_days.clone(),
        );
        let device_cert_days = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "device_certificate_soonest_expiry_days",
            "Days until the soonest active device certificate expires",
            device_cert_days.clone(),
        );
        let devices = Gauge::default();
        registry.register("devices_active", "Devices neither revoked nor expired", devices.clone());
        let database_bytes = Gauge::default();
        registry.register_with_unit(
            "database_size",
            "Size of the database file",
            Unit::Bytes,
            database_bytes.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            auth_rejections,
            connections_refused,
            bytes_in,
            bytes_out,
            open_connections,
            transfers,
            erp,
            server_cert_days,
            device_cert_days,
            devices,
            database_bytes,
            scrape: Mutex::new(()),
        }
    }
}

impl Metrics {
    /// Raises an ERP counter to the cache's own count (the cache counts; this mirrors).
    pub fn mirror_erp(&self, collection: &str, result: &'static str, count: u64) {
        let counter = self.erp.get_or_create(&ErpLabels {
            collection: collection.to_owned(),
            result,
        });
        let seen = counter.get();
        if count > seen {
            counter.inc_by(count - seen);
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
