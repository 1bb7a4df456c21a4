//! The HTTP query service: collections, bulk ingest, keyword, semantic and hybrid search,
//! evaluation, metrics and a search page, over the library crates.
//!
//! This crate only translates HTTP to calls into `cloze-index`, `cloze-search` and `cloze-eval`
//! and back; what a request does is decided there. The routes are listed in [`routes`] and
//! described in `GET /openapi.json`.

mod access;
mod config;
mod error;
mod metrics;
mod registry;
pub mod routes;

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpServer};
use cloze_index::DataDir;

pub use config::{ApiKey, ConfigError, ServerConfig};
pub use error::ApiError;
pub use routes::service::OPENAPI;

use access::{Keys, Load};
use metrics::Metrics;
use registry::Registry;

/// What every request shares.
pub struct AppState {
    config: ServerConfig,
    registry: Registry,
    metrics: Metrics,
    keys: Keys,
    load: Load,
    /// In a router, the cluster it fronts (and `registry` is unused: it holds no collections).
    cluster: Option<std::sync::Arc<cloze_cluster::Router>>,
}

/// The routes a server and a router share: the page, health, metrics and documents about the API.
fn service_routes(config: &mut web::ServiceConfig) {
    use routes::service;
    config
        .route("/", web::get().to(service::page))
        .route("/health", web::get().to(service::health))
        .route("/metrics", web::get().to(service::metrics))
        .route("/openapi.json", web::get().to(service::openapi))
        .route("/sample.jsonl", web::get().to(service::sample));
}

/// Registers every route.
fn routes(config: &mut web::ServiceConfig) {
    use routes::{collections, documents, rank_eval, search, service, snapshots, tune};
    service_routes(config);
    config
        .route("/collections", web::get().to(collections::list))
        .service(
            web::resource("/collections/{name}")
                .route(web::put().to(collections::create))
                .route(web::get().to(collections::get))
                .route(web::delete().to(collections::delete)),
        )
        .route("/collections/{name}/_bulk", web::post().to(documents::bulk))
        .service(
            web::resource("/collections/{name}/documents/{id}")
                .route(web::get().to(documents::get))
                .route(web::delete().to(documents::delete)),
        )
        .route("/collections/{name}/_search", web::post().to(search::search_collection))
        .route("/collections/{name}/_rank_eval", web::post().to(rank_eval::rank_eval))
        .route("/collections/{name}/_tune", web::post().to(tune::tune_collection))
        .route("/collections/{name}/_snapshot", web::post().to(snapshots::snapshot))
        .route("/collections/{name}/_restore", web::post().to(snapshots::restore))
        .route("/snapshots", web::get().to(snapshots::list))
        .default_service(web::to(service::not_found));
}

/// The routes of a router: one node's API over a cluster, and the cluster's own.
fn cluster_routes(config: &mut web::ServiceConfig) {
    use routes::{cluster, service};
    service_routes(config);
    config
        .route("/_cluster", web::get().to(cluster::state))
        .route("/_cluster/_rebalance", web::post().to(cluster::rebalance))
        .route("/collections", web::get().to(cluster::list))
        .service(
            web::resource("/collections/{name}")
                .route(web::put().to(cluster::create))
                .route(web::get().to(cluster::get))
                .route(web::delete().to(cluster::delete)),
        )
        .route("/collections/{name}/_bulk", web::post().to(cluster::bulk))
        .route("/collections/{name}/_search", web::post().to(cluster::search))
        .route("/collections/{name}/_rank_eval", web::post().to(cluster::rank_eval))
        .default_service(web::to(service::not_found));
}

/// Counts every request by the route it matched, and logs it.
async fn observe(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let state = request.app_data::<web::Data<AppState>>().cloned();
    let response = next.call(request).await?;
    let seconds = started.elapsed().as_secs_f64();
    let method = response.request().method().to_string();
    let route = response.request().match_pattern().unwrap_or_else(|| "unmatched".to_string());
    let status = response.status().as_u16();
    tracing::info!(%method, path = response.request().path(), status, ms = seconds * 1e3, "request");
    if let Some(state) = state {
        state.metrics.record(&method, &route, status, seconds);
    }
    Ok(response)
}

/// Serves the collections of `data_dir` until a shutdown signal (SIGINT, SIGTERM), which lets
/// in-flight requests (and the commits they make) finish first. Writes `listening on
/// http://ADDRESS` to standard output once it accepts connections (with `bind` port 0, the
/// port the system chose). With no API key configured it listens on loopback only, and says so.
pub fn run(config: ServerConfig, data_dir: DataDir) -> std::io::Result<()> {
    actix_web::rt::System::new().block_on(serve(config, Backend::Local(data_dir)))
}

/// Serves as a router in front of a cluster (see `cloze_cluster`): the same API as one node
/// for clustered collections, plus `GET /_cluster` and `POST /_cluster/_rebalance`. It keeps no
/// state of its own, so several may serve side by side. `nats` is one or more NATS URLs,
/// comma-separated; `nats_replicas` the copies of what it creates in JetStream; `timeout` how
/// long a node has to answer one phase of a search before another replica is asked.
pub fn run_router(
    config: ServerConfig,
    nats: String,
    nats_replicas: usize,
    timeout: std::time::Duration,
) -> std::io::Result<()> {
    actix_web::rt::System::new().block_on(async move {
        // Connected here, so the client's tasks run for as long as the service.
        let router = cloze_cluster::Router::connect(&nats, nats_replicas, timeout)
            .await
            .map_err(std::io::Error::other)?;
        tracing::info!("connected to NATS at {nats}");
        serve(config, Backend::Cluster(std::sync::Arc::new(router))).await
    })
}

/// Where the collections a service answers for live.
enum Backend {
    /// In a data folder on this machine.
    Local(DataDir),
    /// On the nodes of a cluster.
    Cluster(std::sync::Arc<cloze_cluster::Router>),
}

async fn serve(config: ServerConfig, backend: Backend) -> std::io::Result<()> {
    let workers = match config.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let shutdown_timeout = config.shutdown_timeout_secs;
    let (data_dir, cluster) = match backend {
        Backend::Local(data_dir) => {
            match data_dir.clear_debris() {
                Ok(0) => {}
                Ok(removed) => {
                    tracing::info!("removed {removed} folders left by interrupted writes")
                }
                Err(error) => {
                    tracing::warn!("could not clear what interrupted writes left: {error}")
                }
            }
            (data_dir, None)
        }
        // A router's registry is never read: its routes only call the cluster.
        Backend::Cluster(router) => {
            (DataDir::new(std::env::temp_dir().join("cloze-router")), Some(router))
        }
    };
    let keys = Keys::new(&config);
    let bind = if keys.required() { config.bind.clone() } else { loopback_only(&config.bind)? };
    let clustered = cluster.is_some();
    let state = web::Data::new(AppState {
        config,
        registry: Registry::new(data_dir),
        metrics: Metrics::default(),
        keys,
        load: Load::default(),
        cluster,
    });
    let required = state.keys.required();
    if !clustered {
        start_merging(state.clone());
    }
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(from_fn(access::guard))
            .wrap(from_fn(observe))
            .configure(if clustered { cluster_routes } else { routes })
    })
    .workers(workers)
    .shutdown_timeout(shutdown_timeout)
    .bind(&bind)
    .map_err(|error| {
        std::io::Error::new(error.kind(), format!("cannot listen on {bind}: {error}"))
    })?;
    for address in server.addrs() {
        println!("listening on http://{address}");
        tracing::info!("listening on http://{address}");
    }
    if required {
        tracing::info!("API keys are required: the admin key for changes, either key to read");
    } else {
        let warning = "no API keys are set (CLOZE_ADMIN_KEY, CLOZE_SEARCH_KEY): anyone on this \
                       machine may read and change every collection, so the service listens \
                       on loopback only";
        // On the log (standard error): standard output carries only the address, which
        // scripts read and may stop reading after.
        tracing::warn!("{warning}");
    }
    server.run().await
}

/// How often the merge thread looks for vector segments to merge when it found none.
const MERGE_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Starts the thread that merges vector segments in the background for as long as the process
/// runs. A merge cut short by the process's end leaves only a working folder, which the next
/// write removes.
fn start_merging(state: web::Data<AppState>) {
    // While writes come in, half the cores at most: merging must not starve the writes and
    // searches it serves. Once a collection is idle, its last merge may take them all.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let pool = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("merge-{i}"))
            .build()
    };
    let (busy, idle) = match (pool((cores / 2).max(1)), pool(cores)) {
        (Ok(busy), Ok(idle)) => (busy, idle),
        (Err(error), _) | (_, Err(error)) => {
            tracing::warn!("no background merges: {error}");
            return;
        }
    };
    let spawned = std::thread::Builder::new().name("merge".to_string()).spawn(move || loop {
        match state.registry.merge_pending(&busy, &idle) {
            Ok(true) => {}
            Ok(false) => std::thread::sleep(MERGE_POLL),
            Err(error) => {
                tracing::warn!("merging vector segments: {}", error.reason);
                std::thread::sleep(MERGE_POLL * 20);
            }
        }
    });
    if let Err(error) = spawned {
        tracing::warn!("no background merges: {error}");
    }
}

/// `bind` if every address it names is a loopback one, else the same port on 127.0.0.1.
fn loopback_only(bind: &str) -> std::io::Result<String> {
    use std::net::ToSocketAddrs;
    let addresses: Vec<_> = bind
        .to_socket_addrs()
        .map_err(|error| std::io::Error::new(error.kind(), format!("bind {bind}: {error}")))?
        .collect();
    if !addresses.is_empty() && addresses.iter().all(|address| address.ip().is_loopback()) {
        return Ok(bind.to_string());
    }
    let port = addresses.first().map_or(0, |address| address.port());
    tracing::warn!("no API keys are set: listening on 127.0.0.1:{port} instead of {bind}");
    Ok(format!("127.0.0.1:{port}"))
}
