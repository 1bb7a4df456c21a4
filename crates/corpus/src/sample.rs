//! A small collection to try Cloze with, so that a new user has something to search within a
//! minute, as Meilisearch's movies sample gives: 36 short articles on the solar system, written
//! for Cloze and given to the public domain (CC0 1.0). Keyword search needs nothing else.

use crate::{CorpusError, DocumentReader, FieldMapping};

/// The name the sample collection gets unless a user picks another.
pub const SAMPLE_COLLECTION: &str = "sample";

/// The sample's documents as JSONL (`_id`, `title`, `text`), the layout of BEIR's
/// `corpus.jsonl`, which `_bulk` also takes line by line.
pub const SAMPLE_JSONL: &str = include_str!("../sample/solar-system.jsonl");

/// The sample's documents, read as any corpus file is.
pub fn sample_documents() -> Result<DocumentReader, CorpusError> {
    DocumentReader::from_reader(
        "the sample collection",
        SAMPLE_JSONL.as_bytes(),
        FieldMapping::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_document_has_an_id_a_title_and_text() {
        let documents: Vec<_> = sample_documents().unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(documents.len(), 36);
        assert!(documents
            .iter()
            .all(|d| !d.id.is_empty() && !d.title.is_empty() && !d.text.is_empty()));
        assert!(SAMPLE_JSONL.len() < 1 << 20);
    }
}
