//! One log line and the metrics of every request, written when its answer has been sent
//! (or abandoned): request id, device, user, address, method, route pattern, status,
//! problem type, body bytes in and out, duration.
//!
//! The raw path and query are never logged (an ERP key or a document name could be in
//! them), nor a problem's detail (it can echo the request body), nor any header.

use std::cell::Cell;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use actix_web::HttpMessage;
use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::web::Bytes;
use futures_util::StreamExt;

use super::audit::AuditWho;
use super::error::Reason;
use super::metrics::{Metrics, ReasonLabels, RequestLabels, RouteLabels, method_label};
use crate::telemetry::REQUEST_TARGET;

/// Refused requests of callers without a device (no client certificate, an unknown one,
/// over a connection cap) cost a stranger nothing: their lines are logged at most
/// [`UNIDENTIFIED_LINES`] per [`UNIDENTIFIED_WINDOW`]; the rest are counted into one
/// summary line per window (and always in the metrics), so a flood cannot drown the log
/// or exhaust journald's rate limit.
pub const UNIDENTIFIED_LINES: u32 = 20;
/// See [`UNIDENTIFIED_LINES`].
pub const UNIDENTIFIED_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// The throttle of [`UNIDENTIFIED_LINES`].
#[derive(Debug)]
pub struct LogGate(std::sync::Mutex<GateWindow>);

#[derive(Debug)]
struct GateWindow {
    opened: Instant,
    logged: u32,
    suppressed: u64,
}

impl Default for LogGate {
    fn default() -> Self {
        Self(std::sync::Mutex::new(GateWindow {
            opened: Instant::now(),
            logged: 0,
            suppressed: 0,
        }))
    }
}

impl LogGate {
    /// Whether this line is written (else it is counted).
    fn admit(&self) -> bool {
        let mut w = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if w.opened.elapsed() >= UNIDENTIFIED_WINDOW {
            Self::close(&mut w);
        }
        if w.logged < UNIDENTIFIED_LINES {
            w.logged += 1;
            true
        } else {
            w.suppressed += 1;
            false
        }
    }

    /// Writes the summary of a window that has ended (every window, with `all`).
    pub fn flush(&self, all: bool) {
        let mut w = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if all || w.opened.elapsed() >= UNIDENTIFIED_WINDOW {
            Self::close(&mut w);
        }
    }

    fn close(w: &mut GateWindow) {
        if w.suppressed > 0 {
            tracing::info!(
                target: REQUEST_TARGET,
                suppressed = w.suppressed,
                "{} more refused requests without a device in the last {} s were not logged one by one (they are \
                 in coffer_http_requests_total)",
                w.suppressed,
                w.opened.elapsed().as_secs()
            );
        }
        *w = GateWindow {
            opened: Instant::now(),
            logged: 0,
            suppressed: 0,
        };
    }
}

/// A request being served: what its log line needs besides the answer.
pub struct Observed {
    metrics: Option<Arc<Metrics>>,
    gate: Option<Arc<LogGate>>,
    start: Instant,
    method: &'static str,
    route: String,
    request_id: String,
    ip: Option<IpAddr>,
    bytes_in: Rc<Cell<u64>>,
    who: Rc<dyn Fn() -> Option<AuditWho>>,
    status: u16,
    reason: Option<Reason>,
    bytes_out: u64,
}

/// Before the handler: starts the clock and counts the request body as it is read.
pub fn begin(
    req: &mut ServiceRequest,
    request_id: String,
    route: String,
    who: Rc<dyn Fn() -> Option<AuditWho>>,
) -> Observed {
    let bytes_in = Rc::new(Cell::new(0u64));
    match req.take_payload() {
        Payload::None => {}
        payload => {
            let counter = bytes_in.clone();
            let counted = payload.map(move |chunk| {
                if let Ok(b) = &chunk {
                    counter.set(counter.get().saturating_add(b.len() as u64));
                }
                chunk
            });
            req.set_payload(Payload::Stream {
                payload: Box::pin(counted),
            });
        }
    }
    let state = req.app_data::<actix_web::web::Data<super::State>>();
    Observed {
        metrics: state.map(|s| s.metrics.clone()),
        gate: state.map(|s| s.log_gate.clone()),
        start: Instant::now(),
        method: method_label(req.method()),
        route,
        request_id,
        ip: req.peer_addr().map(|a| a.ip()),
        bytes_in,
        who,
        // Until an answer is known: the client went away first.
        status: 499,
        reason: None,
        bytes_out: 0,
    }
}

/// After the handler: the answer's status and problem are known; the line is written when
/// its body has been sent (or dropped, if the client goes away during it).
pub fn finish<B: MessageBody + Unpin>(
    mut observed: Observed,
    reason: Option<Reason>,
    res: ServiceResponse<B>,
) -> ServiceResponse<Counted<B>> {
    observed.status = res.status().as_u16();
    observed.reason = reason;
    res.map_body(move |_, body| Counted {
        body,
        observed: Some(observed),
    })
}

impl Drop for Observed {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        let who = (self.who)();
        let bytes_in = self.bytes_in.get();
        if let Some(m) = &self.metrics {
            m.requests
                .get_or_create(&RequestLabels {
                    route: self.route.clone(),
                    method: self.method,
                    status: self.status,
                })
                .inc();
            m.latency
                .get_or_create(&RouteLabels {
                    route: self.route.clone(),
                    method: self.method,
                })
                .observe(elapsed.as_secs_f64());
            m.bytes_in.inc_by(bytes_in);
            m.bytes_out.inc_by(self.bytes_out);
            if let Some(r) = self.reason.filter(|r| r.is_authentication()) {
                m.auth_rejections
                    .get_or_create(&ReasonLabels { reason: r.slug() })
                    .inc();
            }
        }
        if who.is_none()
            && self.status >= 400
            && let Some(gate) = &self.gate
            && !gate.admit()
        {
            return;
        }
        let problem = self.reason.map(Reason::slug);
        // As everywhere else (CLI, audit export): 32 hex digits, not a 39-digit number
        // that JSON readers would round.
        let device = who.map(|w| w.device.to_string());
        let user = who.map(|w| w.user.to_string());
        let ip = self.ip.map(|ip| ip.to_string());
        let duration_ms = (elapsed.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    target: REQUEST_TARGET,
                    request_id = %self.request_id,
                    method = self.method,
                    route = %self.route,
                    status = self.status,
                    problem,
                    device,
                    user,
                    ip,
                    bytes_in,
                    bytes_out = self.bytes_out,
                    duration_ms,
                    "request"
                )
            };
        }
        if self.status >= 500 && self.status != 499 {
            line!(warn);
        } else {
            line!(info);
        }
    }
}

/// A response body that counts what it sends and writes its request's line when it ends.
pub struct Counted<B> {
    body: B,
    observed: Option<Observed>,
}

impl<B: MessageBody + Unpin> MessageBody for Counted<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = &mut *self;
        let next = Pin::new(&mut this.body).poll_next(cx);
        match &next {
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(o) = &mut this.observed {
                    o.bytes_out = o.bytes_out.saturating_add(chunk.len() as u64);
                }
            }
            // The end (or a failure): the line is written now, not when actix drops the
            // body later.
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                this.observed = None;
            }
            Poll::Pending => {}
        }
        next
    }
}
