//! `POST /collections/{name}/_snapshot`, `POST /collections/{name}/_restore` and
//! `GET /snapshots`: consistent copies of a collection, taken and loaded while serving.
//!
//! Snapshots are folders in the data folder's `.snapshots/`, named after the collection and the
//! time (`docs-20261126T120000Z`); `cloze snapshot` and `cloze restore` make and load the same.

use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::routes::{blocking, read_json};
use crate::AppState;

pub async fn snapshot(
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let state = state.into_inner();
    let info = blocking(move || state.registry.snapshot(&name)).await?;
    let mut body = serde_json::to_value(info).expect("serializes");
    body["took_ms"] = json!(started.elapsed().as_secs_f64() * 1e3);
    Ok(HttpResponse::Ok().json(body))
}

pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let state = state.into_inner();
    let snapshots = blocking(move || Ok(state.registry.data_dir().snapshots()?)).await?;
    Ok(HttpResponse::Ok().json(json!({ "snapshots": snapshots })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    /// The snapshot's name, as `_snapshot` answered and `GET /snapshots` lists.
    snapshot: String,
    /// Replace the collection if it exists (else that is a 409).
    #[serde(default)]
    replace: bool,
}

pub async fn restore(
    state: web::Data<AppState>,
    name: web::Path<String>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let body: RestoreBody = read_json(&state, &request, payload).await?;
    let state = state.into_inner();
    let mut restored = blocking(move || {
        let collection = state.registry.restore(&name, &body.snapshot, body.replace)?;
        Ok(json!({
            "collection": collection.name(),
            "snapshot": body.snapshot,
            "documents": collection.document_count(),
        }))
    })
    .await?;
    restored["took_ms"] = json!(started.elapsed().as_secs_f64() * 1e3);
    Ok(HttpResponse::Ok().json(restored))
}
