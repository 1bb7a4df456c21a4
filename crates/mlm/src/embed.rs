//! Text in, one L2-normalised vector out: what indexing and semantic search need from a model.
//!
//! The settings come from the model folder as sentence-transformers reads them, not from one
//! file: all-MiniLM-L6-v2's `tokenizer.json` says "truncate at 128, pad to 128", but its
//! `sentence_bert_config.json` says 256 tokens, and sentence-transformers pads each batch to its
//! longest text. So: `max_seq_length` from `sentence_bert_config.json`, else the tokenizer's
//! truncation, else the model's position limit; padding to the longest in the batch; pooling
//! from `1_Pooling/config.json` (mean by default).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::checkpoint::{self, CheckpointError};
use crate::model::BertForMaskedLm;
use crate::tokenizer::{self, SpecialIds, TokenizerError};

/// How token vectors become one text vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over the text's tokens (padding excluded).
    Mean,
    /// The `[CLS]` token's vector.
    Cls,
}

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("{path}: {message}")]
    Settings { path: PathBuf, message: String },
    #[error("tokenizing: {0}")]
    Tokenize(String),
    #[error("model: {0}")]
    Model(#[from] candle_core::Error),
}

pub struct Embedder {
    model: BertForMaskedLm,
    tokenizer: Tokenizer,
    max_len: usize,
    pooling: Pooling,
    device: Device,
}

/// Reads an optional JSON settings file of the model folder.
fn read_json(path: &Path) -> Result<Option<serde_json::Value>, EmbedError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| EmbedError::Settings { path: path.to_path_buf(), message: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EmbedError::Settings { path: path.to_path_buf(), message: e.to_string() }),
    }
}

impl Embedder {
    /// Loads a model folder: `config.json`, `model.safetensors`, `tokenizer.json`, and the
    /// sentence-transformers settings when present.
    pub fn load(dir: &Path, device: &Device) -> Result<Embedder, EmbedError> {
        // The MLM head, if the checkpoint has none, is never used here: any seed will do.
        let model = checkpoint::load(dir, &mut ChaCha8Rng::seed_from_u64(0), device)?;
        let mut tokenizer = tokenizer::load_tokenizer(dir)?;
        let limit = model.config().max_position_embeddings;
        let sentence_bert = read_json(&dir.join("sentence_bert_config.json"))?;
        let max_len = sentence_bert
            .as_ref()
            .and_then(|s| s["max_seq_length"].as_u64())
            .map(|n| n as usize)
            .or_else(|| tokenizer.get_truncation().map(|t| t.max_length))
            .unwrap_or(limit)
            .min(limit);
        let pooling_path = dir.join("1_Pooling").join("config.json");
        let pooling = match read_json(&pooling_path)? {
            Some(settings) if settings["pooling_mode_cls_token"].as_bool() == Some(true) => {
                Pooling::Cls
            }
            Some(settings) if settings["pooling_mode_mean_tokens"].as_bool() == Some(false) => {
                return Err(EmbedError::Settings {
                    path: pooling_path,
                    message: "only mean and [CLS] pooling are supported".to_string(),
                })
            }
            _ => Pooling::Mean,
        };
        let special = SpecialIds::of(&tokenizer)?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..TruncationParams::default()
            }))
            .map_err(|e| EmbedError::Tokenize(e.to_string()))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id: special.pad,
            pad_token: "[PAD]".to_string(),
            ..PaddingParams::default()
        }));
        Ok(Embedder { model, tokenizer, max_len, pooling, device: device.clone() })
    }

    pub fn with_pooling(mut self, pooling: Pooling) -> Embedder {
        self.pooling = pooling;
        self
    }

    /// Tokens per text at most, special tokens included; longer texts are truncated.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    pub fn dimension(&self) -> usize {
        self.model.config().hidden_size
    }

    /// One unit-length vector per text, in order. Texts are embedded as one batch: group texts
    /// of similar length to waste less on padding.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Tokenize(e.to_string()))?;
        let length = encodings[0].get_ids().len();
        let ids: Vec<u32> = encodings.iter().flat_map(|e| e.get_ids().iter().copied()).collect();
        let mask: Vec<u32> =
            encodings.iter().flat_map(|e| e.get_attention_mask().iter().copied()).collect();
        let ids = Tensor::from_vec(ids, (texts.len(), length), &self.device)?;
        let mask = Tensor::from_vec(mask, (texts.len(), length), &self.device)?;
        let hidden = self.model.encode(&ids, &mask, None)?;
        let pooled = match self.pooling {
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => {
                let weights = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
                let sum = hidden.broadcast_mul(&weights)?.sum(1)?;
                sum.broadcast_div(&weights.sum(1)?.clamp(1e-9, f64::MAX)?)?
            }
        };
        let norms = pooled.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        Ok(pooled.broadcast_div(&norms)?.to_vec2::<f32>()?)
    }
}
