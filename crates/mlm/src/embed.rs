//! Text in, one L2-normalised vector out: what indexing and semantic search need from a model.
//!
//! The settings come from the model folder as sentence-transformers reads them, not from one
//! file: all-MiniLM-L6-v2's `tokenizer.json` says "truncate at 128, pad to 128", but its
//! `sentence_bert_config.json` says 256 tokens, and sentence-transformers pads each batch to its
//! longest text. So: `max_seq_length` from `sentence_bert_config.json`, else the tokenizer's
//! truncation, else the model's position limit; padding to the longest in the batch; pooling
//! from `1_Pooling/config.json` (mean by default), or, when the folder has
//! [`TOKEN_WEIGHTS_FILE`] (written by `cloze train` with `training.idf_pooling`), the mean
//! weighted by each token's inverse document frequency.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor, D};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokenizers::{Tokenizer, TruncationParams};

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
    /// The mean weighted by each token's inverse document frequency in the documents the model
    /// was trained on ([`TOKEN_WEIGHTS_FILE`]): a rare word says more about what a text is
    /// about than a common one, as in BM25, and an encoder trained without labels has not
    /// learnt to discount common words by itself.
    IdfMean,
}

/// The model folder's file of one weight per token id (a JSON array), for [`Pooling::IdfMean`].
pub const TOKEN_WEIGHTS_FILE: &str = "token_weights.json";

/// Each token's inverse document frequency over `documents` (token ids, special tokens left
/// out), `ln((n + 1) / (df + 1))`, for a vocabulary of `vocab_size`; the `special` tokens weigh 0,
/// since every text has them.
pub fn inverse_document_frequencies(
    documents: &[Vec<u32>],
    vocab_size: usize,
    special: &[u32],
) -> Vec<f32> {
    let mut frequencies = vec![0u32; vocab_size];
    let mut seen = vec![usize::MAX; vocab_size];
    for (index, document) in documents.iter().enumerate() {
        for &token in document {
            if let Some(last) = seen.get_mut(token as usize) {
                if *last != index {
                    *last = index;
                    frequencies[token as usize] += 1;
                }
            }
        }
    }
    let total = documents.len() as f32 + 1.0;
    let mut weights: Vec<f32> =
        frequencies.iter().map(|&df| (total / (df as f32 + 1.0)).ln()).collect();
    for &token in special {
        if let Some(weight) = weights.get_mut(token as usize) {
            *weight = 0.0;
        }
    }
    weights
}

impl Pooling {
    /// The name sentence-transformers' `1_Pooling/config.json` uses for it.
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::IdfMean => "idf-mean",
        }
    }
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
    /// Truncates at `max_len` and adds `[CLS]`/`[SEP]`, exactly as the model was trained.
    tokenizer: Tokenizer,
    special: SpecialIds,
    max_len: usize,
    pooling: Pooling,
    /// One weight per token id, when the folder has [`TOKEN_WEIGHTS_FILE`].
    token_weights: Option<Tensor>,
    batch_size: usize,
    device: Device,
    /// One-thread pools that embed batches side by side, made on first use.
    workers: OnceLock<Vec<rayon::ThreadPool>>,
}

/// Texts per forward pass by default: large enough to keep the matrix products busy.
pub const DEFAULT_BATCH_SIZE: usize = 32;

/// The most bytes one batch's attention scores (`rows x heads x length x length` floats) may
/// take: long texts go in smaller batches. Larger tensors are fresh memory maps that the kernel
/// must zero on every use, which cost more than the matrix products themselves; see
/// [`crate::allocator`].
const ATTENTION_BYTES: usize = 24 << 20;

/// A batch's sequence indices and their vectors.
type Embedded<'b> = (&'b [usize], Vec<Vec<f32>>);

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
        let weights_path = dir.join(TOKEN_WEIGHTS_FILE);
        let token_weights = match read_json(&weights_path)? {
            None => None,
            Some(value) => {
                let weights: Vec<f32> = serde_json::from_value(value).map_err(|e| {
                    EmbedError::Settings { path: weights_path.clone(), message: e.to_string() }
                })?;
                let vocab_size = model.config().vocab_size;
                if weights.len() != vocab_size {
                    return Err(EmbedError::Settings {
                        path: weights_path,
                        message: format!(
                            "{} token weights for a vocabulary of {vocab_size}",
                            weights.len()
                        ),
                    });
                }
                Some(Tensor::from_vec(weights, vocab_size, device)?)
            }
        };
        // A model trained for IDF pooling ranks far better with it than with a plain mean.
        let pooling = if token_weights.is_some() && pooling == Pooling::Mean {
            Pooling::IdfMean
        } else {
            pooling
        };
        let special = SpecialIds::of(&tokenizer)?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..TruncationParams::default()
            }))
            .map_err(|e| EmbedError::Tokenize(e.to_string()))?;
        // Batches are padded here, after sorting by length, not by the tokenizer.
        tokenizer.with_padding(None);
        Ok(Embedder {
            model,
            tokenizer,
            special,
            max_len,
            pooling,
            token_weights,
            batch_size: DEFAULT_BATCH_SIZE,
            device: device.clone(),
            workers: OnceLock::new(),
        })
    }

    /// Pools another way than the folder says; [`Pooling::IdfMean`] needs the folder's
    /// [`TOKEN_WEIGHTS_FILE`].
    pub fn with_pooling(mut self, pooling: Pooling) -> Result<Embedder, EmbedError> {
        if pooling == Pooling::IdfMean && self.token_weights.is_none() {
            return Err(EmbedError::Settings {
                path: PathBuf::from(TOKEN_WEIGHTS_FILE),
                message: "IDF pooling needs the model folder's token weights, which this model \
                          has not (train it with training.idf_pooling = true)"
                    .to_string(),
            });
        }
        self.pooling = pooling;
        Ok(self)
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

    /// Texts per forward pass (at least 1).
    pub fn with_batch_size(mut self, batch_size: usize) -> Embedder {
        self.batch_size = batch_size.max(1);
        self
    }

    /// One unit-length vector per text, in order; a text longer than [`Self::max_len`] tokens
    /// is truncated, as sentence-transformers does. Texts are embedded shortest first in
    /// batches, so each batch pads little; the results do not depend on the grouping.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.embed_reporting(texts, &|_| {})
    }

    /// [`Self::embed`], calling `on_embedded(n)` as each group of `n` texts is done, for a
    /// progress bar (from the threads doing the work, in no particular order).
    pub fn embed_reporting(
        &self,
        texts: &[&str],
        on_embedded: &(dyn Fn(usize) + Sync),
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Tokenize(e.to_string()))?;
        let sequences = encodings.into_iter().map(|e| e.get_ids().to_vec()).collect();
        self.embed_sequences(sequences, on_embedded)
    }

    /// Vectors for every part of each text: a text is cut into windows of at most `length`
    /// tokens ([CLS] and [SEP] included; [`Self::max_len`] when longer), each overlapping the
    /// one before by `overlap` tokens, so no part of a long text is lost to truncation. A text
    /// that fits in one window gets the vector [`Self::embed`] gives it when `length` is the
    /// model's.
    ///
    /// Windows shorter than the model's length suit an encoder trained on short crops: it
    /// ranks a passage of the length it learned on better than a long document's average.
    pub fn embed_windows(
        &self,
        texts: &[&str],
        length: usize,
        overlap: usize,
    ) -> Result<Vec<Vec<Vec<f32>>>, EmbedError> {
        let mut untruncated = self.tokenizer.clone();
        untruncated.with_truncation(None).map_err(|e| EmbedError::Tokenize(e.to_string()))?;
        let encodings = untruncated
            .encode_batch(texts.to_vec(), false)
            .map_err(|e| EmbedError::Tokenize(e.to_string()))?;
        let mut sequences = Vec::new();
        let mut windows_per_text = Vec::with_capacity(texts.len());
        for encoding in &encodings {
            let windows =
                token_windows(encoding.get_ids(), length.min(self.max_len), overlap, self.special);
            windows_per_text.push(windows.len());
            sequences.extend(windows);
        }
        let mut vectors = self.embed_sequences(sequences, &|_| {})?.into_iter();
        Ok(windows_per_text.into_iter().map(|n| vectors.by_ref().take(n).collect()).collect())
    }

    /// Embeds token sequences (special tokens included), shortest first in padded batches,
    /// and returns the vectors in the order given; `on_batch(n)` is called as each batch of
    /// `n` sequences is done.
    ///
    /// With more than one batch, each thread of rayon's pool runs whole batches on its own
    /// (data parallelism) instead of every matrix product being split across the threads: on
    /// 2 cores the split products ran slower than one thread alone (21.8 s against 23 to 29 s
    /// for 256 SciFact documents with all-MiniLM-L6-v2, 1.3 cores busy), likely because each
    /// of the model's hundreds of operations per batch waits for the slower thread; whole
    /// batches per core took 10.8 to 11.9 s. A single batch (a query) keeps the split
    /// products, for its latency.
    fn embed_sequences(
        &self,
        sequences: Vec<Vec<u32>>,
        on_batch: &(dyn Fn(usize) + Sync),
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let batches = self.batches(&sequences);
        let embed = |batch: &[usize]| {
            let batch_sequences: Vec<&[u32]> =
                batch.iter().map(|&i| sequences[i].as_slice()).collect();
            let vectors = self.embed_batch(&batch_sequences)?;
            on_batch(batch.len());
            Ok::<_, EmbedError>(vectors)
        };
        let workers = if batches.len() > 1 { self.workers() } else { &[] };
        let workers = &workers[..workers.len().min(batches.len())];
        let done: Vec<Embedded> = if workers.len() <= 1 {
            batches
                .iter()
                .map(|batch| Ok((batch.as_slice(), embed(batch)?)))
                .collect::<Result<_, EmbedError>>()?
        } else {
            on_workers(workers, &batches, embed)?
        };
        let mut vectors = vec![Vec::new(); sequences.len()];
        for (batch, batch_vectors) in done {
            for (&i, vector) in batch.iter().zip(batch_vectors) {
                vectors[i] = vector;
            }
        }
        Ok(vectors)
    }

    /// The sequences' indices grouped into batches, shortest first: at most `batch_size` each,
    /// and fewer when long texts would make the attention scores larger than
    /// [`ATTENTION_BYTES`].
    fn batches(&self, sequences: &[Vec<u32>]) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..sequences.len()).collect();
        order.sort_by_key(|&i| sequences[i].len());
        let heads = self.model.config().num_attention_heads;
        let mut batches = Vec::new();
        let mut start = 0;
        while start < order.len() {
            // Sorted by length, so the batch's last sequence is its longest.
            let mut end = start + 1;
            while end < order.len() && end - start < self.batch_size {
                let length = sequences[order[end]].len();
                if (end - start + 1) * heads * length * length * 4 > ATTENTION_BYTES {
                    break;
                }
                end += 1;
            }
            batches.push(order[start..end].to_vec());
            start = end;
        }
        batches
    }

    /// One worker per thread of rayon's pool (fewer if the system refuses threads).
    fn workers(&self) -> &[rayon::ThreadPool] {
        self.workers.get_or_init(|| {
            (0..rayon::current_num_threads())
                .map_while(|_| rayon::ThreadPoolBuilder::new().num_threads(1).build().ok())
                .collect()
        })
    }

    /// One forward pass over sequences padded to the longest of them.
    fn embed_batch(&self, sequences: &[&[u32]]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let (ids, mask) = pad_batch(sequences, self.special.pad, &self.device)?;
        let hidden = self.model.encode(&ids, &mask, None)?;
        let pooled = match self.pooling {
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => mean_pool(&hidden, &mask)?,
            Pooling::IdfMean => {
                let weights = self.token_weights.as_ref().expect("checked when chosen");
                let per_token =
                    weights.index_select(&ids.flatten_all()?, 0)?.reshape(ids.dims())?;
                weighted_mean_pool(&hidden, &(per_token * mask.to_dtype(DType::F32)?)?)?
            }
        };
        Ok(unit_length(&pooled)?.to_vec2::<f32>()?)
    }
}

/// Runs `embed` on every batch, one batch per worker at a time (each a one-thread rayon pool,
/// so the kernels' own splitting stays on that thread). Workers take the longest batches
/// first, so that no worker is left with a long one at the end.
fn on_workers<'b, F>(
    workers: &[rayon::ThreadPool],
    batches: &'b [Vec<usize>],
    embed: F,
) -> Result<Vec<Embedded<'b>>, EmbedError>
where
    F: Fn(&[usize]) -> Result<Vec<Vec<f32>>, EmbedError> + Sync,
{
    let next = AtomicUsize::new(0);
    let work = |pool: &rayon::ThreadPool| {
        pool.install(|| {
            let mut done = Vec::new();
            loop {
                let taken = next.fetch_add(1, Ordering::Relaxed);
                let Some(batch) = batches.len().checked_sub(taken + 1).map(|i| &batches[i]) else {
                    return Ok(done);
                };
                match embed(batch) {
                    Ok(vectors) => done.push((batch.as_slice(), vectors)),
                    Err(error) => {
                        // The other workers stop after their current batch.
                        next.store(batches.len(), Ordering::Relaxed);
                        return Err(error);
                    }
                }
            }
        })
    };
    let results: Vec<_> = std::thread::scope(|scope| {
        let running: Vec<_> = workers.iter().map(|pool| scope.spawn(|| work(pool))).collect();
        running
            .into_iter()
            .map(|worker| worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    });
    let mut done = Vec::with_capacity(batches.len());
    for result in results {
        done.extend(result?);
    }
    Ok(done)
}

/// Each row of `vectors` scaled to length 1, so that a dot product is the cosine similarity.
pub(crate) fn unit_length(vectors: &Tensor) -> candle_core::Result<Tensor> {
    let norms = vectors.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    vectors.broadcast_div(&norms)
}

/// The mean of each sequence's vectors (`[batch, length, hidden]`) over its real tokens
/// (`attention_mask` 1): `[batch, hidden]`.
pub(crate) fn mean_pool(hidden: &Tensor, attention_mask: &Tensor) -> candle_core::Result<Tensor> {
    weighted_mean_pool(hidden, &attention_mask.to_dtype(DType::F32)?)
}

/// The mean of each sequence's vectors (`[batch, length, hidden]`) weighted by `weights`
/// (`[batch, length]`, 0 at padding): `[batch, hidden]`.
fn weighted_mean_pool(hidden: &Tensor, weights: &Tensor) -> candle_core::Result<Tensor> {
    let weights = weights.unsqueeze(2)?;
    let sum = hidden.broadcast_mul(&weights)?.sum(1)?;
    sum.broadcast_div(&weights.sum(1)?.clamp(1e-9, f64::MAX)?)
}

/// The windows a text's tokens are read in: at most `length` tokens each, [CLS] and [SEP]
/// included, each overlapping the one before by `overlap` tokens and adding at least one; a
/// text with no tokens is one window of [CLS] and [SEP].
pub(crate) fn token_windows(
    tokens: &[u32],
    length: usize,
    overlap: usize,
    special: SpecialIds,
) -> Vec<Vec<u32>> {
    let width = length.saturating_sub(2).max(1);
    let step = width.saturating_sub(overlap).max(1);
    let mut windows = Vec::new();
    let mut start = 0;
    loop {
        let end = (start + width).min(tokens.len());
        let mut window = Vec::with_capacity(end - start + 2);
        window.push(special.cls);
        window.extend_from_slice(&tokens[start..end]);
        window.push(special.sep);
        windows.push(window);
        if end == tokens.len() {
            return windows;
        }
        start += step;
    }
}

/// Token sequences as one batch padded to the longest: `input_ids` and `attention_mask`
/// (1 for tokens, 0 for padding), both `[batch, length]`.
pub(crate) fn pad_batch<S: AsRef<[u32]>>(
    sequences: &[S],
    pad: u32,
    device: &candle_core::Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let length = sequences.iter().map(|s| s.as_ref().len()).max().unwrap_or(0).max(1);
    let mut ids = Vec::with_capacity(sequences.len() * length);
    let mut mask = Vec::with_capacity(sequences.len() * length);
    for sequence in sequences {
        let sequence = sequence.as_ref();
        ids.extend_from_slice(sequence);
        ids.extend(std::iter::repeat_n(pad, length - sequence.len()));
        mask.extend(std::iter::repeat_n(1u32, sequence.len()));
        mask.extend(std::iter::repeat_n(0u32, length - sequence.len()));
    }
    Ok((
        Tensor::from_vec(ids, (sequences.len(), length), device)?,
        Tensor::from_vec(mask, (sequences.len(), length), device)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_counts_once_per_document_and_special_tokens_weigh_nothing() {
        let documents = vec![vec![5, 5, 5, 6], vec![6, 7], vec![6]];
        let weights = inverse_document_frequencies(&documents, 9, &[0, 1]);
        let idf = |df: f32| (4.0f32 / (df + 1.0)).ln();
        assert_eq!(weights[5], idf(1.0));
        assert_eq!(weights[6], idf(3.0));
        assert_eq!(weights[7], idf(1.0));
        assert_eq!(weights[8], idf(0.0), "an unseen token is as rare as can be");
        assert_eq!((weights[0], weights[1]), (0.0, 0.0));
        assert!(weights[6] < weights[5]);
    }
}
