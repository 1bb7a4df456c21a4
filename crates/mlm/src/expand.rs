//! Document expansion with the cloze head: the words the model expects in a document that the
//! document does not say, for the keyword index to match a query that uses them.
//!
//! At every position of a document the MLM head gives a distribution over the vocabulary; the
//! sum of those distributions is the number of times the model expects each word in a text
//! like this one (a position that reads "protein" also gives weight to "gene" and "cell").
//! The words with the highest expected count that the document does not contain are its
//! expansion, each with that count as its weight: a sparse representation learnt without
//! labels, as SPLADE's is with them. Long documents are read in windows of the length the
//! model was trained on, whose expected counts add up.

use std::collections::HashSet;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use tokenizers::Tokenizer;

use crate::checkpoint;
use crate::embed::{pad_batch, token_windows, EmbedError};
use crate::model::BertForMaskedLm;
use crate::tokenizer::{self, SpecialIds};

/// Windows per forward pass: their logits are `windows x length x vocabulary` floats.
const WINDOWS_PER_BATCH: usize = 16;

/// A word the model predicts for a document and its expected count there.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpansionTerm {
    pub term: String,
    pub weight: f32,
}

/// A model with a trained MLM head and its tokenizer, ready to expand documents.
pub struct Expander {
    model: BertForMaskedLm,
    tokenizer: Tokenizer,
    special: SpecialIds,
    /// For each token id, whether it may be an expansion: a whole word of letters, not a
    /// special token or a word piece ("##ing") that means nothing alone.
    is_word: Vec<bool>,
    device: Device,
}

impl Expander {
    /// Loads a model folder whose checkpoint has an MLM head (`cls.predictions.*`); a
    /// checkpoint without one is refused, since a fresh head predicts nothing.
    pub fn load(dir: &Path, device: &Device) -> Result<Expander, EmbedError> {
        let model = checkpoint::load_masked_lm(dir, device)?;
        let mut tokenizer = tokenizer::load_tokenizer(dir)?;
        // Windows are cut here, from the whole text.
        tokenizer.with_truncation(None).map_err(|e| EmbedError::Tokenize(e.to_string()))?;
        tokenizer.with_padding(None);
        let special = SpecialIds::of(&tokenizer)?;
        let vocab_size = model.config().vocab_size;
        let is_word = (0..vocab_size as u32)
            .map(|id| {
                !special.all().contains(&id)
                    && tokenizer.id_to_token(id).is_some_and(|token| {
                        token.chars().count() > 1 && token.chars().all(char::is_alphabetic)
                    })
            })
            .collect();
        Ok(Expander { model, tokenizer, special, is_word, device: device.clone() })
    }

    /// The `terms` words with the highest expected count in each text that the text does not
    /// contain, highest first; `window` is the tokens per forward pass, [CLS] and [SEP]
    /// included (the model's training length suits it best; at most its position limit).
    pub fn expand(
        &self,
        texts: &[&str],
        terms: usize,
        window: usize,
    ) -> Result<Vec<Vec<ExpansionTerm>>, EmbedError> {
        let length = window.min(self.model.config().max_position_embeddings);
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), false)
            .map_err(|e| EmbedError::Tokenize(e.to_string()))?;
        // Every window of every text, and the text it belongs to.
        let windows: Vec<(usize, Vec<u32>)> = encodings
            .iter()
            .enumerate()
            .flat_map(|(text, encoding)| {
                token_windows(encoding.get_ids(), length, 0, self.special)
                    .into_iter()
                    .map(move |window| (text, window))
            })
            .collect();
        let vocab_size = self.is_word.len();
        let mut expected = vec![vec![0f32; vocab_size]; texts.len()];
        for batch in windows.chunks(WINDOWS_PER_BATCH) {
            let sequences: Vec<&[u32]> = batch.iter().map(|(_, s)| s.as_slice()).collect();
            let counts = self.expected_counts(&sequences)?;
            for ((text, _), counts) in batch.iter().zip(counts) {
                for (total, count) in expected[*text].iter_mut().zip(counts) {
                    *total += count;
                }
            }
        }
        Ok(encodings
            .iter()
            .zip(expected)
            .map(|(encoding, counts)| {
                let present: HashSet<u32> = encoding.get_ids().iter().copied().collect();
                let mut candidates: Vec<(u32, f32)> = counts
                    .into_iter()
                    .enumerate()
                    .map(|(id, count)| (id as u32, count))
                    .filter(|(id, count)| {
                        self.is_word[*id as usize] && !present.contains(id) && *count > 0.0
                    })
                    .collect();
                candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                candidates
                    .into_iter()
                    .take(terms)
                    .filter_map(|(id, weight)| {
                        let term = self.tokenizer.id_to_token(id)?;
                        Some(ExpansionTerm { term, weight })
                    })
                    .collect()
            })
            .collect())
    }

    /// For each sequence, the sum over its tokens ([CLS] and [SEP] left out) of the MLM
    /// head's distribution over the vocabulary.
    fn expected_counts(&self, sequences: &[&[u32]]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let (ids, mask) = pad_batch(sequences, self.special.pad, &self.device)?;
        let (batch, length) = ids.dims2()?;
        // The head, a product with the whole vocabulary, is most of the work: it reads only
        // the rows of words, not [CLS], [SEP] or padding.
        let rows: Vec<(usize, u32)> = sequences
            .iter()
            .enumerate()
            .flat_map(|(sequence, tokens)| {
                (1..tokens.len().saturating_sub(1))
                    .map(move |position| (sequence, (sequence * length + position) as u32))
            })
            .collect();
        if rows.is_empty() {
            return Ok(vec![vec![0.0; self.is_word.len()]; batch]);
        }
        let hidden = self.model.encode(&ids, &mask, None)?.reshape((batch * length, ()))?;
        let read = Tensor::from_iter(rows.iter().map(|&(_, row)| row), &self.device)?;
        let logits = self.model.mlm_logits(&hidden.index_select(&read, 0)?)?;
        let probabilities = candle_nn::ops::softmax_last_dim(&logits)?;
        // Each sequence's rows summed by a product with a matrix of ones where they are its
        // own: candle's CPU sums walk element by element, far slower.
        let mut owned = vec![0f32; batch * rows.len()];
        for (column, &(sequence, _)) in rows.iter().enumerate() {
            owned[sequence * rows.len() + column] = 1.0;
        }
        let owned = Tensor::from_vec(owned, (batch, rows.len()), &self.device)?;
        Ok(owned.matmul(&probabilities)?.to_dtype(DType::F32)?.to_vec2::<f32>()?)
    }
}
