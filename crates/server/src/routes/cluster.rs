//! The routes of a router in front of a cluster: the same collection, `_bulk`, `_search` and
//! `_rank_eval` requests as one node, answered by fanning out to the nodes through NATS, plus
//! `GET /_cluster` and rebalancing.

use std::collections::BTreeMap;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use cloze_cluster::router::NewCollection;
use cloze_cluster::{ClusterError, ClusterSearch, Router};
use cloze_eval::Run;
use cloze_search::record;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::routes::collections::CreateCollection;
use crate::routes::documents::bulk_changes;
use crate::routes::rank_eval::RankEvalPlan;
use crate::routes::search::SearchBody;
use crate::routes::{blocking, parse_json, read_body, read_json};
use crate::AppState;

/// Searches a `_rank_eval` runs at once through the router.
const RANK_EVAL_CONCURRENCY: usize = 8;

impl From<ClusterError> for ApiError {
    fn from(error: ClusterError) -> ApiError {
        let reason = error.to_string();
        match error {
            ClusterError::UnknownCollection(name) => ApiError::not_found(
                "collection_not_found",
                format!("no clustered collection named \"{name}\""),
            ),
            ClusterError::CollectionExists(_) => {
                ApiError::new(StatusCode::CONFLICT, "collection_exists", reason)
            }
            ClusterError::Invalid(_) => ApiError::invalid(reason),
            ClusterError::Unavailable { .. }
            | ClusterError::JetStream(_)
            | ClusterError::Connect { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", reason)
            }
            ClusterError::Index(error) => error.into(),
            ClusterError::Search(error) => error.into(),
            ClusterError::Io { .. } => ApiError::internal(reason),
        }
    }
}

fn router(state: &AppState) -> Result<&Router, ApiError> {
    state.cluster.as_deref().ok_or_else(|| ApiError::internal("this service is not a router"))
}

/// A map as the API shows it.
fn describe(map: &cloze_cluster::CollectionMap) -> Value {
    json!({
        "name": map.name,
        "partitions": map.partitions,
        "replicas": map.replicas,
        "settings": { "analyzer": map.analyzer, "semantic": map.semantic },
        "assignment": map.assignment.iter().map(|p| p.iter().map(|r| r.node.clone()).collect::<Vec<_>>()).collect::<Vec<_>>(),
    })
}

pub async fn state(
    state: web::Data<AppState>,
    query: web::Query<BTreeMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let checksums = match query.get("checksums").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!("checksums: true or false (found \"{other}\")")))
        }
    };
    Ok(HttpResponse::Ok().json(router(&state)?.status(checksums).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebalanceBody {
    /// Nodes to move every replica off, before they are stopped.
    #[serde(default)]
    exclude: Vec<String>,
    /// How long to wait for new replicas to catch up (default 600).
    timeout_secs: Option<u64>,
}

/// `POST /_cluster/_rebalance`: spread partitions over the live nodes (after a node joined), or
/// off the `exclude`d ones (before they leave).
pub async fn rebalance(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let body = read_body(&state, &request, payload).await?;
    let body: RebalanceBody =
        if body.is_empty() { RebalanceBody::default() } else { parse_json(&body)? };
    let patience = std::time::Duration::from_secs(body.timeout_secs.unwrap_or(600));
    let moves = router(&state)?
        .rebalance(&body.exclude, patience, |step| tracing::info!("rebalance: {step}"))
        .await?;
    Ok(HttpResponse::Ok().json(json!({
        "took_ms": started.elapsed().as_secs_f64() * 1e3,
        "moves": moves,
    })))
}

pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let maps = router(&state)?.collections().await?;
    Ok(HttpResponse::Ok()
        .json(json!({ "collections": maps.iter().map(describe).collect::<Vec<_>>() })))
}

pub async fn get(
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(describe(&router(&state)?.collection(&name).await?)))
}

pub async fn delete(
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    router(&state)?.delete_collection(&name).await?;
    Ok(HttpResponse::Ok().json(json!({ "deleted": name.into_inner() })))
}

/// `PUT /collections/{name}`: the settings of one node's collections, plus `partitions` and
/// `replicas`.
pub async fn create(
    state: web::Data<AppState>,
    name: web::Path<String>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let mut body: Map<String, Value> = read_json(&state, &request, payload).await?;
    let mut count = |field: &str| -> Result<u32, ApiError> {
        match body.remove(field) {
            Some(Value::Number(n))
                if n.as_u64().is_some_and(|n| n >= 1 && n <= u64::from(u32::MAX)) =>
            {
                Ok(n.as_u64().expect("checked") as u32)
            }
            Some(other) => Err(ApiError::invalid(format!(
                "{field}: a whole number of at least 1 (found {other})"
            ))),
            None => Err(ApiError::invalid(format!(
                "missing field `{field}` (a clustered collection needs partitions and replicas)"
            ))),
        }
    };
    let (partitions, replicas) = (count("partitions")?, count("replicas")?);
    let settings: CreateCollection = parse_json(&serde_json::to_vec(&body).expect("serializes"))?;
    let (analyzer, semantic, _) = blocking(move || settings.resolve()).await?;
    if semantic.as_ref().is_some_and(|semantic| semantic.expansion.is_some()) {
        // A document's neighbours are those present when it is written, and each replica
        // applies the log in batches of its own: their expansions, and so their keyword
        // scores, would differ.
        return Err(ApiError::invalid(
            "expansion: not available for a clustered collection (replicas apply writes in \
             batches of their own, so a document's neighbours would differ between them)",
        ));
    }
    let new = NewCollection { name: name.into_inner(), partitions, replicas, analyzer, semantic };
    let map = router(&state)?.create_collection(new).await?;
    Ok(HttpResponse::Created().json(describe(&map)))
}

/// `POST /collections/{name}/_bulk[?refresh=wait_for]`: answered once the log stored every
/// change on a quorum of NATS servers; with `refresh=wait_for`, once the replicas applied them.
pub async fn bulk(
    state: web::Data<AppState>,
    name: web::Path<String>,
    query: web::Query<BTreeMap<String, String>>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let wait = match query.get("refresh").map(String::as_str) {
        None | Some("false") => false,
        Some("wait_for") | Some("true") | Some("") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "refresh: wait_for or false (found \"{other}\")"
            )))
        }
    };
    let body = read_body(&state, &request, payload).await?;
    let router = router(&state)?;
    let map = router.collection(&name).await?;
    let dimension = map.semantic.as_ref().map(|semantic| semantic.dimension());
    let changes = match bulk_changes(&state.config, &body, dimension)? {
        Ok(changes) => changes,
        Err(wrong_lines) => return Ok(wrong_lines),
    };
    let answer = router.bulk(&name, changes, wait).await?;
    let items: Vec<Value> = answer
        .items
        .into_iter()
        .map(|(action, id)| {
            let partition = cloze_cluster::partition_of(&id, map.partitions);
            json!({ action: {"_id": id, "result": "accepted", "status": 202, "partition": partition,
                    "log_position": answer.positions.get(&partition)} })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "took_ms": started.elapsed().as_secs_f64() * 1e3,
        "errors": false,
        "items": items,
    })))
}

#[derive(Debug, Default, Deserialize)]
pub struct PartialParams {
    /// false: fail (503) when a partition has no replica that answers, instead of answering
    /// from the others (Elasticsearch's `allow_partial_search_results`).
    allow_partial_search_results: Option<bool>,
}

pub async fn search(
    state: web::Data<AppState>,
    name: web::Path<String>,
    params: web::Query<PartialParams>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let body: SearchBody = read_json(&state, &request, payload).await?;
    let query = body.query_text()?;
    let search_request = body.request(&state.config, query, 10)?;
    let mode = search_request.mode;
    let search = ClusterSearch {
        request: search_request,
        filter: body.filter.clone(),
        require_all_partitions: params.allow_partial_search_results == Some(false),
    };
    let mut answer = router(&state)?.search(&name, &search).await?;
    if !body.explain {
        answer.hits.iter_mut().for_each(|hit| hit.explanation = None);
    }
    let missing = &answer.missing_partitions;
    Ok(HttpResponse::Ok().json(json!({
        "took_ms": started.elapsed().as_secs_f64() * 1e3,
        "mode": mode.name(),
        "total": answer.total,
        "hits": answer.hits,
        "partial": !missing.is_empty(),
        "_partitions": {
            "total": answer.partitions,
            "successful": answer.partitions as usize - missing.len(),
            "missing": missing,
        },
    })))
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
    let router = router(&state)?;
    let mut runs = Vec::new();
    for template in &plan.templates {
        let searches = plan.queries.iter().map(|query| {
            let (id, request) = (query.id.as_str(), query.request(template));
            let search = ClusterSearch {
                request,
                filter: plan.filter.clone(),
                require_all_partitions: true,
            };
            let name = name.as_str();
            async move { router.search(name, &search).await.map(|answer| (id, answer)) }
        });
        let answers: Vec<_> =
            futures::stream::iter(searches).buffered(RANK_EVAL_CONCURRENCY).collect().await;
        let mut run = Run::new();
        for answer in answers {
            let (id, answer) = answer?;
            record(&mut run, id, answer.hits);
        }
        runs.push(run);
    }
    Ok(plan.answer(runs, started))
}
