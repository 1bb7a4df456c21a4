//! `PUT|GET|DELETE /collections/{name}` and `GET /collections`.

use std::path::PathBuf;

use actix_web::{web, HttpRequest, HttpResponse};
use cloze_index::{
    AnalyzerSettings, Collection, Encoder, ExpansionSettings, HnswSettings, IndexError,
    SemanticSettings,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::routes::{blocking, read_json};
use crate::AppState;

/// The settings of a new collection. All are optional: with none, a keyword-only collection
/// with the English analyzer.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateCollection {
    /// A model folder on the server (Hugging Face BERT layout): the collection also gets
    /// vectors and answers semantic and hybrid searches.
    model: Option<PathBuf>,
    /// Without a model: the length of the vectors the documents bring themselves (`vector` in
    /// each bulk document), for semantic and hybrid searches with a query `vector`.
    dimension: Option<usize>,
    /// An analyzer preset name.
    analyzer: Option<String>,
    /// HNSW settings; each left out keeps its default.
    hnsw: Option<HnswParams>,
    /// Cut documents longer than the model's length into windows overlapping by this many
    /// tokens, one vector each, instead of truncating them.
    window_overlap: Option<usize>,
    /// Tokens per window when shorter than the model's length (with `window_overlap`).
    window_length: Option<usize>,
    /// Index each document with the text of its nearest documents by vector too, which
    /// keyword search scores at a lower weight; each setting left out keeps its default.
    expansion: Option<ExpansionParams>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpansionParams {
    neighbours: Option<usize>,
    weight: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HnswParams {
    m: Option<usize>,
    ef_construction: Option<usize>,
    ef_search: Option<usize>,
}

pub async fn create(
    state: web::Data<AppState>,
    name: web::Path<String>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let settings: CreateCollection = read_json(&state, &request, payload).await?;
    let name = name.into_inner();
    let state = state.into_inner();
    let created = blocking(move || {
        if state.registry.data_dir().exists(&name)? {
            return Err(IndexError::CollectionExists(name).into());
        }
        // The model loads before the collection exists, so a bad path creates nothing.
        let (analyzer, semantic, encoder) = settings.resolve()?;
        let handle = state.registry.create(&name, |data_dir| {
            let collection = data_dir.create(&name, analyzer, semantic)?;
            if let Some(encoder) = encoder {
                collection.use_encoder(encoder)?;
            }
            Ok(collection)
        })?;
        Ok(describe(&handle.snapshot()))
    })
    .await?;
    Ok(HttpResponse::Created().json(created))
}

impl CreateCollection {
    /// The analyzer and vector settings these ask for, checked, with the model loaded (it
    /// takes a while: call from a blocking task).
    pub(crate) fn resolve(
        self,
    ) -> Result<(AnalyzerSettings, Option<SemanticSettings>, Option<Encoder>), ApiError> {
        let settings = self;
        let analyzer = match &settings.analyzer {
            Some(preset) => AnalyzerSettings::preset(preset).ok_or_else(|| {
                let presets: Vec<_> = AnalyzerSettings::preset_names().collect();
                ApiError::invalid(format!(
                    "analyzer: unknown preset \"{preset}\" (presets: {})",
                    presets.join(", ")
                ))
            })?,
            None => AnalyzerSettings::default(),
        };
        let needs_model = settings.hnsw.is_some()
            || settings.window_overlap.is_some()
            || settings.window_length.is_some()
            || settings.expansion.is_some();
        let windows = settings.window_overlap.is_some() || settings.window_length.is_some();
        if settings.model.is_none() && settings.dimension.is_none() && needs_model {
            return Err(ApiError::invalid(
                "hnsw, window_overlap, window_length and expansion need vectors: model (or \
                 dimension) is missing",
            ));
        }
        if settings.model.is_some() && settings.dimension.is_some() {
            return Err(ApiError::invalid(
                "dimension: a collection with a model has the model's dimension; give one or the other",
            ));
        }
        if settings.model.is_none() && windows {
            return Err(ApiError::invalid(
                "window_overlap and window_length need a model to cut documents into windows",
            ));
        }
        let defaults = HnswSettings::default();
        let hnsw = settings.hnsw.unwrap_or_default();
        let hnsw = HnswSettings {
            m: hnsw.m.unwrap_or(defaults.m),
            ef_construction: hnsw.ef_construction.unwrap_or(defaults.ef_construction),
            ef_search: hnsw.ef_search.unwrap_or(defaults.ef_search),
        };
        hnsw.validate().map_err(|message| ApiError::invalid(format!("hnsw: {message}")))?;
        let expansion = settings.expansion.as_ref().map(|params| {
            let defaults = ExpansionSettings::default();
            ExpansionSettings {
                neighbours: params.neighbours.unwrap_or(defaults.neighbours),
                weight: params.weight.unwrap_or(defaults.weight),
            }
        });
        if let Some(expansion) = &expansion {
            expansion.validate().map_err(ApiError::invalid)?;
        }
        let encoder = match &settings.model {
            Some(model) => Some(
                Encoder::load(model)
                    .map_err(|error| ApiError::invalid(format!("model: {error}")))?,
            ),
            None => None,
        };
        let semantic = match (&encoder, settings.dimension) {
            (Some(encoder), _) => Some(SemanticSettings {
                model: Some(encoder.record().clone()),
                dimension: None,
                window_overlap: settings.window_overlap,
                window_length: settings.window_length,
                hnsw,
                expansion,
            }),
            (None, Some(dimension)) => Some(SemanticSettings {
                expansion,
                ..SemanticSettings::with_dimension(dimension, hnsw)
            }),
            (None, None) => None,
        };
        Ok((analyzer, semantic, encoder))
    }
}

pub async fn get(
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let state = state.into_inner();
    let described = blocking(move || Ok(describe(&state.registry.get(&name)?.snapshot()))).await?;
    Ok(HttpResponse::Ok().json(described))
}

pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let state = state.into_inner();
    let collections = blocking(move || {
        let names = state.registry.names()?;
        names
            .iter()
            .map(|name| Ok(describe(&state.registry.get(name)?.snapshot())))
            .collect::<Result<Vec<Value>, ApiError>>()
    })
    .await?;
    Ok(HttpResponse::Ok().json(json!({ "collections": collections })))
}

pub async fn delete(
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let state = state.into_inner();
    let deleted = name.clone();
    blocking(move || state.registry.delete(&name)).await?;
    Ok(HttpResponse::Ok().json(json!({ "deleted": deleted })))
}

/// A collection's name, counts and settings.
fn describe(collection: &Collection) -> Value {
    json!({
        "name": collection.name(),
        "documents": collection.document_count(),
        "vectors": collection.vector_count(),
        "segments": collection.segment_count(),
        "settings": collection.manifest(),
    })
}
