//! `POST /collections/{name}/_bulk` and `GET|DELETE /collections/{name}/documents/{id}`.
//!
//! A bulk body is NDJSON in the shape of Elasticsearch's `_bulk` (see `cloze_corpus::parse_bulk`).
//! A document needs `text`; `title` is optional; in a collection that holds vectors, `vector` is
//! the document's own vector; every other field is stored as metadata, for filters. A bulk request is all or nothing: every line is checked first, and if any is wrong
//! none is applied and the answer lists each wrong line. Otherwise all lines are applied, in
//! order, in one commit.

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use cloze_corpus::{parse_bulk, BulkAction};
use cloze_index::{Change, IndexError, Outcome};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::routes::{blocking, read_body};
use crate::{AppState, ServerConfig};

/// At most this many wrong lines are listed.
const MAX_LISTED_ERRORS: usize = 100;

pub async fn bulk(
    state: web::Data<AppState>,
    name: web::Path<String>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let body = read_body(&state, &request, payload).await?;
    // A collection that holds vectors reads each document's `vector` field as its vector.
    let dimension = {
        let (state, name) = (state.clone().into_inner(), name.as_str().to_string());
        blocking(move || {
            let collection = state.registry.get(&name)?.snapshot();
            Ok(collection.manifest().semantic.as_ref().map(|semantic| semantic.dimension()))
        })
        .await?
    };
    let changes = match bulk_changes(&state.config, &body, dimension)? {
        Ok(changes) => changes,
        Err(wrong_lines) => return Ok(wrong_lines),
    };
    let actions: Vec<(&'static str, String)> = changes
        .iter()
        .map(|change| match change {
            Change::Upsert(document) => ("index", document.id.clone()),
            Change::Delete(id) => ("delete", id.clone()),
        })
        .collect();
    let state = state.into_inner();
    let outcomes = blocking(move || {
        let handle = state.registry.get(&name)?;
        handle.write(|collection| {
            collection.apply(changes.into_iter().map(Ok::<_, IndexError>), |_| {})
        })
    })
    .await?;
    let items: Vec<Value> = actions
        .into_iter()
        .zip(outcomes)
        .map(|((action, id), outcome)| {
            let (result, status) = match outcome {
                Outcome::Created => ("created", 201),
                Outcome::Updated => ("updated", 200),
                Outcome::Deleted => ("deleted", 200),
                Outcome::NotFound => ("not_found", 404),
            };
            json!({ action: {"_id": id, "result": result, "status": status} })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "took_ms": started.elapsed().as_secs_f64() * 1e3,
        "errors": false,
        "items": items,
    })))
}

pub async fn get(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (name, id) = path.into_inner();
    let state = state.into_inner();
    let document = blocking(move || {
        let collection = state.registry.get(&name)?.snapshot();
        let searcher = collection.searcher();
        let address = collection.address(&searcher, &id)?.ok_or_else(|| not_found(&name, &id))?;
        Ok(collection.stored_document(&searcher, address)?)
    })
    .await?;
    Ok(HttpResponse::Ok().json(json!({
        "_id": document.id,
        "title": document.title,
        "text": document.text,
        "metadata": document.metadata,
    })))
}

pub async fn delete(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (name, id) = path.into_inner();
    let state = state.into_inner();
    let deleted = id.clone();
    blocking(move || {
        let handle = state.registry.get(&name)?;
        let outcomes = handle.write(|collection| {
            collection.apply([Ok::<_, IndexError>(Change::Delete(id.clone()))], |_| {})
        })?;
        match outcomes.first() {
            Some(Outcome::Deleted) => Ok(()),
            _ => Err(not_found(&name, &id)),
        }
    })
    .await?;
    Ok(HttpResponse::Ok().json(json!({"_id": deleted, "result": "deleted"})))
}

fn not_found(collection: &str, id: &str) -> ApiError {
    ApiError::not_found(
        "document_not_found",
        format!("collection \"{collection}\" has no document with id \"{id}\""),
    )
}

/// The changes a bulk body asks for, in order; a body over the line limit is an error, and one
/// with wrong lines gets the answer that lists them (nothing is applied).
pub(crate) fn bulk_changes(
    config: &ServerConfig,
    body: &[u8],
    dimension: Option<usize>,
) -> Result<Result<Vec<Change>, HttpResponse>, ApiError> {
    let max_lines = config.max_bulk_lines;
    let lines = body.split(|&b| b == b'\n').filter(|line| !line.trim_ascii().is_empty()).count();
    if lines > max_lines {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the bulk body has {lines} lines, over the limit of {max_lines} (max_bulk_lines); split it"),
        ));
    }
    let changes: Vec<Change> = match parse_bulk(body, dimension) {
        Ok(actions) => actions
            .into_iter()
            .map(|action| match action {
                BulkAction::Index(document) => Change::Upsert(document),
                BulkAction::Delete(id) => Change::Delete(id),
            })
            .collect(),
        Err(errors) => {
            let first = &errors[0];
            let mut error = ApiError::invalid(format!(
                "line {}: {}; {} wrong line(s) in all, nothing was applied",
                first.line,
                first.reason,
                errors.len()
            ))
            .body();
            error["items"] = errors
                .iter()
                .take(MAX_LISTED_ERRORS)
                .map(|e| json!({"line": e.line, "reason": e.reason}))
                .collect();
            return Ok(Err(HttpResponse::BadRequest().json(error)));
        }
    };
    Ok(Ok(changes))
}
