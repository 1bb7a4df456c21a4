//! Collections on disk: documents in a tantivy BM25 index, described by a manifest.
//!
//! A collection is created with an analyzer that is fixed for its life (documents and queries
//! must be analysed alike), fed documents in all-or-nothing ingests, and read through tantivy
//! searchers by the search crate.

mod analyzer;
mod collection;
mod error;
mod manifest;
mod token_length;

pub use analyzer::{analyze, AnalyzerSettings};
pub use collection::{Collection, DataDir, Fields, IngestSummary};
pub use error::IndexError;
pub use manifest::{Manifest, FORMAT_VERSION};
