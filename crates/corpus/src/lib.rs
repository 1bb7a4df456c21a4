//! Readers for the text that goes into Cloze: document collections and query files.
//!
//! Every reader streams line by line, accepts plain or gzip-compressed files (detected from the
//! content, not the name), and reports a bad line with the file and line number, so a person can
//! open the file at the right place. Nothing here knows about indexes or models: this crate is the
//! bottom layer that every later stage reads through.

mod bulk;
mod documents;
mod error;
mod lines;
mod queries;
mod sample;

pub use bulk::{parse_bulk, BulkAction, BulkLineError};
pub use documents::{Document, DocumentReader, FieldMapping};
pub use error::{CorpusError, ErrorKind};
pub use lines::TextLines;
pub use queries::{read_queries, Query};
pub use sample::{sample_documents, SAMPLE_COLLECTION, SAMPLE_JSONL};
