//! Feeding the audit log from the request path: every request that reached the HTTP
//! layer gets one entry (who, from where, what, on what, how it ended, request id), handed
//! to the writer thread without waiting, also when the client goes away before the answer
//! (`499 client-closed`: the work may have been done).
//!
//! Successful requests are always recorded. Refusals are recorded at most once per device
//! (or, without an identified device, per address) every [`REFUSALS_EVERY`]; the next
//! recorded refusal says how many were left out, so a flood of bad requests (from a
//! revoked device, a stranger, a broken client) cannot grow the log at line rate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{HttpMessage, HttpRequest, web};

use super::State;
use super::error::Problem;
use crate::app::audit::AuditEvent;
use crate::model::{DeviceId, Timestamp, UserId};

/// The response header carrying the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// How often refusals are recorded one by one per device or address.
pub const REFUSALS_EVERY: Duration = Duration::from_secs(10);
/// Devices and addresses remembered for that throttle.
const REFUSALS_MAX: usize = 10_000;

/// The device (from the client certificate) and its owner, once known; set by
/// authentication even when the request is then refused.
#[derive(Clone, Copy, Debug)]
pub struct AuditWho {
    /// The certificate's device.
    pub device: DeviceId,
    /// Its owner.
    pub user: UserId,
}

/// The request's id.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Source {
    Device(DeviceId),
    Address(IpAddr),
    Unknown,
}

/// Per-device (or per-address) throttle of recorded refusals.
#[derive(Debug, Default)]
pub struct RefusalGate(Mutex<HashMap<Source, (Instant, u64)>>);

impl RefusalGate {
    /// `Some(left out since the last recorded one)` if this refusal is recorded.
    fn admit(&self, source: Source) -> Option<u64> {
        let mut seen = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if let Some((at, skipped)) = seen.get_mut(&source)
            && now.duration_since(*at) < REFUSALS_EVERY
        {
            *skipped += 1;
            return None;
        }
        if seen.len() >= REFUSALS_MAX {
            seen.retain(|_, (t, _)| now.duration_since(*t) < REFUSALS_EVERY);
            if seen.len() >= REFUSALS_MAX {
                // Flooded from very many sources at once: forget rather than scan forever.
                seen.clear();
            }
        }
        let skipped = seen.insert(source, (now, 0)).map_or(0, |(_, n)| n);
        Some(skipped)
    }
}

/// A fresh request id: 16 hex digits.
fn new_request_id() -> String {
    let bytes: [u8; 8] = crate::crypto::random_bytes().unwrap_or_default();
    crate::sigv4::hex(&bytes)
}

/// The request's id, for logs.
pub fn request_id(req: &HttpRequest) -> String {
    req.extensions()
        .get::<RequestId>()
        .map_or_else(|| "-".to_owned(), |r| r.0.clone())
}

/// An entry not yet recorded: if the request ends without an answer (the client went
/// away, the future was dropped), it is recorded on drop as `499 client-closed`.
pub struct Pending {
    req: Option<HttpRequest>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(req) = self.req.take() {
            record(&req, 499, "client-closed".to_owned(), None);
        }
    }
}

/// Before the handler: gives the request its id.
pub fn begin(req: &ServiceRequest) -> Pending {
    req.extensions_mut().insert(RequestId(new_request_id()));
    Pending {
        req: Some(req.request().clone()),
    }
}

/// After the handler: records the entry and returns the id in `X-Request-Id`.
pub fn finish<B: MessageBody>(mut pending: Pending, res: &mut ServiceResponse<B>) {
    pending.req = None;
    let status = res.status();
    let outcome = match res.response().error().and_then(|e| e.as_error::<Problem>()) {
        Some(p) => p.reason.slug().to_owned(),
        None if status.is_success() || status.is_redirection() => "ok".to_owned(),
        None => format!("http-{}", status.as_u16()),
    };
    let location = res
        .headers()
        .get(header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .map(str::to_owned);
    record(res.request(), status.as_u16(), outcome, location.as_deref());
    let id = res.request().extensions().get::<RequestId>().map(|r| r.0.clone());
    if let Some(id) = id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        res.headers_mut().insert(HeaderName::from_static(REQUEST_ID_HEADER), id);
    }
}

fn record(req: &HttpRequest, status: u16, outcome: String, location: Option<&str>) {
    let Some(state) = req.app_data::<web::Data<State>>() else {
        return;
    };
    let who = req.extensions().get::<AuditWho>().copied();
    let ip = req.peer_addr().map(|a| a.ip());
    let mut detail = None;
    if !(200..400).contains(&status) && status != 499 {
        let source = match (who, ip) {
            (Some(w), _) => Source::Device(w.device),
            (None, Some(ip)) => Source::Address(ip),
            (None, None) => Source::Unknown,
        };
        match state.refusals_audited.admit(source) {
            None => return,
            Some(0) => {}
            Some(n) => {
                detail = Some(format!(
                    "{n} more refusals from the same source since the last recorded one were not recorded one by one"
                ));
            }
        }
    }
    let pattern = req.match_pattern().unwrap_or_else(|| "(no route)".to_owned());
    let info = req.match_info();
    let target = match (info.get("id"), info.get("collection"), info.get("key")) {
        (Some(id), _, _) => Some(id.to_owned()),
        (None, Some(c), Some(k)) => Some(format!("{c}/{k}")),
        (None, Some(c), None) => Some(c.to_owned()),
        // A created object: its id is in `Location`.
        _ => location.and_then(|l| l.rsplit('/').next()).map(str::to_owned),
    };
    state.audit.record(AuditEvent {
        time: Timestamp::now(),
        action: format!("{} {pattern}", req.method()),
        status,
        outcome,
        device: who.map(|w| w.device),
        user: who.map(|w| w.user),
        ip,
        target,
        request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()),
        detail,
    });
}
