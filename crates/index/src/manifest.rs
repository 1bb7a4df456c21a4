//! The manifest: what a collection is, in one small JSON file beside its indexes.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::analyzer::AnalyzerSettings;
use crate::error::IndexError;

/// The collection layout this build writes; it opens this version and older ones.
pub const FORMAT_VERSION: u32 = 1;

pub(crate) const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub analyzer: AnalyzerSettings,
    /// Live documents at the last ingest; the tantivy index is the authority if they disagree.
    pub document_count: u64,
}

impl Manifest {
    pub(crate) fn new(analyzer: AnalyzerSettings) -> Manifest {
        Manifest { format_version: FORMAT_VERSION, analyzer, document_count: 0 }
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
            .map_err(|message| IndexError::InvalidManifest { path, message })?;
        Ok(manifest)
    }

    /// Replaces the manifest atomically: a reader sees the old one or the new one, never a part.
    pub(crate) fn save(&self, collection_dir: &Path) -> Result<(), IndexError> {
        let path = Self::path(collection_dir);
        let temporary = collection_dir.join(format!(".{MANIFEST_FILE}.tmp"));
        let io_error = |source| IndexError::Io { path: path.clone(), source };
        let mut json = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        json.push(b'\n');
        let mut file = std::fs::File::create(&temporary).map_err(io_error)?;
        file.write_all(&json).map_err(io_error)?;
        file.sync_all().map_err(io_error)?;
        std::fs::rename(&temporary, &path).map_err(io_error)?;
        Ok(())
    }
}
