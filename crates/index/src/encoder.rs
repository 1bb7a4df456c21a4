//! The encoder of a collection: a model folder, identified by a hash of its weights so that a
//! collection never mixes vectors of two models.

use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::Device;
use cloze_mlm::{Embedder, HeldOutDocuments, WEIGHTS_FILE};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::IndexError;

/// What a collection records of its model: enough to refuse another one and to describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRecord {
    /// The model folder, absolute.
    pub path: PathBuf,
    /// SHA-256 of `model.safetensors`, hex.
    pub weights_sha256: String,
    pub dimension: usize,
    /// "mean" or "cls".
    pub pooling: String,
    /// Tokens per text (or per window) at most.
    pub max_len: usize,
}

/// A loaded model that turns documents and queries into unit vectors.
pub struct Encoder {
    embedder: Embedder,
    record: ModelRecord,
    held_out: Option<HeldOutDocuments>,
}

impl Encoder {
    /// Loads a model folder (`config.json`, `model.safetensors`, `tokenizer.json`, and the
    /// sentence-transformers settings when present) on the CPU.
    pub fn load(dir: &Path) -> Result<Encoder, IndexError> {
        let path = std::path::absolute(dir)
            .map_err(|source| IndexError::Io { path: dir.to_path_buf(), source })?;
        let embedder = Embedder::load(&path, &Device::Cpu)
            .map_err(|source| IndexError::Model { path: path.clone(), source: Box::new(source) })?;
        let record = ModelRecord {
            weights_sha256: weights_sha256(&path)?,
            dimension: embedder.dimension(),
            pooling: embedder.pooling().name().to_string(),
            max_len: embedder.max_len(),
            path,
        };
        let held_out = HeldOutDocuments::read(&record.path)?;
        Ok(Encoder { embedder, record, held_out })
    }

    pub fn record(&self) -> &ModelRecord {
        &self.record
    }

    /// The documents the model lists as left out of its training, when it lists any.
    pub fn held_out(&self) -> Option<&HeldOutDocuments> {
        self.held_out.as_ref()
    }

    /// Texts per forward pass.
    pub fn with_batch_size(mut self, batch_size: usize) -> Encoder {
        self.embedder = self.embedder.with_batch_size(batch_size);
        self
    }

    /// One vector per text, each text truncated to the model's length.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, IndexError> {
        self.embedder.embed(texts).map_err(|source| self.error(source))
    }

    /// One vector per overlapping window of each text, windows of `length` tokens at most.
    pub fn encode_windows(
        &self,
        texts: &[&str],
        length: usize,
        overlap: usize,
    ) -> Result<Vec<Vec<Vec<f32>>>, IndexError> {
        self.embedder.embed_windows(texts, length, overlap).map_err(|source| self.error(source))
    }

    fn error(&self, source: cloze_mlm::EmbedError) -> IndexError {
        IndexError::Model { path: self.record.path.clone(), source: Box::new(source) }
    }
}

/// The hash that identifies a model: its weights, read in full.
fn weights_sha256(dir: &Path) -> Result<String, IndexError> {
    let path = dir.join(WEIGHTS_FILE);
    let io_error = |source| IndexError::Io { path: path.clone(), source };
    let mut file = std::fs::File::open(&path).map_err(io_error)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer).map_err(io_error)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex(&hasher.finalize()))
}

/// A digest as lowercase hex, as `sha256sum` prints it.
pub(crate) fn hex(digest: &[u8]) -> String {
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}
