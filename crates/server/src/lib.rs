//! The HTTP query service: collections, bulk ingest, keyword, semantic and hybrid search,
//! evaluation, metrics and a search page, over the library crates.
//!
//! This crate only translates HTTP to calls into `cloze-index`, `cloze-search` and `cloze-eval`
//! and back; what a request does is decided there. The routes are listed in [`routes`] and
//! described in `GET /openapi.json`.

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

pub use config::{ConfigError, ServerConfig};
pub use error::ApiError;
pub use routes::service::OPENAPI;

use metrics::Metrics;
use registry::Registry;

/// What every request shares.
pub struct AppState {
    config: ServerConfig,
    registry: Registry,
    metrics: Metrics,
}

/// Registers every route.
fn routes(config: &mut web::ServiceConfig) {
    use routes::{collections, documents, rank_eval, search, service};
    config
        .route("/", web::get().to(service::page))
        .route("/health", web::get().to(service::health))
        .route("/metrics", web::get().to(service::metrics))
        .route("/openapi.json", web::get().to(service::openapi))
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
/// port the system chose).
pub fn run(config: ServerConfig, data_dir: DataDir) -> std::io::Result<()> {
    actix_web::rt::System::new().block_on(serve(config, data_dir))
}

async fn serve(config: ServerConfig, data_dir: DataDir) -> std::io::Result<()> {
    let workers = match config.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let shutdown_timeout = config.shutdown_timeout_secs;
    let bind = config.bind.clone();
    let state = web::Data::new(AppState {
        config,
        registry: Registry::new(data_dir),
        metrics: Metrics::default(),
    });
    let server = HttpServer::new(move || {
        App::new().app_data(state.clone()).wrap(from_fn(observe)).configure(routes)
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
    server.run().await
}
