//! Documents a model was not trained on, listed beside it.
//!
//! Tuning with no judgments (pseudo-queries cut from a collection's own documents) rates an
//! encoder by how well it finds a document from a piece of it. On a document the encoder was
//! trained on, with that very task, it does better than it will on a real user's query, and
//! tuning then trusts it too much. A model that lists the documents it never saw lets tuning
//! draw its queries from those alone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The list of held-out documents in a model folder.
pub const HELD_OUT_FILE: &str = "held_out_documents.json";

/// One document left out of training: its id in its corpus, and a hash of its text (title and
/// text, as [`cloze_corpus::Document::searchable_text`] joins them), because ids repeat across
/// corpora and a document may change under the same id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldOutDocument {
    pub id: String,
    pub sha256: String,
}

impl HeldOutDocument {
    pub fn new(id: &str, searchable_text: &str) -> HeldOutDocument {
        HeldOutDocument { id: id.to_string(), sha256: text_sha256(searchable_text) }
    }
}

/// SHA-256 of a text, lowercase hex.
fn text_sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The documents a model folder lists as left out of its training, looked up by id and text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeldOutDocuments {
    /// Text hashes by id (a list: two corpora may both hold out a document of that id).
    by_id: HashMap<String, Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum HeldOutError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a list of held-out documents: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeldOutFile {
    documents: Vec<HeldOutDocument>,
}

impl HeldOutDocuments {
    pub fn new(documents: impl IntoIterator<Item = HeldOutDocument>) -> HeldOutDocuments {
        let mut by_id: HashMap<String, Vec<String>> = HashMap::new();
        for document in documents {
            by_id.entry(document.id).or_default().push(document.sha256);
        }
        HeldOutDocuments { by_id }
    }

    /// The list in model folder `dir`, or `None` when it has none.
    pub fn read(dir: &Path) -> Result<Option<HeldOutDocuments>, HeldOutError> {
        let path = dir.join(HELD_OUT_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(HeldOutError::Io { path, source }),
        };
        let file: HeldOutFile =
            serde_json::from_str(&text).map_err(|source| HeldOutError::Parse { path, source })?;
        Ok(Some(HeldOutDocuments::new(file.documents)))
    }

    /// Writes the list into model folder `dir`.
    pub fn write(documents: &[HeldOutDocument], dir: &Path) -> Result<(), HeldOutError> {
        let path = dir.join(HELD_OUT_FILE);
        let file = HeldOutFile { documents: documents.to_vec() };
        let text = serde_json::to_string(&file).expect("strings serialize");
        std::fs::write(&path, text).map_err(|source| HeldOutError::Io { path, source })
    }

    /// Whether a document of `id` was left out (of some corpus: [`Self::contains`] tells).
    pub fn lists(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// Whether the document of `id` with this title and text (joined as
    /// [`cloze_corpus::Document::searchable_text`] joins them) was left out.
    pub fn contains(&self, id: &str, searchable_text: &str) -> bool {
        self.by_id.get(id).is_some_and(|hashes| hashes.contains(&text_sha256(searchable_text)))
    }

    pub fn len(&self) -> usize {
        self.by_id.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_is_known_by_its_id_and_its_text() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(HeldOutDocuments::read(dir.path()).unwrap(), None);
        let listed = [HeldOutDocument::new("1", "T\nbody"), HeldOutDocument::new("1", "other")];
        HeldOutDocuments::write(&listed, dir.path()).unwrap();
        let held_out = HeldOutDocuments::read(dir.path()).unwrap().unwrap();
        assert_eq!(held_out.len(), 2);
        assert!(held_out.contains("1", "T\nbody") && held_out.contains("1", "other"));
        // Another corpus's document 1, or document 1 since changed, was trained on.
        assert!(!held_out.contains("1", "T\nbody changed"));
        assert!(!held_out.contains("2", "T\nbody"));
        assert!(held_out.lists("1") && !held_out.lists("2"));

        std::fs::write(dir.path().join(HELD_OUT_FILE), "{\"documents\": [{\"id\": 1}]}").unwrap();
        let error = HeldOutDocuments::read(dir.path()).unwrap_err().to_string();
        assert!(error.contains(HELD_OUT_FILE) && error.contains("invalid type"), "{error}");
    }
}
