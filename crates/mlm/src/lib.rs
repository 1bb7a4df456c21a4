//! Masked language model pre-training: the encoder that Cloze learns from a user's own text.
//!
//! [`BertForMaskedLm`] is a BERT encoder with its MLM head in Hugging Face's layout; [`train`]
//! trains it on a user's text with the cloze objective (and, optionally, contrastive steps) and
//! writes a checkpoint that [`Embedder`] loads to embed documents and queries, and whose MLM head
//! [`Expander`] reads to predict the words a document leaves out.

pub mod allocator;
mod bottleneck;
mod checkpoint;
mod config;
mod contrastive;
pub mod cpu;
mod data;
mod embed;
mod expand;
mod held_out;
mod kernels;
mod masking;
mod model;
mod neighbours;
mod optim;
mod tokenizer;
mod train;

pub use checkpoint::{load, save, CheckpointError, WEIGHTS_FILE};
pub use config::BertConfig;
pub use contrastive::ContrastiveSettings;
pub use embed::{EmbedError, Embedder, Pooling, DEFAULT_BATCH_SIZE, TOKEN_WEIGHTS_FILE};
pub use expand::{Expander, ExpansionTerm};
pub use held_out::{HeldOutDocument, HeldOutDocuments, HeldOutError, HELD_OUT_FILE};
pub use model::BertForMaskedLm;
pub use tokenizer::{load_tokenizer, save_tokenizer, train_wordpiece, TokenizerError};
pub use train::{
    train, Evaluation, Event, ModelShape, Schedule, TokenizerSettings, TrainConfig, TrainError,
    TrainOptions, TrainingSettings,
};

/// The steps of training, one by one, for the reference benchmarks and tests that compare
/// them with PyTorch's and check their gradients. Not part of the API: they change as training
/// does.
#[doc(hidden)]
pub mod reference {
    pub use crate::data::{pack, read_texts, tokenize};
    pub use crate::masking::{mlm_loss, MaskedBatch, Masker};
    pub use crate::optim::{AdamW, AdamWSettings};
    pub use crate::tokenizer::SpecialIds;
    pub use crate::train::epoch_order;
}
