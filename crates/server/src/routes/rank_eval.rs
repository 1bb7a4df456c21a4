//! `POST /collections/{name}/_rank_eval`: run judged queries and score the rankings, like
//! Elasticsearch's `_rank_eval`.
//!
//! ```json
//! {"requests": [{"id": "q1", "query": "vitamin d", "ratings": [{"_id": "d7", "rating": 1}]}],
//!  "metrics": ["ndcg@10", "recall@100"], "mode": "hybrid", "k": 100}
//! ```
//!
//! `mode`, `fusion`, `ef_search` and `filter` are as in `_search`; `k` (default 100) is how deep
//! each ranking goes.

use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use cloze_eval::{evaluate, Metric, Qrels, Run};
use cloze_search::{search, FusionParams};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::routes::search::{check_mode, SearchBody};
use crate::routes::{blocking, read_json};
use crate::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RankEvalBody {
    requests: Vec<JudgedQuery>,
    /// Default: nDCG@10, recall@100, MRR@10 and MAP, as `cloze eval`.
    metrics: Option<Vec<String>>,
    mode: Option<String>,
    k: Option<usize>,
    fusion: Option<FusionParams>,
    ef_search: Option<usize>,
    filter: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JudgedQuery {
    id: String,
    query: String,
    ratings: Vec<Rating>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rating {
    #[serde(rename = "_id")]
    id: String,
    /// 0 is not relevant; higher is more relevant.
    rating: i64,
}

pub async fn rank_eval(
    state: web::Data<AppState>,
    name: web::Path<String>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let body: RankEvalBody = read_json(&state, &request, payload).await?;
    if body.requests.is_empty() {
        return Err(ApiError::invalid("requests: give at least one judged query"));
    }
    let metrics = match &body.metrics {
        Some(names) if names.is_empty() => {
            return Err(ApiError::invalid("metrics: name at least one"))
        }
        Some(names) => names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                name.parse::<Metric>().map_err(|e| ApiError::invalid(format!("metrics[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Metric::DEFAULTS.to_vec(),
    };
    let mut qrels = Qrels::default();
    for (i, judged) in body.requests.iter().enumerate() {
        if judged.ratings.is_empty() {
            return Err(ApiError::invalid(format!(
                "requests[{i}].ratings: rate at least one document"
            )));
        }
        for rating in &judged.ratings {
            qrels.insert(&judged.id, &rating.id, rating.rating);
        }
    }
    if qrels.num_queries() != body.requests.len() {
        return Err(ApiError::invalid("requests: two requests share an id"));
    }
    // Every query runs with the same settings; only the text changes.
    let settings = SearchBody {
        q: String::new(),
        mode: body.mode.clone(),
        k: body.k,
        offset: 0,
        fusion: body.fusion.clone(),
        ef_search: body.ef_search,
        filter: body.filter.clone(),
        highlight: false,
        explain: false,
    };
    let mut template = settings.request(&state, String::new(), 100)?;
    template.with_documents = false;
    let state = state.into_inner();
    let evaluation = blocking(move || {
        let collection = state.registry.get(&name)?.snapshot();
        check_mode(&collection, template.mode)?;
        let mut run = Run::new();
        for judged in body.requests {
            let mut request = template.clone();
            request.query = judged.query;
            let found = search(&collection, &request)?;
            run.insert(
                &judged.id,
                found.hits.into_iter().map(|hit| (hit.id, f64::from(hit.score))).collect(),
            );
        }
        Ok(evaluate(&qrels, &run, &metrics))
    })
    .await?;
    let names: Vec<String> = evaluation.metrics().iter().map(Metric::to_string).collect();
    let means: Map<String, Value> = evaluation
        .means()
        .into_iter()
        .map(|(metric, mean)| (metric.to_string(), json!(mean)))
        .collect();
    let details: Map<String, Value> = evaluation
        .per_query()
        .iter()
        .map(|(query, scores)| {
            let scores: Map<String, Value> =
                names.iter().cloned().zip(scores.iter().map(|s| json!(s))).collect();
            (query.clone(), Value::Object(scores))
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "took_ms": started.elapsed().as_secs_f64() * 1e3,
        "queries": evaluation.num_queries(),
        "metrics": means,
        "details": details,
    })))
}
