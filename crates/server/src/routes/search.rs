//! `POST /collections/{name}/_search`.

use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use cloze_index::{Collection, ExpansionSettings};
use cloze_search::{search, Filter, Fusion, FusionSettings, Mode, SearchRequest, Timings};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::routes::{blocking, check_page, parse_json, read_json};
use crate::{AppState, ServerConfig};

/// The most HNSW candidates a query may ask for.
const MAX_EF_SEARCH: usize = 10_000;

/// A search, as JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SearchBody {
    /// What to look for, as plain words; may be left out when `vector` is given.
    pub q: Option<String>,
    /// Semantic and hybrid modes: the query's own vector, instead of embedding `q`.
    pub vector: Option<Vec<f32>>,
    /// `keyword` (default), `semantic` or `hybrid`.
    pub mode: Option<String>,
    /// Hits to return (default 10).
    pub k: Option<usize>,
    /// Best hits to skip first (default 0).
    #[serde(default)]
    pub offset: usize,
    /// Hybrid mode: fusion settings over the collection's default.
    pub fusion: Option<FusionSettings>,
    /// Semantic side: HNSW candidates to consider.
    pub ef_search: Option<usize>,
    /// Keyword side of a collection that expands its documents: the weight of the
    /// neighbours' text (0: the document's own alone).
    pub expansion_weight: Option<f64>,
    /// Conditions on stored metadata (see `cloze_search::Filter`).
    pub filter: Option<Value>,
    /// Snippets as HTML with the query's terms in `<em>`.
    #[serde(default)]
    pub highlight: bool,
    /// Each hit's rank and score on each side, and its final score.
    #[serde(default)]
    pub explain: bool,
}

impl SearchBody {
    /// The query text: `q`, which only a search with a query `vector` may leave out.
    pub(crate) fn query_text(&self) -> Result<String, ApiError> {
        match (&self.q, &self.vector) {
            (Some(q), _) => Ok(q.clone()),
            (None, Some(_)) => Ok(String::new()),
            (None, None) => Err(ApiError::invalid(
                "missing field `q` (the query text; a semantic search may give `vector` instead)",
            )),
        }
    }

    /// The library request this body asks for, checked; `k` defaults to `default_k`.
    pub(crate) fn request(
        &self,
        config: &ServerConfig,
        query: String,
        default_k: usize,
    ) -> Result<SearchRequest, ApiError> {
        let mode = match self.mode.as_deref() {
            Some(mode) => parse_mode("mode", mode)?,
            None => Mode::Keyword,
        };
        let max_query = config.max_query_bytes;
        if query.len() > max_query {
            return Err(ApiError::invalid(format!(
                "q: {} bytes, over the limit of {max_query} (max_query_bytes)",
                query.len()
            )));
        }
        let k = self.k.unwrap_or(default_k);
        check_page(config, k, self.offset)?;
        let mut request = SearchRequest::new(query, mode, k);
        if let Some(vector) = &self.vector {
            if mode == Mode::Keyword {
                return Err(ApiError::invalid(
                    "vector: only semantic and hybrid searches use a query vector (mode is keyword)",
                ));
            }
            request.vector = Some(vector.clone());
        }
        request.offset = self.offset;
        request.highlight = self.highlight;
        if let Some(ef) = self.ef_search {
            if !(1..=MAX_EF_SEARCH).contains(&ef) {
                return Err(ApiError::invalid(format!(
                    "ef_search: must be between 1 and {MAX_EF_SEARCH} (found {ef})"
                )));
            }
            request.ef_search = Some(ef);
        }
        if let Some(weight) = self.expansion_weight {
            ExpansionSettings::check_weight(weight)
                .map_err(|message| ApiError::invalid(format!("expansion_weight {message}")))?;
            request.expansion_weight = Some(weight);
        }
        if let Some(fusion) = &self.fusion {
            request.fusion = Fusion::requested(fusion)
                .map_err(|e| ApiError::invalid(format!("fusion.{}: {}", e.param, e.message)))?;
        }
        if let Some(filter) = &self.filter {
            let filter = Filter::from_json(filter).map_err(|e| {
                let at = if e.path.is_empty() {
                    "filter".to_string()
                } else {
                    format!("filter.{}", e.path)
                };
                ApiError::invalid(format!("{at}: {}", e.message))
            })?;
            request.filter = Some(filter);
        }
        Ok(request)
    }
}

/// Reads a `_search` body into the library's request, checked against `config`'s limits, as the
/// service does before any search runs.
pub fn parse_search(body: &[u8], config: &ServerConfig) -> Result<SearchRequest, ApiError> {
    let body: SearchBody = parse_json(body)?;
    let query = body.query_text()?;
    body.request(config, query, 10)
}

/// A mode name from the request field `field`.
pub(crate) fn parse_mode(field: &str, name: &str) -> Result<Mode, ApiError> {
    name.parse::<Mode>().map_err(|e| ApiError::invalid(format!("{field}: {e}")))
}

/// Semantic and hybrid modes need vectors: say so before any work.
pub(crate) fn check_mode(collection: &Collection, mode: Mode) -> Result<(), ApiError> {
    if mode != Mode::Keyword && collection.manifest().semantic.is_none() {
        return Err(ApiError::invalid(format!(
            "mode: {mode} search needs a collection with a model, and \"{}\" has none \
             (create it with \"model\"); keyword works",
            collection.name()
        )));
    }
    Ok(())
}

pub async fn search_collection(
    state: web::Data<AppState>,
    name: web::Path<String>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let body: SearchBody = read_json(&state, &request, payload).await?;
    let query = body.query_text()?;
    let request = body.request(&state.config, query, 10)?;
    let explain = body.explain;
    let state = state.into_inner();
    let mode = request.mode;
    let mut results = blocking(move || {
        let collection = state.registry.get(&name)?.snapshot();
        check_mode(&collection, request.mode)?;
        Ok(search(&collection, &request)?)
    })
    .await?;
    if !explain {
        results.hits.iter_mut().for_each(|hit| hit.explanation = None);
    }
    let serializing = Instant::now();
    let body = serde_json::to_vec(&json!({
        "took_ms": started.elapsed().as_secs_f64() * 1e3,
        "mode": mode.name(),
        "total": results.total,
        "hits": results.hits,
    }))
    .map_err(|e| ApiError::internal(format!("serialising the answer: {e}")))?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .insert_header(("Server-Timing", server_timing(&results.timings, serializing.elapsed())))
        .body(body))
}

/// The search's stages as a `Server-Timing` header (milliseconds; browsers' developer tools
/// show it), e.g. `encode;dur=4.1, keyword;dur=0.6, vector;dur=0.4, fusion;dur=0.1, ...`.
fn server_timing(timings: &Timings, serialize: Duration) -> String {
    timings
        .stages()
        .into_iter()
        .chain([("serialize", serialize)])
        .map(|(stage, duration)| format!("{stage};dur={:.3}", duration.as_secs_f64() * 1e3))
        .collect::<Vec<_>>()
        .join(", ")
}
