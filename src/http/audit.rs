//! Feeding the audit log from the request path: every request that reached the HTTP
//! layer gets one entry (who, from where, what, on what, how it ended, request id), handed
//! to the writer thread without waiting, also when the client goes away before the answer
//! (`499 client-closed`: the work may have been done).
//!
//! Successful requests are always recorded. A refusal is recorded one by one at most once
//! every [`REFUSALS_EVERY`] per (device, or address or IPv6 /64 without one; action;
//! outcome); the others in that window are counted and written as one summary entry when
//! it closes, so a flood of bad requests (from a revoked device, a stranger, a broken
//! client) cannot grow the log at line rate, and none goes unrecorded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{HttpMessage, HttpRequest, web};

use super::State;
use super::error::{Problem, Reason};
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

/// What authentication learns about a request, shared with its [`Pending`] entry (which
/// cannot hold the request itself: routing needs it unshared).
#[derive(Clone, Debug, Default)]
struct Learned {
    who: Option<AuditWho>,
    target: Option<String>,
}

/// The request's slot for [`Learned`], in its extensions.
#[derive(Clone, Debug, Default)]
struct Slot(std::rc::Rc<std::cell::RefCell<Learned>>);

/// Authentication found the request's device: noted for its audit entry, with the
/// object the route names.
pub fn note_who(req: &HttpRequest, who: AuditWho) {
    if let Some(slot) = req.extensions().get::<Slot>() {
        let mut learned = slot.0.borrow_mut();
        learned.who = Some(who);
        learned.target = target_of(req, None);
    }
}

/// The object a request acts on: the route's id, `collection/key` or collection, or the
/// id in the `Location` of a created object.
fn target_of(req: &HttpRequest, location: Option<&str>) -> Option<String> {
    let info = req.match_info();
    match (info.get("id"), info.get("collection"), info.get("key")) {
        (Some(id), _, _) => Some(id.to_owned()),
        (None, Some(c), Some(k)) => Some(format!("{c}/{k}")),
        (None, Some(c), None) => Some(c.to_owned()),
        _ => location.and_then(|l| l.rsplit('/').next()).map(str::to_owned),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Source {
    Device(DeviceId, UserId),
    /// An address (IPv6: its /64, like every other per-address budget).
    Address(IpAddr),
    Unknown,
}

/// What refusals are grouped by: who, and what they tried and how it ended, so one
/// harmless refusal cannot cover other attempts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RefusalKind {
    source: Source,
    action: String,
    outcome: String,
    status: u16,
}

#[derive(Debug)]
struct Window {
    opened: Instant,
    skipped: u64,
    ip: Option<IpAddr>,
}

/// Per-(source, action, outcome) throttle of recorded refusals. What it leaves out is
/// counted and written as a summary entry when the window closes ([`Self::summaries`],
/// called every few seconds and when the server stops), so nothing is lost silently.
#[derive(Debug, Default)]
pub struct RefusalGate(Mutex<HashMap<RefusalKind, Window>>);

impl RefusalGate {
    /// Whether this refusal is recorded one by one (else it is counted), and the summary
    /// of the expired window it replaces, if that one left refusals out.
    fn admit(&self, kind: RefusalKind, ip: Option<IpAddr>) -> (bool, Option<AuditEvent>) {
        let mut seen = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if let Some(w) = seen.get_mut(&kind)
            && now.duration_since(w.opened) < REFUSALS_EVERY
        {
            w.skipped += 1;
            return (false, None);
        }
        if seen.len() >= REFUSALS_MAX && !seen.contains_key(&kind) {
            // Flooded from very many sources at once: further refusals are recorded one by
            // one until the sweep closes windows (the log grows, but nothing is hidden).
            return (true, None);
        }
        let fresh = Window {
            opened: now,
            skipped: 0,
            ip,
        };
        let closed = seen
            .insert(kind.clone(), fresh)
            .filter(|w| w.skipped > 0)
            .map(|w| summary(&kind, &w));
        (true, closed)
    }

    /// Closes the windows older than [`REFUSALS_EVERY`] (all of them with `all`) and
    /// returns a summary entry for each that left refusals out.
    pub fn summaries(&self, all: bool) -> Vec<AuditEvent> {
        let mut seen = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let mut out = Vec::new();
        seen.retain(|kind, w| {
            if !all && now.duration_since(w.opened) < REFUSALS_EVERY {
                return true;
            }
            if w.skipped > 0 {
                out.push(summary(kind, w));
            }
            false
        });
        out
    }
}

/// The entry counting the refusals a window left out.
fn summary(kind: &RefusalKind, w: &Window) -> AuditEvent {
    let (device, user) = match kind.source {
        Source::Device(d, u) => (Some(d), Some(u)),
        _ => (None, None),
    };
    AuditEvent {
        time: Timestamp::now(),
        action: kind.action.clone(),
        status: kind.status,
        outcome: kind.outcome.clone(),
        device,
        user,
        ip: w.ip,
        target: None,
        request_id: None,
        detail: Some(format!(
            "{} more such refusals from the same source within {} s of the one recorded, not recorded one by one",
            w.skipped,
            REFUSALS_EVERY.as_secs()
        )),
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
    state: Option<web::Data<State>>,
    method: String,
    pattern: String,
    ip: Option<IpAddr>,
    request_id: String,
    slot: Slot,
    done: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            let learned = self.slot.0.borrow().clone();
            self.record(499, "client-closed".to_owned(), learned.who, learned.target);
        }
    }
}

impl Pending {
    /// The request's id.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The route pattern (`(no route)` for none), found once per request.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Reads the device and user authentication noted, when asked (for the log line).
    pub fn who_reader(&self) -> std::rc::Rc<dyn Fn() -> Option<AuditWho>> {
        let slot = self.slot.clone();
        std::rc::Rc::new(move || slot.0.borrow().who)
    }

    fn record(&self, status: u16, outcome: String, who: Option<AuditWho>, target: Option<String>) {
        let Some(state) = &self.state else { return };
        let action = format!("{} {}", self.method, self.pattern);
        if !(200..400).contains(&status) && status != 499 {
            let source = match (who, self.ip) {
                (Some(w), _) => Source::Device(w.device, w.user),
                (None, Some(ip)) => Source::Address(super::ratelimit::ip_key(ip)),
                (None, None) => Source::Unknown,
            };
            let kind = RefusalKind {
                source,
                action: action.clone(),
                outcome: outcome.clone(),
                status,
            };
            let (record, closed) = state.refusals_audited.admit(kind, self.ip);
            if let Some(summary) = closed {
                state.audit.record(summary);
            }
            if !record {
                return;
            }
        }
        state.audit.record(AuditEvent {
            time: Timestamp::now(),
            action,
            status,
            outcome,
            device: who.map(|w| w.device),
            user: who.map(|w| w.user),
            ip: self.ip,
            target,
            request_id: Some(self.request_id.clone()),
            detail: None,
        });
    }
}

/// Before the handler: gives the request its id and its pending audit entry.
pub fn begin(req: &ServiceRequest) -> Pending {
    let request_id = new_request_id();
    let slot = Slot::default();
    req.extensions_mut().insert(RequestId(request_id.clone()));
    req.extensions_mut().insert(slot.clone());
    Pending {
        state: req.app_data::<web::Data<State>>().cloned(),
        method: req.method().to_string(),
        pattern: req.match_pattern().unwrap_or_else(|| "(no route)".to_owned()),
        ip: req.peer_addr().map(|a| a.ip()),
        request_id,
        slot,
        done: false,
    }
}

/// After the handler: records the entry and returns the id in `X-Request-Id`; returns
/// the problem the request was refused with, if any.
pub fn finish<B: MessageBody>(mut pending: Pending, res: &mut ServiceResponse<B>) -> Option<Reason> {
    pending.done = true;
    let status = res.status();
    let reason = res
        .response()
        .error()
        .and_then(|e| e.as_error::<Problem>())
        .map(|p| p.reason);
    let outcome = match reason {
        Some(r) => r.slug().to_owned(),
        None if status.is_success() || status.is_redirection() => "ok".to_owned(),
        None => format!("http-{}", status.as_u16()),
    };
    let location = res
        .headers()
        .get(header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .map(str::to_owned);
    let who = pending.slot.0.borrow().who;
    let target = target_of(res.request(), location.as_deref());
    pending.record(status.as_u16(), outcome, who, target);
    if let Ok(id) = HeaderValue::from_str(&pending.request_id) {
        res.headers_mut().insert(HeaderName::from_static(REQUEST_ID_HEADER), id);
    }
    reason
}
