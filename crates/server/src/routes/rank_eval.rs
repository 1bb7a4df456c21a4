//! `POST /collections/{name}/_rank_eval`: run judged queries and score the rankings, like
//! Elasticsearch's `_rank_eval`.
//!
//! ```json
//! {"requests": [{"id": "q1", "query": "vitamin d", "ratings": [{"_id": "d7", "rating": 1}]}],
//!  "metrics": ["ndcg@10", "recall@100"], "mode": "hybrid", "k": 100}
//! ```
//!
//! `mode`, `fusion`, `ef_search`, `expansion_weight` and `filter` are as in `_search`; `k` (default 100) is how deep
//! each ranking goes. With `"modes": ["keyword", "hybrid"]` instead of `mode`, every mode is
//! run and compared with the first, and the answer is the comparison `cloze eval --json` prints
//! for several modes (differences, wins/ties/losses, paired t-test and randomization test
//! p-values; `trials`, `seed` and `holm` as its flags).

use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use cloze_eval::{compare, evaluate, CompareOptions, Metric, Qrels, Run};
use cloze_search::{search_judged, FusionSettings, JudgedQuery, Mode, SearchRequest};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::routes::search::{check_mode, parse_mode, SearchBody};
use crate::routes::{blocking, parse_json, read_body};
use crate::{AppState, ServerConfig};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RankEvalBody {
    requests: Vec<JudgedRequest>,
    /// Default: nDCG@10, recall@100, MRR@10 and MAP, as `cloze eval`.
    metrics: Option<Vec<String>>,
    mode: Option<String>,
    /// Several modes to compare, the first the baseline.
    modes: Option<Vec<String>>,
    k: Option<usize>,
    fusion: Option<FusionSettings>,
    ef_search: Option<usize>,
    expansion_weight: Option<f64>,
    filter: Option<Value>,
    /// Comparisons: random swaps per randomization test.
    trials: Option<usize>,
    /// Comparisons: the randomization tests' seed.
    seed: Option<u64>,
    /// Comparisons: Holm-Bonferroni corrected p-values.
    #[serde(default)]
    holm: bool,
}

/// The most random swaps a comparison may ask for: each costs a pass over the queries.
const MAX_TRIALS: usize = 100_000;

/// A judged query as `_rank_eval` and `_tune` take it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JudgedRequest {
    id: String,
    query: String,
    /// The query's vector, for semantic and hybrid modes on a collection whose documents bring
    /// their own vectors (as `vector` in `_search`).
    vector: Option<Vec<f32>>,
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

/// What a `_rank_eval` body asks for, checked: the searches to run and how to score them.
pub(crate) struct RankEvalPlan {
    metrics: Vec<Metric>,
    qrels: Qrels,
    /// One search per mode, every setting but the query text.
    pub templates: Vec<SearchRequest>,
    /// The body's filter as JSON (a clustered collection's nodes read it so).
    pub filter: Option<Value>,
    pub queries: Vec<JudgedQuery>,
    comparing: bool,
    options: CompareOptions,
}

impl RankEvalPlan {
    pub(crate) fn from_body(body: &[u8], config: &ServerConfig) -> Result<RankEvalPlan, ApiError> {
        let body: RankEvalBody = parse_json(body)?;
        let metrics = match &body.metrics {
            Some(names) if names.is_empty() => {
                return Err(ApiError::invalid("metrics: name at least one"))
            }
            Some(names) => names
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    name.parse::<Metric>()
                        .map_err(|e| ApiError::invalid(format!("metrics[{i}]: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => Metric::DEFAULTS.to_vec(),
        };
        let (queries, qrels) = judged(body.requests)?;
        let modes: Vec<Mode> = match (&body.mode, &body.modes) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid("modes: give mode or modes, not both"))
            }
            (_, Some(modes)) if modes.is_empty() => {
                return Err(ApiError::invalid("modes: name at least one mode"))
            }
            (_, Some(modes)) => {
                let mut parsed = Vec::new();
                for (i, name) in modes.iter().enumerate() {
                    let mode = parse_mode(&format!("modes[{i}]"), name)?;
                    if parsed.contains(&mode) {
                        return Err(ApiError::invalid(format!(
                            "modes[{i}]: {mode} is named twice"
                        )));
                    }
                    parsed.push(mode);
                }
                parsed
            }
            (Some(name), None) => vec![parse_mode("mode", name)?],
            (None, None) => vec![Mode::Keyword],
        };
        let options = CompareOptions {
            trials: body.trials.unwrap_or(CompareOptions::default().trials),
            seed: body.seed.unwrap_or(0),
            holm: body.holm,
        };
        if !(1..=MAX_TRIALS).contains(&options.trials) {
            return Err(ApiError::invalid(format!(
                "trials: must be between 1 and {MAX_TRIALS} (found {})",
                options.trials
            )));
        }
        // Every query runs with the same settings; only the mode and the text change.
        let settings = SearchBody {
            q: None,
            vector: None,
            mode: None,
            k: body.k,
            offset: 0,
            fusion: body.fusion.clone(),
            ef_search: body.ef_search,
            expansion_weight: body.expansion_weight,
            filter: body.filter.clone(),
            highlight: false,
            explain: false,
        };
        let mut template = settings.request(config, String::new(), 100)?;
        template.with_documents = false;
        let templates: Vec<SearchRequest> =
            modes.into_iter().map(|mode| SearchRequest { mode, ..template.clone() }).collect();
        let comparing = body.modes.is_some();
        Ok(RankEvalPlan {
            metrics,
            qrels,
            templates,
            filter: body.filter,
            queries,
            comparing,
            options,
        })
    }

    /// The answer: the scores of the one run, or the comparison of several, each named by its
    /// mode, in the order of `templates`.
    pub(crate) fn answer(&self, runs: Vec<Run>, started: Instant) -> HttpResponse {
        let runs: Vec<(String, Run)> =
            self.templates.iter().map(|t| t.mode.name().to_string()).zip(runs).collect();
        let (metrics, qrels) = (&self.metrics, &self.qrels);
        if self.comparing {
            let named: Vec<(String, &Run)> =
                runs.iter().map(|(name, run)| (name.clone(), run)).collect();
            let comparison = compare(qrels, &named, metrics, self.options);
            let mut answer = serde_json::to_value(&comparison).expect("a comparison serializes");
            answer["took_ms"] = json!(started.elapsed().as_secs_f64() * 1e3);
            return HttpResponse::Ok().json(answer);
        }
        let evaluation = evaluate(qrels, &runs[0].1, metrics);
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
        HttpResponse::Ok().json(json!({
            "took_ms": started.elapsed().as_secs_f64() * 1e3,
            "queries": evaluation.num_queries(),
            "metrics": means,
            "details": details,
        }))
    }
}

pub async fn rank_eval(
    state: web::Data<AppState>,
    name: web::Path<String>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let body = read_body(&state, &request, payload).await?;
    let plan = RankEvalPlan::from_body(&body, &state.config)?;
    let state = state.into_inner();
    let (plan, runs) = blocking(move || {
        let collection = state.registry.get(&name)?.snapshot();
        let mut runs = Vec::new();
        for template in &plan.templates {
            check_mode(&collection, template.mode)?;
            runs.push(search_judged(&collection, template, &plan.queries, || {})?);
        }
        Ok((plan, runs))
    })
    .await?;
    Ok(plan.answer(runs, started))
}

/// The judged queries of a `requests` field, and their judgments; an error names the request.
pub(crate) fn judged(requests: Vec<JudgedRequest>) -> Result<(Vec<JudgedQuery>, Qrels), ApiError> {
    if requests.is_empty() {
        return Err(ApiError::invalid("requests: give at least one judged query"));
    }
    let mut qrels = Qrels::default();
    for (i, judged) in requests.iter().enumerate() {
        if judged.ratings.is_empty() {
            return Err(ApiError::invalid(format!(
                "requests[{i}].ratings: rate at least one document"
            )));
        }
        for rating in &judged.ratings {
            qrels.insert(&judged.id, &rating.id, rating.rating);
        }
    }
    if qrels.num_queries() != requests.len() {
        return Err(ApiError::invalid("requests: two requests share an id"));
    }
    let queries = requests
        .into_iter()
        .map(|r| JudgedQuery { id: r.id, text: r.query, vector: r.vector })
        .collect();
    Ok((queries, qrels))
}
