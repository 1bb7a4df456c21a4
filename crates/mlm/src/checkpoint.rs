//! Checkpoints in the Hugging Face layout: `config.json` and `model.safetensors`.
//!
//! The weights carry `BertForMaskedLM`'s names. The tied decoder is also written under its own
//! names (`cls.predictions.decoder.weight` / `.bias`), as copies, because loaders that do not
//! know about tying (candle-transformers among them) look for them there.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rand_chacha::ChaCha8Rng;

use crate::config::BertConfig;
use crate::model::BertForMaskedLm;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Tensor { path: PathBuf, source: candle_core::Error },
}

/// Writes `config.json` and `model.safetensors` for `model` into `dir` (created if needed).
pub fn save(model: &BertForMaskedLm, dir: &Path) -> Result<(), CheckpointError> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CheckpointError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let config_path = dir.join(CONFIG_FILE);
    let json =
        serde_json::to_string_pretty(&model.config().to_hf_json()).expect("config serializes");
    std::fs::write(&config_path, json + "\n").map_err(io_error(&config_path))?;

    let mut tensors: HashMap<String, Tensor> = model
        .parameters()
        .iter()
        .map(|(name, var)| (name.to_string(), var.as_tensor().clone()))
        .collect();
    for (tied, source) in [
        ("cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"),
        ("cls.predictions.decoder.bias", "cls.predictions.bias"),
    ] {
        let tensor = tensors[source].clone();
        tensors.insert(tied.to_string(), tensor);
    }
    let weights_path = dir.join(WEIGHTS_FILE);
    candle_core::safetensors::save(&tensors, &weights_path)
        .map_err(|source| CheckpointError::Tensor { path: weights_path, source })
}

/// Reads `config.json` from a model folder.
pub fn load_config(dir: &Path) -> Result<BertConfig, CheckpointError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|source| CheckpointError::Io { path: path.clone(), source })?;
    let config: BertConfig = serde_json::from_str(&text)
        .map_err(|e| CheckpointError::Invalid { path: path.clone(), message: e.to_string() })?;
    config.validate().map_err(|message| CheckpointError::Invalid { path, message })?;
    Ok(config)
}

/// Loads a BERT checkpoint from a Hugging Face model folder. Names with a `bert.` prefix
/// (`BertForMaskedLM`) and without (`BertModel`, as sentence-transformers ships) are both read;
/// a checkpoint without an MLM head gets a fresh one, tied to its embeddings, initialised from
/// `rng`.
pub fn load(
    dir: &Path,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> Result<BertForMaskedLm, CheckpointError> {
    let (config, tensors) = load_tensors(dir, device)?;
    let path = dir.join(WEIGHTS_FILE);
    BertForMaskedLm::build(&config, &tensors, rng, device)
        .map_err(|source| CheckpointError::Tensor { path, source })
}

/// Loads a checkpoint that must have its MLM head, for what predicts words with it.
pub(crate) fn load_masked_lm(
    dir: &Path,
    device: &Device,
) -> Result<BertForMaskedLm, CheckpointError> {
    let (config, tensors) = load_tensors(dir, device)?;
    let path = dir.join(WEIGHTS_FILE);
    if !tensors.contains_key("cls.predictions.transform.dense.weight") {
        return Err(CheckpointError::Invalid {
            path,
            message: "no MLM head (cls.predictions.*): the model cannot predict words".to_string(),
        });
    }
    // Every tensor is loaded, so the generator initialises nothing.
    let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    BertForMaskedLm::build(&config, &tensors, &mut rng, device)
        .map_err(|source| CheckpointError::Tensor { path, source })
}

/// A checkpoint's config and tensors, under Hugging Face's `BertForMaskedLM` names.
fn load_tensors(
    dir: &Path,
    device: &Device,
) -> Result<(BertConfig, HashMap<String, Tensor>), CheckpointError> {
    let config = load_config(dir)?;
    let path = dir.join(WEIGHTS_FILE);
    let tensor_error = |source| CheckpointError::Tensor { path: path.clone(), source };
    let raw = candle_core::safetensors::load(&path, device).map_err(tensor_error)?;
    let tensors: HashMap<String, Tensor> = raw
        .into_iter()
        .map(|(name, tensor)| {
            let name = if name.starts_with("bert.") || name.starts_with("cls.") {
                name
            } else {
                format!("bert.{name}")
            };
            (name.replace(".gamma", ".weight").replace(".beta", ".bias"), tensor)
        })
        .collect();
    if !tensors.contains_key("bert.embeddings.word_embeddings.weight") {
        return Err(CheckpointError::Invalid {
            path,
            message: "no BERT word embeddings (bert.embeddings.word_embeddings.weight)".to_string(),
        });
    }
    Ok((config, tensors))
}
