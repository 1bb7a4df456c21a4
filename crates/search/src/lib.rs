//! Relevance-ranked retrieval over a collection.
//!
//! A [`SearchRequest`] names the query text, the ranking mode and how many hits to return;
//! [`search`] answers with ranked [`Hit`]s. Keyword mode is BM25 over each document's title and
//! text, with the query analysed by the collection's own analyzer; semantic mode embeds the
//! query with the collection's model and ranks documents by cosine similarity in its HNSW graph;
//! hybrid mode fuses the two rankings. A [`Filter`] on stored metadata narrows every mode alike.

mod filter;
mod hybrid;
mod judged;
mod keyword;
mod pseudo;
mod semantic;
mod statistics;
mod tune;

pub use cloze_index::FusionSettings;
pub use filter::{Condition, Filter, FilterError, Scalar, Test};
pub use hybrid::{
    candidates, fuse, Candidates, Explanation, Feedback, Fused, Fusion, FusionMethod,
    FusionParamError, Normalization, Ranking, SideScore,
};
pub use judged::{record, search_judged, JudgedQuery, NoQueryText};
pub use pseudo::{pseudo_queries, tune_without_judgments, PseudoQueries, PseudoQuerySettings};
pub use statistics::KeywordStatistics;
pub use tune::{
    tune, ExpansionTuning, PseudoQuerySources, ScoredFusion, ScoredWeight, TuneOptions, Tuning,
    SIGNIFICANCE_TRIALS,
};

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use cloze_index::{Collection, IndexError};
use serde::Serialize;
use serde_json::{Map, Value};

/// How hits are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// BM25 over the analysed title and text.
    #[default]
    Keyword,
    /// Cosine similarity of the query's and the documents' vectors (approximate, HNSW).
    Semantic,
    /// Both rankings, fused (see [`Fusion`]).
    Hybrid,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Keyword, Mode::Semantic, Mode::Hybrid];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Keyword => "keyword",
            Mode::Semantic => "semantic",
            Mode::Hybrid => "hybrid",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = SearchError;

    fn from_str(name: &str) -> Result<Mode, SearchError> {
        Mode::ALL
            .into_iter()
            .find(|mode| mode.name() == name)
            .ok_or_else(|| SearchError::UnknownMode(name.to_string()))
    }
}

/// One search.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchRequest {
    pub query: String,
    /// Semantic and hybrid modes: the query's own vector, used instead of embedding `query`
    /// (the only way to search a collection without a model by meaning).
    pub vector: Option<Vec<f32>>,
    pub mode: Mode,
    /// How many hits to return at most.
    pub limit: usize,
    /// How many of the best hits to skip first (for paging).
    pub offset: usize,
    /// Fill in each hit's title and snippet; a ranking alone (as evaluation needs) is faster
    /// without them.
    pub with_documents: bool,
    /// Semantic mode: HNSW candidates to consider, instead of the collection's ef_search.
    /// More is closer to exact search and slower.
    pub ef_search: Option<usize>,
    /// Hybrid mode: how to fuse [default: the collection's saved default, else
    /// `Fusion::SCIFACT_TUNED`].
    pub fusion: Option<Fusion>,
    /// Keyword side of a collection that expands its documents: the weight of a match in the
    /// neighbours' text, against 1 for the document's own (0: the document's own text alone)
    /// [default: the collection's]. A collection that does not expand refuses it.
    pub expansion_weight: Option<f64>,
    /// Only documents whose metadata pass this filter.
    pub filter: Option<Filter>,
    /// With documents: also give each hit its snippet as HTML with the query's terms marked.
    pub highlight: bool,
    /// Keyword side: score with these statistics instead of the collection's own, so that one
    /// partition of many ranks as the whole would (see [`KeywordStatistics`]).
    pub statistics: Option<Arc<KeywordStatistics>>,
}

impl SearchRequest {
    /// The first `limit` hits for `query`, ranked by `mode`, with titles and snippets.
    pub fn new(query: impl Into<String>, mode: Mode, limit: usize) -> SearchRequest {
        SearchRequest {
            query: query.into(),
            vector: None,
            mode,
            limit,
            offset: 0,
            with_documents: true,
            ef_search: None,
            fusion: None,
            expansion_weight: None,
            filter: None,
            highlight: false,
            statistics: None,
        }
    }
}

/// A ranked document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    pub id: String,
    pub score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The passage of the text that best matches the query (the text's start if none does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snippet: Option<String>,
    /// The snippet as HTML, with the query's terms in `<em>` (when highlighting was asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub highlight: Option<String>,
    /// The document's other stored fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    /// The hit's rank and score on each side that found it, and its final score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<Explanation>,
}

impl Hit {
    /// A hit with only its ranking: documents and explanation are filled in later.
    pub fn ranked(id: String, score: f32) -> Hit {
        Hit {
            id,
            score,
            title: None,
            snippet: None,
            highlight: None,
            metadata: None,
            explanation: None,
        }
    }
}

/// Where a search spent its time, stage by stage (zero for a stage its mode does not run).
/// The service reports it in a `Server-Timing` header, so a slow query shows its cause.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Embedding the query with the collection's model.
    pub encode: Duration,
    /// Analysing the query and ranking with BM25 in tantivy.
    pub keyword: Duration,
    /// Searching the HNSW graph (and applying a filter to it).
    pub vector: Duration,
    /// Normalising and combining the two rankings.
    pub fusion: Duration,
    /// Reading titles, snippets and metadata for the page of hits.
    pub documents: Duration,
}

impl Timings {
    /// Each stage's name and duration, in the order a hybrid search runs them.
    pub fn stages(&self) -> [(&'static str, Duration); 5] {
        [
            ("encode", self.encode),
            ("keyword", self.keyword),
            ("vector", self.vector),
            ("fusion", self.fusion),
            ("documents", self.documents),
        ]
    }
}

/// The answer to a search: one page of hits, and how many documents the ranking holds in all.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Results {
    pub hits: Vec<Hit>,
    /// How many hits paging can reach: in keyword mode the documents that match a query term
    /// (and the filter), in semantic mode every document with a vector that passes the
    /// filter, in hybrid mode the union of both sides' candidates.
    pub total: usize,
    #[serde(skip)]
    pub timings: Timings,
}

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("unknown search mode \"{0}\": expected keyword, semantic or hybrid")]
    UnknownMode(String),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("invalid fusion settings in {origin}: {message}")]
    InvalidFusion { origin: String, message: String },
    #[error(
        "collection \"{collection}\" has a vector for document {id} but no such document; \
         it may be changing under this search (retry), else compact it"
    )]
    Inconsistent { collection: String, id: String },
    #[error("vector: {0}")]
    InvalidVector(String),
    #[error("searching {collection}: {source}")]
    Tantivy { collection: String, source: tantivy::TantivyError },
    #[error("query \"{id}\": {source}")]
    InQuery { id: String, source: Box<SearchError> },
    #[error("{param}: {message}")]
    InvalidTuning { param: &'static str, message: String },
    #[error("expansion_weight {0}")]
    InvalidExpansionWeight(String),
}

/// The query's vector: the request's own (at unit length), else its text embedded by the
/// collection's model; None when it has neither (a query with no text has no hits). The time
/// taken goes to `timings.encode`.
pub(crate) fn query_vector(
    collection: &Collection,
    request: &SearchRequest,
    timings: &mut Timings,
) -> Result<Option<Vec<f32>>, SearchError> {
    let started = std::time::Instant::now();
    let vector = match &request.vector {
        Some(vector) => {
            let semantic = collection
                .manifest()
                .semantic
                .as_ref()
                .ok_or_else(|| IndexError::NoModel(collection.name().to_string()))?;
            let unit = cloze_index::unit_vector(vector.clone(), semantic.dimension())
                .map_err(SearchError::InvalidVector)?;
            Some(unit)
        }
        None if request.query.trim().is_empty() => None,
        None => Some(collection.encoder()?.encode(&[&request.query])?.remove(0)),
    };
    timings.encode = started.elapsed();
    Ok(vector)
}

/// Gives each hit (found in `collection` by any search) its title, snippet and metadata for
/// `request`'s query: for a ranking made elsewhere, such as across partitions.
pub fn fill_documents(
    collection: &Collection,
    hits: &mut [Hit],
    request: &SearchRequest,
) -> Result<(), SearchError> {
    semantic::fill_documents_by_id(collection, hits, request)
}

/// Runs one search against the committed documents of `collection`. A query with no searchable
/// terms (empty, or only stop words) has no hits.
pub fn search(collection: &Collection, request: &SearchRequest) -> Result<Results, SearchError> {
    match request.mode {
        Mode::Keyword => keyword::search(collection, request),
        Mode::Semantic => semantic::search(collection, request),
        Mode::Hybrid => hybrid::search(collection, request),
    }
}
