//! The HTTP routes, one module per resource, and the body reading they share.

pub mod cluster;
pub mod collections;
pub mod documents;
pub mod rank_eval;
pub mod search;
pub mod service;
pub mod snapshots;
pub mod tune;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::{AppState, ServerConfig};

/// Reads a whole request body, refusing one over the configured size before reading it when
/// the client announces its length, else as soon as it passes the limit.
pub(crate) async fn read_body(
    state: &AppState,
    request: &HttpRequest,
    payload: web::Payload,
) -> Result<web::Bytes, ApiError> {
    let limit = state.config.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "the request body is over the limit of {limit} bytes (max_body_bytes); split it"
            ),
        )
    };
    let announced = request
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if announced.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    match payload.to_bytes_limited(limit).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(error)) => Err(ApiError::invalid(format!("reading the request body: {error}"))),
        Err(_) => Err(too_large()),
    }
}

/// Reads and parses a JSON request body (see [`read_body`] and [`parse_json`]).
pub(crate) async fn read_json<T: DeserializeOwned>(
    state: &AppState,
    request: &HttpRequest,
    payload: web::Payload,
) -> Result<T, ApiError> {
    parse_json(&read_body(state, request, payload).await?)
}

/// Parses a JSON body, naming the field at fault: `k: invalid type: string "ten", expected
/// usize at line 1 column 12`. An empty body reads as `{}`.
pub(crate) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if path == "." || inner.is_syntax() || inner.is_eof() {
            ApiError::invalid(format!("the request body is not valid JSON: {inner}"))
        } else {
            ApiError::invalid(format!("{path}: {inner}"))
        }
    })?;
    deserializer.end().map_err(|error| {
        ApiError::invalid(format!("the request body is not valid JSON: {error}"))
    })?;
    Ok(value)
}

/// Runs blocking work (search, indexing: CPU and disk) off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    web::block(work).await?
}

/// Checks the `k` and `offset` of a request against the server's `max_hits`.
pub(crate) fn check_page(config: &ServerConfig, k: usize, offset: usize) -> Result<(), ApiError> {
    let max = config.max_hits;
    if !(1..=max).contains(&k) {
        return Err(ApiError::invalid(format!("k: must be between 1 and {max} (found {k})")));
    }
    if offset.saturating_add(k) > max {
        return Err(ApiError::invalid(format!(
            "offset: offset + k must be at most {max} (max_hits; found {})",
            offset.saturating_add(k)
        )));
    }
    Ok(())
}
