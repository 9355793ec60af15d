//! All routes, registered in one place.

mod documents;

use actix_web::{HttpRequest, HttpResponse, web};

use super::error::{Problem, Reason};

/// Registers every route of the API.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(64 * 1024)
            .error_handler(|e, _| Problem::detail(Reason::InvalidRequest, format!("invalid JSON body: {e}")).into()),
    )
    .app_data(
        web::QueryConfig::default()
            .error_handler(|e, _| Problem::detail(Reason::InvalidRequest, format!("invalid query: {e}")).into()),
    )
    .app_data(web::PathConfig::default().error_handler(|_, _| Problem::new(Reason::NotFound).into()))
    .service(
        web::resource("/v1/documents")
            .route(web::post().to(documents::upload))
            .route(web::get().to(documents::list))
            .default_service(web::to(|| method_not_allowed("GET, POST"))),
    )
    .service(
        web::resource("/v1/documents/{id}")
            .route(web::get().to(documents::download))
            .route(web::head().to(documents::download))
            .route(web::delete().to(documents::delete))
            .default_service(web::to(|| method_not_allowed("GET, HEAD, DELETE"))),
    )
    .service(
        web::resource("/v1/documents/{id}/meta")
            .route(web::get().to(documents::meta))
            .route(web::patch().to(documents::patch_meta))
            .default_service(web::to(|| method_not_allowed("GET, PATCH"))),
    )
    .default_service(web::to(not_found));
}

async fn not_found(_: HttpRequest) -> Result<HttpResponse, Problem> {
    Err(Problem::new(Reason::NotFound))
}

async fn method_not_allowed(allow: &'static str) -> Result<HttpResponse, Problem> {
    Err(Problem {
        allow: Some(allow),
        ..Problem::new(Reason::MethodNotAllowed)
    })
}
