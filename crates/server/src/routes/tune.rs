//! `POST /collections/{name}/_tune`: find the hybrid fusion (and, in a collection that expands
//! its documents, the expansion weight) that ranks judged queries best, as `cloze tune` does,
//! and optionally make it the collection's default.
//!
//! ```json
//! {"requests": [{"id": "q1", "query": "vitamin d", "ratings": [{"_id": "d7", "rating": 1}]}],
//!  "metric": "ndcg@10", "alphas": [0.5, 0.8], "save": true}
//! ```
//!
//! `requests` are as in `_rank_eval`; the other fields are `cloze tune`'s flags, with the same
//! defaults. Without `requests`, it tunes on pseudo-queries made from the collection's own
//! documents, as `cloze tune` without judgments does (`pseudo_queries`, `pseudo_query_words`,
//! `keep_sentences`, `seed`), on a passing copy taken between two writes. The answer is what
//! `cloze tune --json` prints, byte for byte, with `took_ms` last.

use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use cloze_eval::Metric;
use cloze_search::{tune, tune_without_judgments, PseudoQuerySettings, TuneOptions};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::routes::rank_eval::{judged, JudgedRequest};
use crate::routes::{blocking, parse_json, read_body};
use crate::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TuneBody {
    /// Judged queries; without them, pseudo-queries.
    requests: Option<Vec<JudgedRequest>>,
    pseudo_queries: Option<usize>,
    pseudo_query_words: Option<usize>,
    #[serde(default)]
    keep_sentences: bool,
    seed: Option<u64>,
    metric: Option<String>,
    alphas: Option<Vec<f64>>,
    rrf_ks: Option<Vec<f64>>,
    depths: Option<Vec<usize>>,
    feedback_docs: Option<Vec<usize>>,
    feedback_weights: Option<Vec<f64>>,
    expansion_weights: Option<Vec<f64>>,
    ef_search: Option<usize>,
    significance: Option<f64>,
    /// Make the choice the collection's default hybrid fusion (and expansion weight).
    #[serde(default)]
    save: bool,
}

/// The most settings one request may try: each is a pass over every query's candidates.
const MAX_SETTINGS: usize = 10_000;

pub async fn tune_collection(
    state: web::Data<AppState>,
    name: web::Path<String>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let body = read_body(&state, &request, payload).await?;
    let body: TuneBody = parse_json(&body)?;
    let defaults = TuneOptions::default();
    let metric = match &body.metric {
        Some(name) => {
            name.parse::<Metric>().map_err(|e| ApiError::invalid(format!("metric: {e}")))?
        }
        None => defaults.metric,
    };
    let options = TuneOptions {
        metric,
        alphas: body.alphas.unwrap_or(defaults.alphas),
        rrf_ks: body.rrf_ks.unwrap_or(defaults.rrf_ks),
        depths: body.depths.unwrap_or(defaults.depths),
        feedback_docs: body.feedback_docs.unwrap_or(defaults.feedback_docs),
        feedback_weights: body.feedback_weights.unwrap_or(defaults.feedback_weights),
        expansion_weights: body.expansion_weights,
        ef_search: body.ef_search.or(defaults.ef_search),
        significance: body.significance.unwrap_or(defaults.significance),
    };
    let tried = options.settings()?.len();
    if tried > MAX_SETTINGS {
        return Err(ApiError::invalid(format!(
            "{tried} settings to try, over the limit of {MAX_SETTINGS}: give fewer alphas, \
             rrf_ks, depths or feedback settings"
        )));
    }
    let max = state.config.max_hits;
    if let Some(depth) = options.depths.iter().find(|&&depth| depth > max) {
        return Err(ApiError::invalid(format!(
            "depths: {depth} is over the limit of {max} (max_hits)"
        )));
    }
    let judged = match body.requests {
        Some(requests) => {
            let pseudo = [
                ("pseudo_queries", body.pseudo_queries.is_some()),
                ("pseudo_query_words", body.pseudo_query_words.is_some()),
                ("keep_sentences", body.keep_sentences),
                ("seed", body.seed.is_some()),
            ];
            if let Some((field, _)) = pseudo.iter().find(|(_, given)| *given) {
                return Err(ApiError::invalid(format!(
                    "{field}: pseudo-queries are made only without requests"
                )));
            }
            Some(judged(requests)?)
        }
        None => None,
    };
    let defaults = PseudoQuerySettings::default();
    let pseudo = PseudoQuerySettings {
        count: body.pseudo_queries.unwrap_or(defaults.count),
        words: body.pseudo_query_words.unwrap_or(defaults.words),
        keep_sentence: body.keep_sentences,
        seed: body.seed.unwrap_or(defaults.seed),
    };
    let save = body.save;
    let state = state.into_inner();
    let tuning = blocking(move || {
        let handle = state.registry.get(&name)?;
        let collection = handle.snapshot();
        let mut tuning = match &judged {
            Some((queries, qrels)) => tune(&collection, queries, qrels, &options, || {})?,
            None => tune_without_judgments(
                state.registry.data_dir(),
                &collection,
                &pseudo,
                &options,
                || {},
            )?,
        };
        if save {
            handle.write(|collection| tuning.save(collection))?;
        }
        Ok(tuning)
    })
    .await?;
    // In the tuning's own field order, as `cloze tune --json` prints it, then the time taken.
    let answer = Answer { tuning: &tuning, took_ms: started.elapsed().as_secs_f64() * 1e3 };
    Ok(HttpResponse::Ok().json(answer))
}

#[derive(Serialize)]
struct Answer<'a> {
    #[serde(flatten)]
    tuning: &'a cloze_search::Tuning,
    took_ms: f64,
}
