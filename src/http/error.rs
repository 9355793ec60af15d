//! Every HTTP error is an RFC 9457 problem (`application/problem+json`) with a stable
//! `type` per reason, mapped here and nowhere else. A 5xx never shows internals.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::app::VaultError;
use crate::store::StoreError;

/// Prefix of every problem `type`; the suffix is the reason's stable slug.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:coffer:problem:";

/// The reasons a request can fail, each with its status and slug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// No client certificate was presented (only enrolment works without one).
    ClientCertificateRequired,
    /// The certificate chains to the CA but no device holds it.
    DeviceUnknown,
    /// The device was revoked.
    DeviceRevoked,
    /// The device's certificate has expired.
    DeviceExpired,
    /// The device's owner is disabled.
    UserDisabled,
    /// The request carries no `Authorization` signature.
    SignatureRequired,
    /// The signature header is malformed, its scope is wrong, or a required header is not
    /// signed.
    SignatureInvalid,
    /// The signature does not match the request (wrong secret, or the request changed).
    SignatureMismatch,
    /// The access key id is not the device of the client certificate.
    AccessKeyMismatch,
    /// `x-amz-date` is more than 5 minutes from the server's clock.
    RequestTimeSkewed,
    /// The request was signed before the server started.
    SignedBeforeStart,
    /// A state-changing request with an already-accepted signature.
    Replayed,
    /// The body does not match `x-amz-content-sha256`.
    PayloadHashMismatch,
    /// The route needs a session and none was sent.
    SessionRequired,
    /// The session token is unknown, ended, expired, idle, or another device's.
    SessionInvalid,
    /// Wrong user name, password or one-time code.
    LoginFailed,
    /// The password was right; the account also needs its TOTP code.
    TotpRequired,
    /// Too many failed logins: the account is locked for a while.
    AccountLocked,
    /// Too many failed authentications from this device or address.
    TooManyAuthFailures,
    /// Too many writes (or logins) from this device recently.
    TooManyWrites,
    /// The enrolment code is unknown, already used or expired (one reason for all three).
    EnrolmentCodeInvalid,
    /// The CSR is malformed, its signature does not verify, or its key is not ECDSA P-256.
    CsrInvalid,
    /// Too many enrolment attempts from this address; retry after `Retry-After`.
    TooManyEnrolments,
    /// The caller's role may not use this endpoint.
    RoleNotPermitted,
    /// The caller may see the object but not change it.
    NotPermitted,
    /// No such object, or not visible to the caller (indistinguishable on purpose).
    NotFound,
    /// The method is not supported on this path.
    MethodNotAllowed,
    /// The request is malformed (headers, body, query, field lengths).
    InvalidRequest,
    /// The upload is larger than the configured limit.
    PayloadTooLarge,
    /// The requested byte range lies outside the document.
    RangeNotSatisfiable,
    /// The request body stalled for longer than the idle timeout.
    RequestTimeout,
    /// Too many uploads or downloads in progress (for this device or overall); retry later.
    TooManyTransfers,
    /// Stored data failed its integrity check.
    IntegrityError,
    /// The server is busy (database maintenance); retry later.
    Unavailable,
    /// The upstream ERP failed (refused, errored, answered nonsense) and no cached copy
    /// is usable.
    UpstreamFailed,
    /// The upstream ERP did not answer in time and no cached copy is usable.
    UpstreamTimeout,
    /// Too many ERP calls are waiting (overall or for this device) and no cached copy is
    /// usable; retry after `Retry-After`.
    UpstreamBusy,
    /// This device made more requests than `limits.device_requests_per_minute` allows;
    /// retry after `Retry-After`.
    TooManyRequests,
    /// The server holds `limits.max_connections` connections already; this one is
    /// answered and closed. Retry after `Retry-After`.
    TooManyConnections,
    /// Anything else; details are logged, not returned.
    Internal,
}

impl Reason {
    /// HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            Self::ClientCertificateRequired
            | Self::DeviceUnknown
            | Self::DeviceRevoked
            | Self::DeviceExpired
            | Self::SignatureRequired
            | Self::SignatureInvalid
            | Self::SignatureMismatch
            | Self::AccessKeyMismatch
            | Self::RequestTimeSkewed
            | Self::SignedBeforeStart
            | Self::SessionRequired
            | Self::SessionInvalid
            | Self::LoginFailed
            | Self::TotpRequired
            | Self::EnrolmentCodeInvalid => StatusCode::UNAUTHORIZED,
            Self::CsrInvalid => StatusCode::BAD_REQUEST,
            Self::TooManyEnrolments => StatusCode::TOO_MANY_REQUESTS,
            Self::Replayed => StatusCode::CONFLICT,
            Self::PayloadHashMismatch => StatusCode::BAD_REQUEST,
            Self::AccountLocked | Self::TooManyAuthFailures | Self::TooManyWrites => StatusCode::TOO_MANY_REQUESTS,
            Self::UserDisabled | Self::RoleNotPermitted | Self::NotPermitted => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::InvalidRequest => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::TooManyTransfers | Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::TooManyConnections => StatusCode::SERVICE_UNAVAILABLE,
            Self::IntegrityError | Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamFailed => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamBusy => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Stable slug, the suffix of the problem `type`.
    pub fn slug(self) -> &'static str {
        match self {
            Self::ClientCertificateRequired => "client-certificate-required",
            Self::DeviceUnknown => "device-unknown",
            Self::DeviceRevoked => "device-revoked",
            Self::DeviceExpired => "device-expired",
            Self::UserDisabled => "user-disabled",
            Self::SignatureRequired => "signature-required",
            Self::SignatureInvalid => "signature-invalid",
            Self::SignatureMismatch => "signature-mismatch",
            Self::AccessKeyMismatch => "access-key-mismatch",
            Self::RequestTimeSkewed => "request-time-skewed",
            Self::SignedBeforeStart => "signed-before-start",
            Self::Replayed => "replayed-request",
            Self::PayloadHashMismatch => "payload-hash-mismatch",
            Self::SessionRequired => "session-required",
            Self::SessionInvalid => "session-invalid",
            Self::LoginFailed => "login-failed",
            Self::TotpRequired => "totp-required",
            Self::AccountLocked => "account-locked",
            Self::TooManyAuthFailures => "too-many-auth-failures",
            Self::TooManyWrites => "too-many-writes",
            Self::EnrolmentCodeInvalid => "enrolment-code-invalid",
            Self::CsrInvalid => "csr-invalid",
            Self::TooManyEnrolments => "too-many-enrolments",
            Self::RoleNotPermitted => "role-not-permitted",
            Self::NotPermitted => "not-permitted",
            Self::NotFound => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::InvalidRequest => "invalid-request",
            Self::PayloadTooLarge => "payload-too-large",
            Self::RangeNotSatisfiable => "range-not-satisfiable",
            Self::RequestTimeout => "request-timeout",
            Self::TooManyTransfers => "too-many-transfers",
            Self::IntegrityError => "integrity-error",
            Self::Unavailable => "unavailable",
            Self::UpstreamFailed => "upstream-failed",
            Self::UpstreamTimeout => "upstream-timeout",
            Self::UpstreamBusy => "upstream-busy",
            Self::TooManyRequests => "too-many-requests",
            Self::TooManyConnections => "too-many-connections",
            Self::Internal => "internal-error",
        }
    }

    /// Whether the connection is closed after this answer: every authentication failure
    /// (so a client without a valid device cannot keep a connection busy), and the
    /// answers sent before a request body was read through.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            Self::ClientCertificateRequired
                | Self::DeviceUnknown
                | Self::DeviceRevoked
                | Self::DeviceExpired
                | Self::UserDisabled
                | Self::SignatureRequired
                | Self::SignatureInvalid
                | Self::SignatureMismatch
                | Self::AccessKeyMismatch
                | Self::RequestTimeSkewed
                | Self::SignedBeforeStart
                | Self::Replayed
                | Self::PayloadHashMismatch
                | Self::SessionRequired
                | Self::SessionInvalid
                | Self::LoginFailed
                | Self::AccountLocked
                | Self::TooManyAuthFailures
                | Self::EnrolmentCodeInvalid
                | Self::TooManyEnrolments
                | Self::PayloadTooLarge
                | Self::RequestTimeout
                | Self::TooManyConnections
        )
    }

    /// Short human-readable summary.
    pub fn title(self) -> &'static str {
        match self {
            Self::ClientCertificateRequired => "A client certificate is required",
            Self::DeviceUnknown => "This device is not enrolled",
            Self::DeviceRevoked => "This device has been revoked",
            Self::DeviceExpired => "This device's certificate has expired",
            Self::UserDisabled => "This user is disabled",
            Self::SignatureRequired => "A request signature is required",
            Self::SignatureInvalid => "The request signature is invalid",
            Self::SignatureMismatch => "The request signature does not match",
            Self::AccessKeyMismatch => "The access key is not this device's",
            Self::RequestTimeSkewed => "The request time is too far from the server's",
            Self::SignedBeforeStart => "The request was signed before the server started",
            Self::Replayed => "This request was already accepted",
            Self::PayloadHashMismatch => "The body does not match its signed hash",
            Self::SessionRequired => "A session is required",
            Self::SessionInvalid => "The session is not valid",
            Self::LoginFailed => "Login failed",
            Self::TotpRequired => "A one-time code is required",
            Self::AccountLocked => "The account is locked",
            Self::TooManyAuthFailures => "Too many failed authentications",
            Self::TooManyWrites => "Too many writes from this device",
            Self::EnrolmentCodeInvalid => "The enrolment code is not valid",
            Self::CsrInvalid => "The certificate signing request is not acceptable",
            Self::TooManyEnrolments => "Too many enrolment attempts",
            Self::RoleNotPermitted => "This role may not use this endpoint",
            Self::NotPermitted => "Not permitted",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::InvalidRequest => "Invalid request",
            Self::PayloadTooLarge => "Payload too large",
            Self::RangeNotSatisfiable => "Range not satisfiable",
            Self::RequestTimeout => "The request body stalled",
            Self::TooManyTransfers => "Too many transfers in progress",
            Self::IntegrityError => "Stored data failed its integrity check",
            Self::Unavailable => "Temporarily unavailable",
            Self::UpstreamFailed => "The ERP could not provide this record",
            Self::UpstreamTimeout => "The ERP did not answer in time",
            Self::UpstreamBusy => "Too many ERP calls are waiting",
            Self::TooManyRequests => "Too many requests from this device",
            Self::TooManyConnections => "The server has too many connections",
            Self::Internal => "Internal error",
        }
    }

    /// Whether this is a refusal by authentication or authorisation (counted in the
    /// `coffer_auth_rejections_total` metric by reason).
    pub fn is_authentication(self) -> bool {
        matches!(
            self,
            Self::ClientCertificateRequired
                | Self::DeviceUnknown
                | Self::DeviceRevoked
                | Self::DeviceExpired
                | Self::UserDisabled
                | Self::SignatureRequired
                | Self::SignatureInvalid
                | Self::SignatureMismatch
                | Self::AccessKeyMismatch
                | Self::RequestTimeSkewed
                | Self::SignedBeforeStart
                | Self::Replayed
                | Self::PayloadHashMismatch
                | Self::SessionRequired
                | Self::SessionInvalid
                | Self::LoginFailed
                | Self::TotpRequired
                | Self::AccountLocked
                | Self::TooManyAuthFailures
                | Self::EnrolmentCodeInvalid
                | Self::CsrInvalid
                | Self::TooManyEnrolments
                | Self::RoleNotPermitted
                | Self::TooManyRequests
        )
    }
}

/// A failed request: its reason and an optional detail safe to show the caller.
#[derive(Debug)]
pub struct Problem {
    /// Why.
    pub reason: Reason,
    /// What to do about it; never secrets, never internals.
    pub detail: Option<String>,
    /// For `416`: the document size, sent as `Content-Range: bytes */size`.
    pub size: Option<u64>,
    /// For `405`: the methods the resource supports, sent as `Allow`.
    pub allow: Option<&'static str>,
    /// Close the connection after this answer even if the reason alone would not (a
    /// request body was left partly unread).
    pub close: bool,
    /// Seconds to wait before retrying, sent as `Retry-After`.
    pub retry_after: Option<u64>,
    /// The server's clock (`x-amz-date` form), for clock-skew answers.
    pub server_time: Option<String>,
}

impl Problem {
    /// A problem without detail.
    pub fn new(reason: Reason) -> Self {
        Self {
            reason,
            detail: None,
            size: None,
            allow: None,
            close: false,
            retry_after: None,
            server_time: None,
        }
    }

    /// A problem with a detail line.
    pub fn detail(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: Some(detail.into()),
            size: None,
            allow: None,
            close: false,
            retry_after: None,
            server_time: None,
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason.slug())
    }
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_time: Option<&'a str>,
}

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        self.reason.status()
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.reason.status();
        let body = Body {
            kind: format!("{PROBLEM_TYPE_PREFIX}{}", self.reason.slug()),
            title: self.reason.title(),
            status: status.as_u16(),
            detail: self.detail.as_deref(),
            server_time: self.server_time.as_deref(),
        };
        let mut res = HttpResponse::build(status);
        res.insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        ));
        if let Some(size) = self.size {
            res.insert_header((header::CONTENT_RANGE, format!("bytes */{size}")));
        }
        if self.close || self.reason.closes_connection() {
            // Whatever is left of the request body is not read, and an unauthenticated
            // client gets nothing more on this connection.
            res.force_close();
        }
        if let Some(allow) = self.allow {
            res.insert_header((header::ALLOW, HeaderValue::from_static(allow)));
        }
        match self.retry_after {
            Some(secs) => {
                res.insert_header((header::RETRY_AFTER, secs.max(1).to_string()));
            }
            None if matches!(self.reason, Reason::TooManyTransfers | Reason::TooManyConnections) => {
                res.insert_header((header::RETRY_AFTER, HeaderValue::from_static("5")));
            }
            None => {}
        }
        res.json(body)
    }
}

impl From<VaultError> for Problem {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::NotFound(_) | VaultError::Store(StoreError::NotFound(_)) => Self::new(Reason::NotFound),
            VaultError::Invalid(m) => Self::detail(Reason::InvalidRequest, m),
            VaultError::NotPermitted(m) => Self::detail(Reason::NotPermitted, m),
            VaultError::Store(StoreError::Busy) => Self::new(Reason::Unavailable),
            VaultError::Store(StoreError::Corrupt(what)) => {
                tracing::error!("stored {what} is unreadable: run `coffer verify` and restore from a backup");
                Self::detail(
                    Reason::IntegrityError,
                    "stored data is damaged; an administrator can restore it",
                )
            }
            VaultError::Integrity { what, id } => {
                tracing::error!("integrity check failed for {what} {id}: run `coffer verify --deep`");
                Self::detail(
                    Reason::IntegrityError,
                    format!("{what} {id} is damaged; an administrator can restore it"),
                )
            }
            other => {
                tracing::error!("request failed: {other}");
                Self::new(Reason::Internal)
            }
        }
    }
}
