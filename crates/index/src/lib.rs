//! Collections on disk: documents in a tantivy BM25 index and, for a collection with a model,
//! their vectors in an HNSW graph, described by a manifest.
//!
//! A collection is created with an analyzer and optionally a model, fixed for its life
//! (documents and queries must be analysed and embedded alike), changed by all-or-nothing
//! ingests and deletes that reach both indexes together, and read by the search crate.

mod analyzer;
mod collection;
mod encoder;
mod error;
mod files;
mod flat_graph;
mod manifest;
mod quantized;
mod snapshot;
mod token_length;
mod vectors;

pub use analyzer::{analyze, AnalyzerSettings};
pub use collection::{Change, Collection, CompactSummary, DataDir, Fields, IngestSummary, Outcome};
pub use encoder::{Encoder, ModelRecord};
pub use error::IndexError;
pub use manifest::{FusionSettings, HnswSettings, Manifest, SemanticSettings, FORMAT_VERSION};
pub use snapshot::{SnapshotInfo, SNAPSHOT_FILE};
pub use vectors::{Neighbour, VectorIndex};
