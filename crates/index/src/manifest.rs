//! The manifest: what a collection is, in one small JSON file beside its indexes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::analyzer::AnalyzerSettings;
use crate::encoder::ModelRecord;
use crate::error::IndexError;

/// The collection layout this build writes; it opens this version and older ones.
/// 2: optional vectors (`semantic`) beside the keyword index.
/// 3: vectors in segments; vectors given with the documents (`semantic.dimension`, no model).
pub const FORMAT_VERSION: u32 = 3;

pub(crate) const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub analyzer: AnalyzerSettings,
    /// Live documents at the last ingest; the tantivy index is the authority if they disagree.
    pub document_count: u64,
    /// The model and vector index settings of a collection that also answers semantic
    /// searches; fixed when the collection is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semantic: Option<SemanticSettings>,
    /// The hybrid fusion searches use unless they ask for another (saved by `cloze tune
    /// --save`); the search crate interprets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fusion: Option<FusionSettings>,
}

/// Hybrid fusion settings, the one shape they take wherever they are given: a collection's
/// manifest, a search request's `fusion` object, the command line's flags. Any may be missing;
/// `cloze_search::Fusion::from_settings`, the one place they are checked, fills in the rest.
/// The manifest keeps them complete, as `cloze tune --save` chose them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
// As flags, each keeps an id of its own ("fusion.NAME"), so a command's other flags may share
// the names.
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(deny_unknown_fields)]
pub struct FusionSettings {
    /// Hybrid mode: rrf (reciprocal rank fusion) or convex (a weighted sum of normalised
    /// scores) [default: the collection's saved fusion, else convex as tuned on SciFact's
    /// training queries; rrf when its k is given; `cloze tune` finds the best for your
    /// judgments].
    #[cfg_attr(feature = "clap", arg(id = "fusion.method", long = "fusion", value_name = "METHOD", value_parser = ["rrf", "convex"]))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Hybrid mode, rrf: the constant k in 1 / (k + rank) [default: 60].
    #[cfg_attr(feature = "clap", arg(id = "fusion.k", long = "rrf-k", value_name = "K"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<f64>,
    /// Hybrid mode, convex: the semantic side's weight, 0 to 1 (keyword gets 1 - alpha).
    #[cfg_attr(feature = "clap", arg(id = "fusion.alpha", long = "alpha", value_name = "ALPHA"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Hybrid mode, convex: how scores are normalised: min-max, z-score or theoretical.
    #[cfg_attr(
        feature = "clap",
        arg(id = "fusion.normalization", long = "normalization", value_name = "NAME")
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalization: Option<String>,
    /// Hybrid mode: candidates each side retrieves before fusing.
    #[cfg_attr(
        feature = "clap",
        arg(id = "fusion.depth", long = "depth-per-side", value_name = "N")
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<usize>,
    /// Hybrid mode: pseudo-relevance feedback. The semantic query moves toward the mean vector
    /// of this many of the best keyword hits, and every keyword candidate gets a semantic
    /// score [default: none].
    #[cfg_attr(
        feature = "clap",
        arg(id = "fusion.feedback_docs", long = "feedback-docs", value_name = "N")
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback_docs: Option<usize>,
    /// Hybrid mode, with feedback docs: the weight of their mean vector [default: 1].
    #[cfg_attr(
        feature = "clap",
        arg(
            id = "fusion.feedback_weight",
            long = "feedback-weight",
            value_name = "WEIGHT",
            requires = "fusion.feedback_docs"
        )
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback_weight: Option<f64>,
}

impl FusionSettings {
    /// True when no setting is given: the search uses the collection's default.
    pub fn is_empty(&self) -> bool {
        *self == FusionSettings::default()
    }
}

/// How a collection's documents become vectors and how the vectors are searched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SemanticSettings {
    /// The model that embeds documents and queries; without one, documents bring their own
    /// vectors and searches their query vectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelRecord>,
    /// The length of the vectors of a collection without a model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimension: Option<usize>,
    /// Documents longer than the model's length are cut into windows that overlap by this many
    /// tokens, one vector each, and a document scores by its best window. Without it they are
    /// truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_overlap: Option<usize>,
    /// Tokens per window, [CLS] and [SEP] included, when shorter than the model's length
    /// (only with `window_overlap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_length: Option<usize>,
    pub hnsw: HnswSettings,
    /// Each document's keyword entry also holds the text of its nearest documents by vector,
    /// weighted below its own (see [`ExpansionSettings`]). Without it, keyword search reads the
    /// document alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expansion: Option<ExpansionSettings>,
}

/// Document expansion by neighbours: when a document is written, the text of the documents
/// whose vectors lie nearest its own goes into a second keyword field, which BM25 scores
/// beside the document's own text at a fraction of its weight. A document then matches the
/// words its neighbours use for the same thing, and a short one gets the vocabulary it lacks
/// (cluster-based smoothing, after Tao et al., 2006). The vectors choose the neighbours, so a
/// collection's encoder helps keyword search too.
///
/// A document's neighbours are those present when it is written; a later write expands again
/// the earlier documents near what it writes or removes, so a collection fed in many writes
/// expands about as one indexed at once.
///
/// The weight only scales scores, so it can change after creation: a search can ask for another
/// (`SearchRequest::expansion_weight`), and tuning can save a new default.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpansionSettings {
    /// How many nearest documents lend their text.
    pub neighbours: usize,
    /// The weight of a match in the neighbours' text, against 1 for the document's own; 0
    /// keeps the neighbours' text indexed but leaves it out of the scores.
    pub weight: f64,
}

/// The best of the neighbours (5, 10, 20) and weights (0.2 to 0.7) tried on SciFact's training
/// judgments (docs/results.md).
impl Default for ExpansionSettings {
    fn default() -> ExpansionSettings {
        ExpansionSettings { neighbours: 5, weight: 0.4 }
    }
}

/// More neighbours than this make each keyword entry many documents long.
pub const MAX_EXPANSION_NEIGHBOURS: usize = 100;
/// A larger weight would let the neighbours' text drown the document's own.
const MAX_EXPANSION_WEIGHT: f64 = 100.0;

impl ExpansionSettings {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_EXPANSION_NEIGHBOURS).contains(&self.neighbours) {
            return Err(format!(
                "expansion.neighbours is {}; it must be between 1 and {MAX_EXPANSION_NEIGHBOURS}",
                self.neighbours
            ));
        }
        ExpansionSettings::check_weight(self.weight)
            .map_err(|message| format!("expansion.weight {message}"))
    }

    /// Whether `weight` can weigh the neighbours' text; the message says why not.
    pub fn check_weight(weight: f64) -> Result<(), String> {
        if !(0.0..=MAX_EXPANSION_WEIGHT).contains(&weight) {
            return Err(format!("is {weight}; it must be between 0 and {MAX_EXPANSION_WEIGHT}"));
        }
        Ok(())
    }
}

/// The longest vectors a collection without a model takes (Elasticsearch's `dense_vector`
/// limit).
pub const MAX_DIMENSION: usize = 4096;

impl SemanticSettings {
    /// The settings of a collection whose documents bring vectors of `dimension` values.
    pub fn with_dimension(dimension: usize, hnsw: HnswSettings) -> SemanticSettings {
        SemanticSettings {
            model: None,
            dimension: Some(dimension),
            window_overlap: None,
            window_length: None,
            hnsw,
            expansion: None,
        }
    }

    /// The length of the collection's vectors.
    pub fn dimension(&self) -> usize {
        self.model.as_ref().map_or(self.dimension.unwrap_or(0), |model| model.dimension)
    }

    /// Tokens per window, [CLS] and [SEP] included.
    pub fn window_length(&self) -> usize {
        self.window_length.unwrap_or(self.model.as_ref().map_or(0, |model| model.max_len))
    }

    /// Checks the settings of a new collection, naming the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        self.hnsw.validate()?;
        if let Some(expansion) = &self.expansion {
            expansion.validate()?;
        }
        let Some(model) = &self.model else {
            return match self.dimension {
                _ if self.window_overlap.is_some() || self.window_length.is_some() => Err(
                    "window_overlap and window_length need a model to cut documents into windows"
                        .to_string(),
                ),
                Some(dimension) if (1..=MAX_DIMENSION).contains(&dimension) => Ok(()),
                Some(dimension) => Err(format!(
                    "dimension is {dimension}; it must be between 1 and {MAX_DIMENSION}"
                )),
                None => Err("a collection with vectors needs a model or a dimension".to_string()),
            };
        };
        if self.dimension.is_some_and(|dimension| dimension != model.dimension) {
            return Err(format!(
                "dimension is {}, but the model's vectors have {}",
                self.dimension.unwrap_or_default(),
                model.dimension
            ));
        }
        let length = self.window_length();
        if self.window_length.is_some() && self.window_overlap.is_none() {
            return Err("window_length needs window_overlap (windows are off)".to_string());
        }
        if length < 3 || length > model.max_len {
            return Err(format!(
                "window_length is {length}; it must be between 3 ([CLS], [SEP] and one token) \
                 and the model's length, {}",
                model.max_len
            ));
        }
        match self.window_overlap {
            Some(overlap) if overlap >= length - 2 => Err(format!(
                "window_overlap is {overlap}; it must be below the {} tokens a window of \
                 {length} holds besides [CLS] and [SEP]",
                length - 2
            )),
            _ => Ok(()),
        }
    }
}

/// HNSW graph settings (the names of the paper and of most engines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HnswSettings {
    /// Links per point and layer: more is better recall, more memory and slower inserts.
    pub m: usize,
    /// Candidates considered when linking a new point.
    pub ef_construction: usize,
    /// Candidates considered per search, unless a query asks for another number.
    pub ef_search: usize,
}

/// ef_search 400: on a million 128-dimensional vectors of a small encoder, 200 candidates found
/// 0.92 of the exact top 10 (hnswlib's graph 0.92 too) and 400 found 0.96 (benches/scale.rs); a
/// small collection pays a fraction of a millisecond for it, and a query can still ask for fewer.
impl Default for HnswSettings {
    fn default() -> HnswSettings {
        HnswSettings { m: 16, ef_construction: 200, ef_search: 400 }
    }
}

impl HnswSettings {
    pub fn validate(&self) -> Result<(), String> {
        if !(2..=255).contains(&self.m) {
            return Err(format!("m is {}; it must be between 2 and 255", self.m));
        }
        if self.ef_construction == 0 || self.ef_search == 0 {
            return Err("ef_construction and ef_search must be at least 1".to_string());
        }
        Ok(())
    }
}

impl Manifest {
    pub(crate) fn new(analyzer: AnalyzerSettings, semantic: Option<SemanticSettings>) -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            analyzer,
            document_count: 0,
            semantic,
            fusion: None,
        }
    }

    pub(crate) fn path(collection_dir: &Path) -> PathBuf {
        collection_dir.join(MANIFEST_FILE)
    }

    pub(crate) fn load(collection_dir: &Path) -> Result<Manifest, IndexError> {
        let path = Self::path(collection_dir);
        let text = std::fs::read_to_string(&path)
            .map_err(|source| IndexError::Io { path: path.clone(), source })?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| {
            IndexError::InvalidManifest { path: path.clone(), message: e.to_string() }
        })?;
        if manifest.format_version > FORMAT_VERSION {
            return Err(IndexError::UnsupportedFormat {
                path,
                found: manifest.format_version,
                supported: FORMAT_VERSION,
            });
        }
        manifest
            .analyzer
            .validate()
            .and_then(|()| manifest.semantic.as_ref().map_or(Ok(()), SemanticSettings::validate))
            .map_err(|message| IndexError::InvalidManifest { path, message })?;
        Ok(manifest)
    }

    /// Replaces the manifest atomically: a reader sees the old one or the new one, never a part,
    /// and after a crash the one last saved.
    pub(crate) fn save(&self, collection_dir: &Path) -> Result<(), IndexError> {
        let temporary = collection_dir.join(format!(".{MANIFEST_FILE}.tmp"));
        let mut json = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        json.push(b'\n');
        crate::files::write_synced(&temporary, &json)?;
        crate::files::rename_synced(&temporary, &Self::path(collection_dir))
    }
}
