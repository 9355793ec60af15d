//! All routes, registered in one place.

mod documents;

use actix_web::error::JsonPayloadError;
use actix_web::{HttpResponse, web};

use super::auth::Caller;
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
        web::resource("/v1/documents")
            .route(web::post().to(documents::upload))
            .route(web::get().to(documents::list))
            .default_service(web::to(|c: Caller| method_not_allowed(c, "GET, POST"))),
    )
    .service(
        web::resource("/v1/documents/{id}")
            .route(web::get().to(documents::download))
            .route(web::head().to(documents::download))
            .route(web::delete().to(documents::delete))
            .default_service(web::to(|c: Caller| method_not_allowed(c, "GET, HEAD, DELETE"))),
    )
    .service(
        web::resource("/v1/documents/{id}/meta")
            .route(web::get().to(documents::meta))
            .route(web::patch().to(documents::patch_meta))
            .default_service(web::to(|c: Caller| method_not_allowed(c, "GET, PATCH"))),
    )
    .default_service(web::to(not_found));
}

/// Unknown paths and methods authenticate first too: a revoked or unknown device gets its
/// `401` (and a closed connection) wherever it knocks.
async fn not_found(_: Caller) -> Result<HttpResponse, Problem> {
    Err(Problem::new(Reason::NotFound))
}

async fn method_not_allowed(_: Caller, allow: &'static str) -> Result<HttpResponse, Problem> {
    Err(Problem {
        allow: Some(allow),
        ..Problem::new(Reason::MethodNotAllowed)
    })
}
