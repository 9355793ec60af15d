//! Feeding the audit log from the request path: every request that reached a handler or
//! was refused gets one entry (who, from where, what, on what, how it ended, request id),
//! handed to the writer thread without waiting. Requests without an identified device
//! (no certificate, unknown certificate) are recorded at most once per address every
//! [`ANONYMOUS_EVERY`], so strangers cannot grow the log at line rate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{HttpMessage, web};

use super::State;
use super::error::Problem;
use crate::app::audit::AuditEvent;
use crate::model::{DeviceId, Timestamp, UserId};

/// The response header carrying the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// How often a request without an identified device is recorded per address.
pub const ANONYMOUS_EVERY: Duration = Duration::from_secs(10);
/// Addresses remembered for that throttle before the memory is cleared.
const ANONYMOUS_MAX: usize = 10_000;

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

/// Per-address throttle of anonymous entries.
#[derive(Debug, Default)]
pub struct AnonymousGate(Mutex<HashMap<IpAddr, Instant>>);

impl AnonymousGate {
    fn admit(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip else { return true };
        let mut seen = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if seen.get(&ip).is_some_and(|t| now.duration_since(*t) < ANONYMOUS_EVERY) {
            return false;
        }
        if seen.len() >= ANONYMOUS_MAX {
            seen.retain(|_, t| now.duration_since(*t) < ANONYMOUS_EVERY);
        }
        seen.insert(ip, now);
        true
    }
}

/// A fresh request id: 16 hex digits.
fn new_request_id() -> String {
    let bytes: [u8; 8] = crate::crypto::random_bytes().unwrap_or_default();
    crate::sigv4::hex(&bytes)
}

/// Before the handler: gives the request its id.
pub fn begin(req: &ServiceRequest) {
    req.extensions_mut().insert(RequestId(new_request_id()));
}

/// After the handler: records the entry and returns the id in `X-Request-Id`.
pub fn finish<B: MessageBody>(res: &mut ServiceResponse<B>) {
    let req = res.request();
    let Some(state) = req.app_data::<web::Data<State>>() else {
        return;
    };
    let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone());
    let who = req.extensions().get::<AuditWho>().copied();
    let ip = req.peer_addr().map(|a| a.ip());
    if who.is_some() || state.anonymous_audit.admit(ip) {
        let status = res.status();
        let outcome = match res.response().error().and_then(|e| e.as_error::<Problem>()) {
            Some(p) => p.reason.slug().to_owned(),
            None if status.is_success() || status.is_redirection() => "ok".to_owned(),
            None => format!("http-{}", status.as_u16()),
        };
        let pattern = req.match_pattern().unwrap_or_else(|| "(no route)".to_owned());
        let info = req.match_info();
        let target = match (info.get("id"), info.get("collection"), info.get("key")) {
            (Some(id), _, _) => Some(id.to_owned()),
            (None, Some(c), Some(k)) => Some(format!("{c}/{k}")),
            (None, Some(c), None) => Some(c.to_owned()),
            // A created document: its id is in `Location`.
            _ => res
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| l.rsplit('/').next())
                .map(str::to_owned),
        };
        state.audit.record(AuditEvent {
            time: Timestamp::now(),
            action: format!("{} {pattern}", req.method()),
            status: status.as_u16(),
            outcome,
            device: who.map(|w| w.device),
            user: who.map(|w| w.user),
            ip,
            target,
            request_id: request_id.clone(),
            detail: None,
        });
    }
    if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        res.headers_mut().insert(HeaderName::from_static(REQUEST_ID_HEADER), id);
    }
}
