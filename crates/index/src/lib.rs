//! Collections on disk: documents in a tantivy BM25 index and, for a collection with a model,
//! their vectors in an HNSW graph, described by a manifest.
//!
//! Vectors live in segments (see the vectors module): a write adds what it writes, and merges
//! in the background build the graphs searches walk.
//!
//! A collection is created with an analyzer and optionally a model, fixed for its life
//! (documents and queries must be analysed and embedded alike), changed by all-or-nothing
//! ingests and deletes that reach both indexes together, and read by the search crate.

mod analyzer;
mod collection;
mod distance;
mod encoder;
mod error;
mod files;
mod flat_graph;
mod live_statistics;
mod manifest;
mod merge;
mod nearest;
mod quantized;
mod segment;
mod snapshot;
mod token_length;
mod vectors;

pub use analyzer::{analyze, AnalyzerSettings};
pub use collection::{
    unit_vector, Change, Collection, CompactSummary, DataDir, Fields, IngestSummary, Outcome,
    Scratch, WriteProgress,
};
pub use encoder::{Encoder, ModelRecord};
pub use error::IndexError;
pub use manifest::{
    ExpansionSettings, FusionSettings, HnswSettings, Manifest, SemanticSettings, FORMAT_VERSION,
    MAX_DIMENSION, MAX_EXPANSION_NEIGHBOURS,
};
pub use merge::{BuiltMerge, MergePlan};
pub use nearest::Neighbour;
pub use snapshot::{SnapshotInfo, SNAPSHOT_FILE};
pub use vectors::VectorIndex;
