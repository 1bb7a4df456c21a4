//! `POST /collections/{name}/_bulk` and `GET|DELETE /collections/{name}/documents/{id}`.
//!
//! A bulk body is NDJSON in the shape of Elasticsearch's `_bulk`: an action line followed, for
//! `index`, by the document, or a document on its own (which then carries its `_id`):
//!
//! ```text
//! {"index": {"_id": "1"}}
//! {"title": "Vitamin D", "text": "...", "year": 2019}
//! {"delete": {"_id": "2"}}
//! {"_id": "3", "text": "..."}
//! ```
//!
//! A document needs `text`; `title` is optional; every other field is stored as metadata, for
//! filters. A bulk request is all or nothing: every line is checked first, and if any is wrong
//! none is applied and the answer lists each wrong line. Otherwise all lines are applied, in
//! order, in one commit.

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use cloze_corpus::{Document, FieldMapping};
use cloze_index::{Change, IndexError, Outcome};
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::routes::{blocking, read_body};
use crate::AppState;

/// At most this many wrong lines are listed.
const MAX_LISTED_ERRORS: usize = 100;

/// A bulk line that cannot be applied.
#[derive(Debug, PartialEq)]
struct LineError {
    line: usize,
    reason: String,
}

/// Reads a bulk body into changes, or every wrong line.
fn parse_bulk(body: &[u8]) -> Result<Vec<Change>, Vec<LineError>> {
    let mut changes = Vec::new();
    let mut errors = Vec::new();
    // The line of an `index` action whose document has not come yet, and the id it named.
    let mut awaiting: Option<(usize, Option<String>)> = None;
    for (index, line) in body.split(|&b| b == b'\n').enumerate() {
        let number = index + 1;
        let mut fail = |reason: String| errors.push(LineError { line: number, reason });
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let object = match serde_json::from_slice::<Value>(line) {
            Ok(Value::Object(object)) => object,
            Ok(_) => {
                fail("expected a JSON object".to_string());
                continue;
            }
            Err(error) => {
                fail(format!("not valid JSON: {error}"));
                continue;
            }
        };
        if let Some((_, id)) = awaiting.take() {
            match document(object, id) {
                Ok(document) => changes.push(Change::Upsert(document)),
                Err(reason) => fail(reason),
            }
            continue;
        }
        match action(&object) {
            Some(("index", meta)) => match optional_id(meta) {
                Ok(id) => awaiting = Some((number, id)),
                Err(reason) => fail(format!("index.{reason}")),
            },
            Some(("delete", meta)) => match optional_id(meta) {
                Ok(Some(id)) => changes.push(Change::Delete(id)),
                Ok(None) => fail("delete: missing \"_id\"".to_string()),
                Err(reason) => fail(format!("delete.{reason}")),
            },
            Some((other, _)) => fail(format!(
                "unsupported action \"{other}\": use index (adds or replaces) or delete"
            )),
            None => match document(object, None) {
                Ok(document) => changes.push(Change::Upsert(document)),
                Err(reason) => fail(reason),
            },
        }
    }
    if let Some((line, _)) = awaiting {
        errors.push(LineError { line, reason: "an index action with no document after it".into() });
    }
    if errors.is_empty() {
        Ok(changes)
    } else {
        Err(errors)
    }
}

/// An action line: one key naming an action, whose value is an object.
fn action(object: &Map<String, Value>) -> Option<(&str, &Map<String, Value>)> {
    const ACTIONS: [&str; 4] = ["index", "create", "update", "delete"];
    match object.iter().next() {
        Some((name, Value::Object(meta)))
            if object.len() == 1 && ACTIONS.contains(&name.as_str()) =>
        {
            Some((name.as_str(), meta))
        }
        _ => None,
    }
}

/// The `_id` an action names, if any.
fn optional_id(meta: &Map<String, Value>) -> Result<Option<String>, String> {
    if let Some(unknown) = meta.keys().find(|key| *key != "_id") {
        return Err(format!("{unknown}: unknown field, expected \"_id\""));
    }
    match meta.get("_id") {
        None => Ok(None),
        Some(Value::String(id)) if !id.is_empty() => Ok(Some(id.clone())),
        Some(Value::Number(id)) => Ok(Some(id.to_string())),
        Some(_) => Err("_id: expected a non-empty string or a number".to_string()),
    }
}

/// A document line, with the id its action named (which wins over an `_id` field).
fn document(mut object: Map<String, Value>, id: Option<String>) -> Result<Document, String> {
    if let Some(id) = id {
        object.insert("_id".to_string(), Value::String(id));
    }
    if !object.contains_key("_id") {
        return Err(
            "missing \"_id\": put it in the document or in an index action before it".into()
        );
    }
    object.entry("title").or_insert(Value::Null);
    let document = FieldMapping::default().document(object).map_err(|error| error.to_string())?;
    if document.id.is_empty() {
        return Err("_id: must not be empty".to_string());
    }
    Ok(document)
}

pub async fn bulk(
    state: web::Data<AppState>,
    name: web::Path<String>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let body = read_body(&state, &request, payload).await?;
    let max_lines = state.config.max_bulk_lines;
    let lines = body.split(|&b| b == b'\n').filter(|line| !line.trim_ascii().is_empty()).count();
    if lines > max_lines {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the bulk body has {lines} lines, over the limit of {max_lines} (max_bulk_lines); split it"),
        ));
    }
    let changes = match parse_bulk(&body) {
        Ok(changes) => changes,
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
            return Ok(HttpResponse::BadRequest().json(error));
        }
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
        handle.write(&state.registry, |collection| {
            collection.apply(changes.into_iter().map(Ok::<_, IndexError>), || {})
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
        let outcomes = handle.write(&state.registry, |collection| {
            collection.apply([Ok::<_, IndexError>(Change::Delete(id.clone()))], || {})
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_actions_and_bare_documents_in_order() {
        let body = b"{\"index\": {\"_id\": \"1\"}}\n{\"title\": \"T\", \"text\": \"one\", \"year\": 2001}\n\r\n\
            {\"delete\": {\"_id\": 2}}\n{\"_id\": \"3\", \"text\": \"three\"}\n";
        let changes = parse_bulk(body).unwrap();
        assert_eq!(changes.len(), 3);
        let Change::Upsert(first) = &changes[0] else { panic!("{changes:?}") };
        assert_eq!(
            (first.id.as_str(), first.title.as_str(), first.text.as_str()),
            ("1", "T", "one")
        );
        assert_eq!(first.metadata["year"], 2001);
        assert_eq!(changes[1], Change::Delete("2".to_string()));
        let Change::Upsert(third) = &changes[2] else { panic!("{changes:?}") };
        assert_eq!((third.id.as_str(), third.title.as_str()), ("3", ""));
    }

    #[test]
    fn every_wrong_line_is_reported_with_its_number() {
        let body = b"{\"_id\": \"1\", \"text\": \"ok\"}\nnot json\n[1]\n{\"title\": \"no id\", \"text\": \"x\"}\n\
            {\"_id\": \"5\"}\n{\"update\": {\"_id\": \"1\"}}\n{\"delete\": {}}\n{\"index\": {\"_id\": \"8\", \"x\": 1}}\n\
            {\"index\": {}}\n{\"text\": \"no id after all\"}\n{\"index\": {\"_id\": \"11\"}}";
        let errors = parse_bulk(body).unwrap_err();
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6, 7, 8, 10, 11]);
        assert!(errors[0].reason.starts_with("not valid JSON"), "{errors:?}");
        assert!(errors[3].reason.contains("missing field \"text\""), "{errors:?}");
        assert!(errors[4].reason.contains("unsupported action \"update\""), "{errors:?}");
        assert!(errors[6].reason.contains("index.x: unknown field"), "{errors:?}");
        assert!(errors[8].reason.contains("no document after it"), "{errors:?}");
    }
}
