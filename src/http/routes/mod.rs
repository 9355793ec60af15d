//! All routes, registered in one place.

mod documents;
mod enroll;
mod erp;
mod session;

use actix_web::error::JsonPayloadError;
use actix_web::{HttpResponse, web};

use super::State;
use super::auth::Knocking;
use super::error::{Problem, Reason};

/// Registers every route of the API.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::JsonConfig::default().limit(64 * 1024).error_handler(|e, _| {
        match e {
            JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
                Problem::detail(Reason::PayloadTooLarge, "JSON bodies are limited to 64 KiB").into()
            }
            e => Problem {
                close: true,
                ..Problem::detail(Reason::InvalidRequest, format!("invalid JSON body: {e}"))
            }
            .into(),
        }
    }))
    .app_data(
        web::QueryConfig::default()
            .error_handler(|e, _| Problem::detail(Reason::InvalidRequest, format!("invalid query: {e}")).into()),
    )
    .app_data(web::PathConfig::default().error_handler(|_, _| Problem::new(Reason::NotFound).into()))
    .service(
        web::resource("/v1/enroll")
            .route(web::post().to(enroll::enroll))
            // Other methods: the client-certificate check answers first, like anywhere.
            .default_service(web::to(|c: Knocking| method_not_allowed(c.0, "POST"))),
    )
    .service(
        web::resource("/v1/session")
            .route(web::post().to(session::login))
            .route(web::delete().to(session::logout))
            .default_service(web::to(|c: Knocking| method_not_allowed(c.0, "POST, DELETE"))),
    )
    .service(
        web::resource("/v1/documents")
            .route(web::post().to(documents::upload))
            .route(web::get().to(documents::list))
            .default_service(web::to(|c: Knocking| method_not_allowed(c.0, "GET, POST"))),
    )
    .service(
        web::resource("/v1/documents/{id}")
            .route(web::get().to(documents::download))
            .route(web::head().to(documents::download))
            .route(web::delete().to(documents::delete))
            .default_service(web::to(|c: Knocking| method_not_allowed(c.0, "GET, HEAD, DELETE"))),
    )
    .service(
        web::resource("/v1/documents/{id}/meta")
            .route(web::get().to(documents::meta))
            .route(web::patch().to(documents::patch_meta))
            .default_service(web::to(|c: Knocking| method_not_allowed(c.0, "GET, PATCH"))),
    )
    .service(
        web::resource("/v1/erp/{collection}")
            .route(web::get().to(erp::read_many))
            .default_service(web::to(|c: Knocking| method_not_allowed(c.0, "GET"))),
    )
    .service(
        web::resource("/v1/erp/{collection}/{key}")
            .route(web::get().to(erp::read_one))
            .route(web::put().to(erp::put))
            .route(web::delete().to(erp::delete))
            // `POST /v1/erp/{collection}/batch`; POST to any other key answers 405.
            .route(web::post().to(erp::batch))
            .default_service(web::to(|c: Knocking| method_not_allowed(c.0, "GET, PUT, DELETE, POST"))),
    )
    .default_service(web::to(not_found));
}

/// Unknown paths and methods authenticate first too: a revoked or unknown device gets its
/// `401` (and a closed connection) wherever it knocks.
async fn not_found(_: Knocking) -> Result<HttpResponse, Problem> {
    Err(Problem::new(Reason::NotFound))
}

async fn method_not_allowed(_: super::auth::Caller, allow: &'static str) -> Result<HttpResponse, Problem> {
    Err(Problem {
        allow: Some(allow),
        ..Problem::new(Reason::MethodNotAllowed)
    })
}

/// Largest JSON body accepted.
pub const MAX_JSON_BODY: usize = 64 * 1024;

/// Reads a small request body in full (at most [`MAX_JSON_BODY`] bytes), with the body
/// idle timeout.
pub async fn read_small_body(state: &State, payload: web::Payload) -> Result<web::Bytes, Problem> {
    read_body_limited(state, payload, MAX_JSON_BODY, "JSON bodies").await
}

/// Reads a request body in full, at most `limit` bytes (`413` past it, naming `what`),
/// with the body idle timeout.
pub async fn read_body_limited(
    state: &State,
    mut payload: web::Payload,
    limit: usize,
    what: &str,
) -> Result<web::Bytes, Problem> {
    use futures_util::StreamExt;
    let idle = std::time::Duration::from_secs(u64::from(state.options.limits.body_idle_timeout_secs));
    let mut body = web::BytesMut::new();
    loop {
        match tokio::time::timeout(idle, payload.next()).await {
            Err(_) => {
                return Err(Problem::detail(
                    Reason::RequestTimeout,
                    format!("no body bytes arrived for {} s", idle.as_secs()),
                ));
            }
            Ok(None) => return Ok(body.freeze()),
            Ok(Some(Ok(piece))) => {
                if body.len() + piece.len() > limit {
                    return Err(Problem::detail(
                        Reason::PayloadTooLarge,
                        format!("{what} are limited to {}", human_bytes(limit)),
                    ));
                }
                body.extend_from_slice(&piece);
            }
            Ok(Some(Err(e))) => {
                return Err(Problem {
                    close: true,
                    ..Problem::detail(Reason::InvalidRequest, format!("the body was cut short: {e}"))
                });
            }
        }
    }
}

fn human_bytes(n: usize) -> String {
    if n >= 1024 * 1024 && n.is_multiple_of(1024 * 1024) {
        format!("{} MiB", n / (1024 * 1024))
    } else if n >= 1024 && n.is_multiple_of(1024) {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} bytes")
    }
}

/// RFC 3339 UTC with exactly three fractional digits (`2026-11-29T05:30:36.600Z`).
pub fn rfc3339(t: crate::model::Timestamp) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.0) * 1_000_000)
        .ok()
        .and_then(|d| d.format(&format).ok())
        .unwrap_or_default()
}

/// Refuses a JSON endpoint's request whose `Content-Type` is not `application/json`.
pub fn require_json(req: &actix_web::HttpRequest) -> Result<(), Problem> {
    let ok = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if ok {
        Ok(())
    } else {
        Err(Problem {
            close: true,
            ..Problem::detail(
                Reason::InvalidRequest,
                "the body must be JSON (Content-Type: application/json)",
            )
        })
    }
}
