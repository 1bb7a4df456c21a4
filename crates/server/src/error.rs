//! Errors as HTTP answers: a status and a JSON body that says what went wrong and where.
//!
//! Every error body has the same shape, close to Elasticsearch's:
//! `{"error": {"type": "invalid_request", "reason": "k: must be between 1 and 10000"}, "status": 400}`.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use cloze_index::IndexError;
use cloze_search::SearchError;
use serde_json::json;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    /// A stable, machine-readable name for the kind of error.
    pub kind: &'static str,
    /// What went wrong, naming the field, parameter or line.
    pub reason: String,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, reason: impl Into<String>) -> ApiError {
        ApiError { status, kind, reason: reason.into() }
    }

    /// The request itself is wrong: a field, parameter or line that cannot be used.
    pub fn invalid(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", reason)
    }

    pub fn not_found(kind: &'static str, reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, kind, reason)
    }

    pub fn internal(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", reason)
    }

    /// The JSON body of this error.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"type": self.kind, "reason": self.reason}, "status": self.status.as_u16()})
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.kind, self.reason)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        if self.status.is_server_error() {
            tracing::error!("{self}");
        }
        let mut response = HttpResponse::build(self.status);
        match self.status {
            StatusCode::UNAUTHORIZED => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            // Overload and timeouts pass: a client may try again.
            StatusCode::SERVICE_UNAVAILABLE => {
                response.insert_header((header::RETRY_AFTER, "1"));
            }
            _ => {}
        }
        response.json(self.body())
    }
}

impl From<IndexError> for ApiError {
    fn from(error: IndexError) -> ApiError {
        let reason = error.to_string();
        match error {
            // The data folder's path is the server's business, not the client's.
            IndexError::UnknownCollection { name, .. } => ApiError::not_found(
                "collection_not_found",
                format!("no collection named \"{name}\""),
            ),
            IndexError::CollectionExists(_) => {
                ApiError::new(StatusCode::CONFLICT, "collection_exists", reason)
            }
            IndexError::InvalidName(_)
            | IndexError::UnknownAnalyzer { .. }
            | IndexError::InvalidAnalyzer { .. }
            | IndexError::InvalidVectorSettings { .. }
            | IndexError::Corpus(_)
            | IndexError::DimensionMismatch { .. } => ApiError::invalid(reason),
            IndexError::NoModel(_) | IndexError::NoEncoder(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "no_model", reason)
            }
            IndexError::NotExpanding(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "not_expanding", reason)
            }
            IndexError::MissingVector { .. } | IndexError::InvalidVector { .. } => {
                ApiError::invalid(reason)
            }
            IndexError::UnknownDocuments { .. } => {
                ApiError::not_found("document_not_found", reason)
            }
            IndexError::ModelMismatch { .. } => {
                ApiError::new(StatusCode::CONFLICT, "model_mismatch", reason)
            }
            IndexError::Busy(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", reason),
            _ => ApiError::internal(reason),
        }
    }
}

impl From<SearchError> for ApiError {
    fn from(error: SearchError) -> ApiError {
        match error {
            SearchError::Index(error) => error.into(),
            SearchError::UnknownMode(_)
            | SearchError::InvalidFusion { .. }
            | SearchError::InvalidVector(_)
            | SearchError::InvalidTuning { .. }
            | SearchError::InvalidExpansionWeight(_) => ApiError::invalid(error.to_string()),
            // As the query's own error, saying which query it was.
            SearchError::InQuery { id, source } => {
                let inner = ApiError::from(*source);
                ApiError { reason: format!("query \"{id}\": {}", inner.reason), ..inner }
            }
            SearchError::Inconsistent { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", error.to_string())
            }
            SearchError::Tantivy { .. } => ApiError::internal(error.to_string()),
        }
    }
}

impl From<actix_web::error::BlockingError> for ApiError {
    fn from(_: actix_web::error::BlockingError) -> ApiError {
        ApiError::internal("the worker thread pool is gone (shutting down?)")
    }
}
