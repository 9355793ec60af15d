//! Who is calling, checked on every request in the design's order: the client
//! certificate's device (active, owner enabled), the failure budget, the SigV4 signature
//! (scope, clock, replay), and the user session bound to that device.
//!
//! The certificate's thumbprint is captured once per connection and looked up on every
//! request, so a revocation or a disabled owner takes effect on the next request even on
//! an open keep-alive connection.

use std::future::{Ready, ready};
use std::net::IpAddr;

use actix_web::dev::Payload;
use actix_web::http::Method;
use actix_web::{FromRequest, HttpRequest, web};
use zeroize::Zeroizing;

use super::State;
use super::error::{Problem, Reason};
use super::replay::ReplayError;
use crate::app::principals::{DeviceInfo, UserInfo};
use crate::app::sessions::{SessionPolicy, ValidSession};
use crate::model::{DeviceId, Role, Timestamp};
use crate::sigv4::{self, Authorization, SigError};

/// The SigV4 service name.
pub const SERVICE: &str = "coffer";
/// The session token header.
pub const TOKEN_HEADER: &str = "x-amz-security-token";
/// Allowed clock difference between a request's `x-amz-date` and the server, seconds.
pub const MAX_SKEW_SECS: i64 = 300;

/// How the server authenticates requests (from `[auth]`).
#[derive(Clone, Debug)]
pub struct AuthSettings {
    /// Require signatures.
    pub signatures: bool,
    /// Require sessions for members' and admins' requests.
    pub sessions: bool,
    /// SigV4 region.
    pub region: String,
    /// Session and lockout rules.
    pub policy: SessionPolicy,
    /// Requests signed before this Unix second are refused: the first whole second after
    /// the server started. Writes must also be dated at least `max_future_write_secs`
    /// later, so that no write an earlier process accepted (dated at most that far ahead
    /// of its clock) can be replayed.
    pub not_before: i64,
    /// How far ahead of the server's clock a write may be dated (small: see `not_before`;
    /// a client whose clock runs ahead corrects it from the refusal's `server_time`).
    pub max_future_write_secs: i64,
}

/// Connection data: the SHA-256 thumbprint of the client's leaf certificate, if any.
#[derive(Clone, Copy, Debug)]
pub struct ClientCert(pub Option<[u8; 32]>);

/// Captures the client certificate when a connection is accepted (after the handshake,
/// whose verifier already checked the chain to the CA and the validity dates).
pub fn on_connect(conn: &dyn std::any::Any, ext: &mut actix_web::dev::Extensions) {
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
    let thumbprint = conn.downcast_ref::<Tls>().and_then(|tls| {
        let (_, session) = tls.get_ref();
        session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|leaf| crate::pki::thumbprint(leaf))
    });
    ext.insert(ClientCert(thumbprint));
}

/// An authenticated caller: an active device, its enabled owner, and (when sessions are
/// on and the route needs one) the session.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The device of the client certificate.
    pub device: DeviceInfo,
    /// Its owner.
    pub user: UserInfo,
    /// The session the request carried, if one was required.
    pub session: Option<ValidSession>,
}

impl Caller {
    /// The owner's role.
    pub fn role(&self) -> Role {
        self.user.body.role
    }

    /// The device the client certificate belongs to (not yet proven to have signed).
    pub fn device_id(&self) -> crate::model::DeviceId {
        self.device.id
    }
}

/// What the signature's payload hash is checked against.
#[derive(Clone, Copy, Debug)]
pub enum Body<'a> {
    /// The route reads no body: the hash is `x-amz-content-sha256` if sent, else the empty
    /// body's.
    Ignored,
    /// A small body read in full.
    Bytes(&'a [u8]),
}

/// The certificate's device and owner, checked, before the signature.
pub struct Identified {
    device: DeviceInfo,
    user: UserInfo,
}

impl Identified {
    /// The role of the device's owner, as known before the signature is checked (to refuse
    /// a large body its role could never send without reading it).
    pub fn role(&self) -> Role {
        self.user.body.role
    }

    /// The device the client certificate belongs to (not yet proven to have signed).
    pub fn device_id(&self) -> crate::model::DeviceId {
        self.device.id
    }
}

fn state(req: &HttpRequest) -> Result<&web::Data<State>, Problem> {
    req.app_data::<web::Data<State>>()
        .ok_or_else(|| Problem::new(Reason::Internal))
}

fn peer_ip(req: &HttpRequest) -> Option<IpAddr> {
    req.peer_addr().map(|a| a.ip())
}

/// Where a request came from, for the log (owned, so it can cross threads).
#[derive(Clone, Debug)]
pub struct Origin {
    method: String,
    path: String,
    ip: Option<IpAddr>,
}

impl Origin {
    /// The request's method, route (the pattern, never the raw path: it can hold ERP
    /// record keys) with its request id, and peer address.
    pub fn of(req: &HttpRequest) -> Self {
        Self {
            method: req.method().to_string(),
            path: format!(
                "{} (request {})",
                req.match_pattern().unwrap_or_else(|| "(no route)".to_owned()),
                super::audit::request_id(req)
            ),
            ip: peer_ip(req),
        }
    }
}

/// Logs a refusal and spends the failure budgets; returns the problem.
pub(crate) fn refuse(
    state: &State,
    req: &HttpRequest,
    device: Option<DeviceId>,
    problem: Problem,
    why: &str,
) -> Problem {
    refuse_at(state, &Origin::of(req), device, problem, why)
}

fn refuse_at(state: &State, origin: &Origin, device: Option<DeviceId>, problem: Problem, why: &str) -> Problem {
    state.limiter.fail(device, origin.ip);
    // The request's own line (status, problem type, device, address) is written when it
    // ends; this adds the finer reason, for chasing a client's fault.
    tracing::debug!(
        target: "coffer::auth",
        method = %origin.method,
        route = %origin.path,
        problem = problem.reason.slug(),
        device = device.map(|d| d.to_string()),
        ip = origin.ip.map(|i| i.to_string()),
        "refused: {why}"
    );
    problem
}

/// Checks the certificate's device and owner and the failure budget.
pub fn identify(req: &HttpRequest) -> Result<Identified, Problem> {
    let state = state(req)?;
    let ip = peer_ip(req);
    let Some(thumbprint) = req.conn_data::<ClientCert>().and_then(|c| c.0) else {
        // Anyone may connect without a certificate (to enrol): such refusals are neither
        // charged to the address's failure budget, which would let strangers behind the
        // same NAT address spend it, nor logged one by one (pipelined requests could flood
        // the log); they are counted and logged at most every few seconds.
        if let Some(ip) = ip {
            state.anonymous_refusals.record(ip);
        }
        return Err(Problem::detail(
            Reason::ClientCertificateRequired,
            "connect with the device's client certificate, or enrol the device",
        ));
    };
    let device = state.vault.device_by_thumbprint(&thumbprint)?;
    // A certificate that names no active device is budgeted by address only.
    let limited = |id: Option<DeviceId>| state.limiter.check(id, ip).map_err(too_many_failures);
    let Some(device) = device else {
        limited(None)?;
        return Err(refuse(
            state,
            req,
            None,
            Problem::new(Reason::DeviceUnknown),
            "unknown certificate",
        ));
    };
    super::audit::note_who(
        req,
        super::audit::AuditWho {
            device: device.id,
            user: device.owner,
        },
    );
    let inactive = if device.body.revoked {
        Some((Reason::DeviceRevoked, "revoked device"))
    } else if device.expires <= Timestamp::now() {
        Some((Reason::DeviceExpired, "expired device"))
    } else {
        None
    };
    if let Some((reason, why)) = inactive {
        limited(None)?;
        let problem = Problem::detail(reason, "enrol the device again");
        return Err(refuse(state, req, None, problem, why));
    }
    limited(Some(device.id))?;
    let user = match state.vault.user(device.owner) {
        Ok(u) => u,
        Err(crate::app::VaultError::NotFound(_)) => {
            return Err(refuse(
                state,
                req,
                None,
                Problem::new(Reason::DeviceUnknown),
                "owner missing",
            ));
        }
        Err(e) => return Err(e.into()),
    };
    if user.body.disabled {
        return Err(refuse(
            state,
            req,
            None,
            Problem::new(Reason::UserDisabled),
            "owner disabled",
        ));
    }
    Ok(Identified { device, user })
}

fn too_many_failures(wait: u64) -> Problem {
    Problem {
        retry_after: Some(wait),
        ..Problem::detail(
            Reason::TooManyAuthFailures,
            format!("too many failed authentications from this device or address; retry in {wait} s"),
        )
    }
}

/// A signature whose payload hash is only known once the streamed body has been read.
pub struct PendingSignature {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, Vec<u8>)>,
    auth: Authorization,
    amz_date: String,
    key: Zeroizing<[u8; 32]>,
    device: DeviceId,
}

/// What a streamed body must still prove once it has been read.
pub enum BodyCheck {
    /// Nothing (signatures are off).
    None,
    /// The signature is verified; the body's SHA-256 must equal the signed
    /// `x-amz-content-sha256`.
    Expect([u8; 32]),
    /// The signature covers the body's SHA-256: verify it then.
    Deferred(Box<PendingSignature>),
}

impl BodyCheck {
    /// Checks the body's SHA-256; for a deferred signature, verifies it and records it
    /// against replays. Nothing may be committed unless this succeeds.
    pub fn finish(self, state: &State, origin: &Origin, sha256: &[u8; 32]) -> Result<(), Problem> {
        match self {
            Self::None => Ok(()),
            Self::Expect(expected) => {
                if bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], &sha256[..])) {
                    Ok(())
                } else {
                    Err(payload_mismatch())
                }
            }
            Self::Deferred(p) => {
                let headers = p.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
                let request = sigv4::Request {
                    method: &p.method,
                    path: &p.path,
                    query: &p.query,
                    headers,
                };
                let hash = sigv4::hex(sha256);
                if sigv4::verify(&request, &p.auth, &p.amz_date, &hash, &p.key).is_err() {
                    // Reserved when the request began, but never valid: release it.
                    state.replay.release(&p.auth.signature);
                    return Err(refuse_at(
                        state,
                        origin,
                        Some(p.device),
                        mismatch(),
                        "signature mismatch (streamed body)",
                    ));
                }
                // The device's request budget: spent now that the request is proven to be
                // its own (see `verify_full`).
                spend_request(state, p.device)?;
                // Its signature was reserved against replays when the request began.
                Ok(())
            }
        }
    }
}

/// Spends one request of `device`'s budget (`limits.device_requests_per_minute`).
fn spend_request(state: &State, device: DeviceId) -> Result<(), Problem> {
    state.requests.attempt(device).map_err(|wait| Problem {
        retry_after: Some(wait),
        ..Problem::detail(
            Reason::TooManyRequests,
            format!(
                "this device made more than {} requests in a minute; retry in {wait} s",
                state.requests.per_minute()
            ),
        )
    })
}

fn payload_mismatch() -> Problem {
    Problem {
        close: true,
        ..Problem::detail(
            Reason::PayloadHashMismatch,
            "the body's SHA-256 differs from x-amz-content-sha256; nothing was stored",
        )
    }
}

fn mismatch() -> Problem {
    Problem::detail(
        Reason::SignatureMismatch,
        "the signature does not match the request; sign it again with this device's secret (SigV4, service coffer)",
    )
}

fn claim(state: &State, origin: &Origin, device: DeviceId, signature: [u8; 32], date_secs: i64) -> Result<(), Problem> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    match state
        .replay
        .claim(device, signature, date_secs + MAX_SKEW_SECS + 1, now)
    {
        Ok(()) => Ok(()),
        Err(ReplayError::Replayed) => Err(refuse_at(
            state,
            origin,
            Some(device),
            Problem {
                close: true,
                ..Problem::detail(
                    Reason::Replayed,
                    "this signed request was already accepted; to repeat a write, sign it again \
                     (a new x-amz-date, or a unique signed X-Coffer-Nonce header)",
                )
            },
            "replayed signature",
        )),
        Err(ReplayError::DeviceFull) => Err(Problem {
            retry_after: Some(60),
            close: true,
            ..Problem::detail(
                Reason::TooManyWrites,
                "too many writes from this device recently; retry in a minute",
            )
        }),
        Err(ReplayError::Full) => Err(Problem {
            retry_after: Some(60),
            close: true,
            ..Problem::detail(
                Reason::Unavailable,
                "too many recent writes to track; retry in a minute",
            )
        }),
    }
}

fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The request as the signature sees it.
fn sig_request(req: &HttpRequest) -> sigv4::Request<'_> {
    let uri = req.uri();
    sigv4::Request {
        method: req.method().as_str(),
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        headers: req.headers().iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect(),
    }
}

/// A write's signature and its date, to record against replays.
type WriteClaim = ([u8; 32], i64);

/// Where the payload hash comes from.
enum PayloadHash<'a> {
    /// Known now (computed, or the empty body's).
    Known(String),
    /// Declared by `x-amz-content-sha256` and signed; the body still has to match.
    Declared(&'a str, [u8; 32]),
    /// Only known after the body is read.
    Later,
}

impl Identified {
    /// The device.
    pub fn device(&self) -> &DeviceInfo {
        &self.device
    }

    /// Checks the signature (payload hash known now) and, if `need_session`, the session.
    pub fn verify(self, req: &HttpRequest, body: Body<'_>, need_session: bool) -> Result<Caller, Problem> {
        let (caller, check) = self.verify_inner(req, Some(body), need_session)?;
        debug_assert!(matches!(check, BodyCheck::None));
        Ok(caller)
    }

    /// Checks what can be checked before a streamed body is read; the returned
    /// [`BodyCheck`] must pass before anything is committed.
    pub fn verify_streamed(self, req: &HttpRequest, need_session: bool) -> Result<(Caller, BodyCheck), Problem> {
        self.verify_inner(req, None, need_session)
    }

    fn verify_inner(
        self,
        req: &HttpRequest,
        body: Option<Body<'_>>,
        need_session: bool,
    ) -> Result<(Caller, BodyCheck), Problem> {
        self.verify_full(req, body, need_session, true)
    }

    /// Signature and session; for a write whose route exists (`claim_writes`), the
    /// signature is then recorded against replays (after the session check, so a request
    /// refused for its session or routed nowhere spends no room in the replay table).
    fn verify_full(
        self,
        req: &HttpRequest,
        body: Option<Body<'_>>,
        need_session: bool,
        claim_writes: bool,
    ) -> Result<(Caller, BodyCheck), Problem> {
        let state = state(req)?;
        let settings = &state.auth;
        let id = self.device.id;
        // One view of the request for the signature and the session.
        let request = sig_request(req);
        let (check, write) = if settings.signatures {
            match self.check_signature(state, req, &request, body) {
                Ok(c) => c,
                Err((problem, why)) => return Err(refuse(state, req, Some(id), problem, &why)),
            }
        } else {
            (BodyCheck::None, None)
        };
        // The device's request budget is spent only once the request is proven to be
        // its own (signed with its secret), so a copy of its certificate alone cannot
        // exhaust it; failures have their own budget. A streamed body's signature is
        // verified once the body is read: its request is counted then
        // (`BodyCheck::finish`).
        if !matches!(check, BodyCheck::Deferred(_)) {
            spend_request(state, id)?;
        }
        let session = if need_session && settings.sessions && self.user.body.role != Role::Integration {
            match self.check_session(state, &request) {
                Ok(s) => Some(s),
                Err((problem, why)) => return Err(refuse(state, req, Some(id), problem, why)),
            }
        } else {
            None
        };
        // A write: its signature must not have been accepted before (`claim` logs and
        // counts a replay itself). A streamed body's signature is reserved now, before the
        // body is read, so a copy cannot slip in while the first is still arriving.
        if let (Some((signature, date_secs)), true) = (write, claim_writes) {
            claim(state, &Origin::of(req), id, signature, date_secs)?;
        }
        Ok((
            Caller {
                device: self.device,
                user: self.user,
                session,
            },
            check,
        ))
    }

    #[allow(clippy::result_large_err)]
    fn check_session(
        &self,
        state: &State,
        request: &sigv4::Request<'_>,
    ) -> Result<ValidSession, (Problem, &'static str)> {
        let token = match request.single(TOKEN_HEADER) {
            Ok(Some(t)) => t,
            Ok(None) => {
                return Err((
                    Problem::detail(
                        Reason::SessionRequired,
                        "log in (POST /v1/session) and send the token as X-Amz-Security-Token",
                    ),
                    "no session token",
                ));
            }
            Err(e) => {
                return Err((
                    Problem::detail(Reason::SessionInvalid, e.to_string()),
                    "bad token header",
                ));
            }
        };
        let now = Timestamp::now();
        match state.vault.check_session(token, &self.device, &state.auth.policy, now) {
            Ok(Ok(valid)) => {
                if valid.needs_touch && state.first_touch(valid.token_hash, now) {
                    let vault = state.vault.clone();
                    let hash = valid.token_hash;
                    // Off the worker thread: a write transaction may wait for another commit.
                    drop(actix_web::rt::task::spawn_blocking(move || {
                        if let Err(e) = vault.touch_session(hash, now) {
                            tracing::warn!("cannot record a session's last use: {e}");
                        }
                    }));
                }
                Ok(valid)
            }
            Ok(Err(refusal)) => Err((
                Problem::detail(Reason::SessionInvalid, "the session has ended; log in again"),
                refusal.as_str(),
            )),
            Err(_) => Err((Problem::new(Reason::Internal), "session lookup failed")),
        }
    }

    // Private, and its error is turned into a response at once: not worth a box.
    #[allow(clippy::result_large_err)]
    fn check_signature(
        &self,
        state: &State,
        req: &HttpRequest,
        request: &sigv4::Request<'_>,
        body: Option<Body<'_>>,
    ) -> Result<(BodyCheck, Option<WriteClaim>), (Problem, String)> {
        let settings = &state.auth;
        let invalid = |detail: String| (Problem::detail(Reason::SignatureInvalid, detail.clone()), detail);
        let value = match request.single("authorization") {
            Ok(Some(v)) => v,
            Ok(None) => {
                return Err((
                    Problem::detail(
                        Reason::SignatureRequired,
                        "sign the request with AWS Signature Version 4 (service coffer, this device's credentials)",
                    ),
                    "no signature".into(),
                ));
            }
            Err(e) => return Err(invalid(e.to_string())),
        };
        let auth = Authorization::parse(value).map_err(|e| invalid(e.to_string()))?;
        let amz_date = match request.single("x-amz-date") {
            Ok(Some(d)) => d,
            Ok(None) => return Err(invalid("the x-amz-date header is required".into())),
            Err(e) => return Err(invalid(e.to_string())),
        };
        let date = sigv4::parse_amz_date(amz_date)
            .ok_or_else(|| invalid("x-amz-date must look like 20261129T083000Z".into()))?;
        if amz_date.get(..8) != Some(auth.date.as_str()) {
            return Err(invalid("the credential's date must be the date of x-amz-date".into()));
        }
        if auth.region != settings.region || auth.service != SERVICE {
            return Err(invalid(format!(
                "the credential scope must be {}/{}/{SERVICE}/aws4_request",
                auth.date, settings.region
            )));
        }
        if auth.access_key.parse::<DeviceId>().ok() != Some(self.device.id) {
            return Err((
                Problem::detail(
                    Reason::AccessKeyMismatch,
                    "the access key id must be the id of the device whose certificate is used",
                ),
                "access key of another device".into(),
            ));
        }
        // A path with empty, `.` or `..` segments has two canonical forms (normalized or
        // as sent) that a signer may have used; the API has no such paths, so refuse them
        // rather than accept a signature that does not cover every byte of the path.
        if request.query.contains('+') {
            // Form decoding reads `+` as a space, SigV4 as a plus: two meanings, one
            // signature.
            return Err(invalid("encode '+' in the query as %2B (and spaces as %20)".into()));
        }
        if sigv4::has_dot_segments(request.path) {
            return Err(invalid("the path must not contain empty, '.' or '..' segments".into()));
        }
        for required in ["host", "x-amz-date"] {
            if !auth.signs(required) {
                return Err(invalid(format!("the {required} header must be signed")));
            }
        }
        for (name, value) in req.headers() {
            let n = name.as_str();
            let must = n.starts_with("x-amz-") || n.starts_with("x-coffer-");
            if must && !auth.signs(n) {
                return Err(invalid(format!("the {n} header must be signed")));
            }
            // The canonical form folds runs of whitespace, so a value with one would
            // share its signature with a different value: such values must be
            // percent-encoded.
            let bytes = value.as_bytes();
            let loose = bytes.first().is_some_and(|b| b.is_ascii_whitespace())
                || bytes.last().is_some_and(|b| b.is_ascii_whitespace())
                || bytes
                    .windows(2)
                    .any(|w| w[0].is_ascii_whitespace() && w[1].is_ascii_whitespace())
                || bytes.contains(&b'\t');
            if n.starts_with("x-coffer-") && loose {
                return Err((
                    Problem::detail(
                        Reason::InvalidRequest,
                        format!("{n}: percent-encode tabs and repeated, leading or trailing spaces (%20)"),
                    ),
                    "whitespace in a signed value".into(),
                ));
            }
        }
        let now = time::OffsetDateTime::now_utc();
        let date_secs = date.unix_timestamp();
        // The refusal carries the server's time, so the client can correct its offset.
        let skewed = |rule: String, why: &str| {
            let server_time = sigv4::amz_date(now);
            let detail = format!(
                "x-amz-date {amz_date} is {rule} the server's time {server_time}; correct the clock offset and sign again"
            );
            (
                Problem {
                    server_time: Some(server_time),
                    ..Problem::detail(Reason::RequestTimeSkewed, detail)
                },
                why.to_owned(),
            )
        };
        if (now.unix_timestamp() - date_secs).abs() > MAX_SKEW_SECS {
            return Err(skewed("more than 5 minutes from".into(), "clock skew"));
        }
        let write = is_write(req.method());
        let ahead = settings.max_future_write_secs;
        if write && date_secs - now.unix_timestamp() > ahead {
            return Err(skewed(
                format!("more than {ahead} s (the most a write may be) ahead of"),
                "write dated in the future",
            ));
        }
        let not_before = settings.not_before + if write { ahead } else { 0 };
        if date_secs < not_before {
            // A write dated after the start but inside the window in which writes wait
            // (see `not_before`) can simply be signed again in a few seconds.
            let wait = not_before - date_secs;
            let detail = if write && date_secs >= settings.not_before {
                format!("the server started moments ago and accepts writes in {wait} s; sign it again then")
            } else {
                "the request was signed before the server started; sign it again and retry".to_owned()
            };
            return Err((
                Problem {
                    retry_after: u64::try_from(wait).ok().filter(|_| write),
                    ..Problem::detail(Reason::SignedBeforeStart, detail)
                },
                "signed before the server started".into(),
            ));
        }
        let Some(secret) = &self.device.body.signing_secret else {
            return Err(invalid(
                "this device has no signing secret; issue or enrol it again".into(),
            ));
        };
        let payload = match request.single("x-amz-content-sha256") {
            Err(e) => return Err(invalid(e.to_string())),
            Ok(Some(declared)) => match sigv4::parse_hex32(declared) {
                Some(bytes) if declared.bytes().all(|b| !b.is_ascii_uppercase()) => {
                    PayloadHash::Declared(declared, bytes)
                }
                _ => {
                    return Err((
                        Problem::detail(
                            Reason::InvalidRequest,
                            "x-amz-content-sha256 must be the lower-case hex SHA-256 of the body \
                             (UNSIGNED-PAYLOAD and streaming signatures are not accepted)",
                        ),
                        "unusable x-amz-content-sha256".into(),
                    ));
                }
            },
            Ok(None) => match body {
                Some(Body::Ignored) => PayloadHash::Known(sigv4::EMPTY_SHA256.to_owned()),
                Some(Body::Bytes(b)) => PayloadHash::Known(sigv4::sha256_hex(b)),
                None => PayloadHash::Later,
            },
        };
        if let (PayloadHash::Declared(_, declared), Some(Body::Bytes(b))) = (&payload, body) {
            let actual: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(b).into();
            if actual != *declared {
                return Err((payload_mismatch(), "payload hash mismatch".into()));
            }
        }
        let key = state.signing_key(self.device.id, secret, &auth.date, &auth.region);
        let signature = auth.signature;
        let check = match payload {
            PayloadHash::Later => {
                // Verified (and claimed against replays) once the body's hash is known.
                return Ok((
                    BodyCheck::Deferred(Box::new(PendingSignature {
                        method: request.method.to_owned(),
                        path: request.path.to_owned(),
                        query: request.query.to_owned(),
                        headers: request
                            .headers
                            .iter()
                            .map(|(n, v)| ((*n).to_owned(), v.to_vec()))
                            .collect(),
                        auth,
                        amz_date: amz_date.to_owned(),
                        key,
                        device: self.device.id,
                    })),
                    write.then_some((signature, date_secs)),
                ));
            }
            PayloadHash::Known(hash) => {
                sigv4::verify(request, &auth, amz_date, &hash, &key).map_err(|e| sig_error(e, &invalid))?;
                BodyCheck::None
            }
            PayloadHash::Declared(hash, bytes) => {
                sigv4::verify(request, &auth, amz_date, hash, &key).map_err(|e| sig_error(e, &invalid))?;
                if body.is_none() {
                    BodyCheck::Expect(bytes)
                } else {
                    BodyCheck::None
                }
            }
        };
        Ok((check, write.then_some((signature, date_secs))))
    }
}

fn sig_error(e: SigError, invalid: &dyn Fn(String) -> (Problem, String)) -> (Problem, String) {
    match e {
        SigError::Mismatch => (mismatch(), "signature mismatch".into()),
        other => invalid(other.to_string()),
    }
}

/// A device that signed its request; no session required (login, logout).
pub struct SignedDevice(pub Caller);

/// A fully authenticated caller for answers that change nothing (unknown paths and
/// methods): its write signature is not recorded, so such requests cannot fill the
/// replay table.
pub struct Knocking(pub Caller);

impl FromRequest for Knocking {
    type Error = Problem;
    type Future = Ready<Result<Self, Problem>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            identify(req)
                .and_then(|who| who.verify_full(req, Some(Body::Ignored), true, false))
                .map(|(c, _)| Knocking(c)),
        )
    }
}

/// Device, signature and session (documents and everything else).
impl FromRequest for Caller {
    type Error = Problem;
    type Future = Ready<Result<Self, Problem>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(identify(req).and_then(|who| who.verify(req, Body::Ignored, true)))
    }
}

impl FromRequest for SignedDevice {
    type Error = Problem;
    type Future = Ready<Result<Self, Problem>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            identify(req)
                .and_then(|who| who.verify(req, Body::Ignored, false))
                .map(SignedDevice),
        )
    }
}

impl FromRequest for Identified {
    type Error = Problem;
    type Future = Ready<Result<Self, Problem>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(identify(req))
    }
}
