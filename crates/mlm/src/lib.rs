//! Masked language model pre-training: the encoder that Cloze learns from a user's own text.
//!
//! [`BertForMaskedLm`] is a BERT encoder with its MLM head in Hugging Face's layout;
//! [`Masker`] implements the cloze objective; [`mlm_loss`] ties them together.

pub mod allocator;
mod checkpoint;
mod config;
mod contrastive;
pub mod cpu;
mod data;
mod embed;
mod kernels;
mod masking;
mod model;
mod optim;
mod tokenizer;
mod train;

pub use checkpoint::{load, load_config, save, CheckpointError, CONFIG_FILE, WEIGHTS_FILE};
pub use config::BertConfig;
pub use contrastive::{contrastive_loss, crop_pairs, ContrastiveSettings, CropBatch};
pub use data::{pack, read_texts, tokenize, DataError, Packing};
pub use embed::{EmbedError, Embedder, Pooling, DEFAULT_BATCH_SIZE, TOKEN_WEIGHTS_FILE};
pub use masking::{MaskedBatch, MaskedSequence, Masker};
pub use model::{BertForMaskedLm, Parameters};
pub use optim::{AdamW, AdamWSettings};
pub use tokenizer::{
    continuation_ids, load_tokenizer, save_tokenizer, train_wordpiece, SpecialIds, TokenizerError,
    SPECIAL_TOKENS, TOKENIZER_FILE,
};
pub use tokenizers::Tokenizer;
pub use train::{
    epoch_order, learning_rate, train, Evaluation, Event, ModelShape, Schedule, TokenizerSettings,
    TrainConfig, TrainError, TrainOptions, TrainingSettings,
};

use candle_core::{Result, Tensor};
use rand_chacha::ChaCha8Rng;

/// The masked-token loss of a batch: cross-entropy over the whole vocabulary, averaged over
/// the chosen positions only. Dropout is on when a generator is given. Returns the loss and the
/// logits at the chosen positions (`[n, vocab]`), for accuracy.
pub fn mlm_loss(
    model: &BertForMaskedLm,
    batch: &MaskedBatch,
    rng: Option<&mut ChaCha8Rng>,
) -> Result<(Tensor, Tensor)> {
    let hidden = model.encode(&batch.input_ids, &batch.attention_mask, rng)?;
    let (rows, length, size) = hidden.dims3()?;
    let chosen = hidden.reshape((rows * length, size))?.index_select(&batch.positions, 0)?;
    let logits = model.mlm_logits(&chosen)?;
    let loss = crate::kernels::cross_entropy(&logits, &batch.labels)?;
    Ok((loss, logits))
}
