//! `GET /health`, `GET /metrics`, `GET /openapi.json`, `GET /sample.jsonl` and the search page
//! at `GET /`.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::error::ApiError;
use crate::metrics::CollectionSizes;
use crate::routes::blocking;
use crate::AppState;

/// The search page: one self-contained HTML file.
const SEARCH_PAGE: &str = include_str!("../../assets/index.html");
/// The OpenAPI description of every route.
pub const OPENAPI: &str = include_str!("../../assets/openapi.json");

pub async fn health(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let state = state.into_inner();
    let collections = blocking(move || Ok(state.registry.names()?.len())).await?;
    Ok(HttpResponse::Ok().json(json!({"status": "ok", "collections": collections})))
}

pub async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let state = state.into_inner();
    let text = blocking(move || {
        let mut sizes = Vec::new();
        for name in state.registry.names()? {
            // A collection deleted meanwhile is simply left out.
            if let Ok(handle) = state.registry.get(&name) {
                let collection = handle.snapshot();
                sizes.push(CollectionSizes {
                    name,
                    documents: collection.document_count(),
                    vectors: collection.vector_count(),
                });
            }
        }
        Ok(state.metrics.render(&sizes))
    })
    .await?;
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(text))
}

pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(OPENAPI)
}

pub async fn page() -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(SEARCH_PAGE)
}

/// The sample collection's documents, which the page loads into a new collection with one click.
pub async fn sample() -> HttpResponse {
    HttpResponse::Ok().content_type("application/x-ndjson").body(cloze_corpus::SAMPLE_JSONL)
}

/// Any other path or method.
pub async fn not_found(request: actix_web::HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(
        "no_route",
        format!("no route {} {} (GET /openapi.json lists them)", request.method(), request.path()),
    ))
}
