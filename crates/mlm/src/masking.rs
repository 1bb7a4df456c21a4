//! The cloze objective: which tokens to hide, and what the model sees instead.
//!
//! Exactly BERT's recipe, as Hugging Face's `DataCollatorForLanguageModeling` draws it: each
//! non-special, non-padding token is chosen with probability `rate` (15% by default); of the
//! chosen, 80% become `[MASK]`, 10% a random vocabulary token, 10% stay as they are. The loss
//! looks only at the chosen positions. Masks are drawn afresh each time a sequence is seen.

use candle_core::{Device, Result, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tokenizers::Tokenizer;

use crate::model::BertForMaskedLm;
use crate::tokenizer::{continuation_ids, SpecialIds, TokenizerError};

/// What the masker needs to know about the vocabulary.
#[derive(Debug, Clone)]
pub struct Masker {
    /// Probability that an eligible token (or, with whole-word masking, word) is chosen.
    pub rate: f64,
    pub mask_id: u32,
    pub pad_id: u32,
    pub vocab_size: u32,
    /// Token ids that are never chosen (`[CLS]`, `[SEP]`, `[PAD]`, ...), indexed by id.
    pub special: Vec<bool>,
    /// With whole-word masking: which ids continue the previous token's word (`##...`), so a
    /// word is chosen or left whole.
    pub continuation: Option<Vec<bool>>,
}

/// A batch ready for the model: padded inputs with the chosen tokens replaced, and the loss
/// targets.
#[derive(Debug)]
pub struct MaskedBatch {
    /// `[batch, length]` u32, padded with `pad_id`.
    pub input_ids: Tensor,
    /// `[batch, length]` u32: 1 for tokens, 0 for padding.
    pub attention_mask: Tensor,
    /// `[n]` u32: the chosen positions, as `row * length + column`.
    pub positions: Tensor,
    /// `[n]` u32: the original token at each chosen position.
    pub labels: Tensor,
    /// How many real (non-padding) tokens the batch holds, for throughput figures.
    pub tokens: usize,
}

/// The raw result of masking one sequence, before it becomes tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedSequence {
    pub input_ids: Vec<u32>,
    /// Indices into the sequence of the chosen tokens.
    pub chosen: Vec<usize>,
}

impl Masker {
    /// A masker for `tokenizer`'s vocabulary: its special tokens are never chosen, and with
    /// whole-word masking its `##` pieces follow their word.
    pub fn for_tokenizer(
        tokenizer: &Tokenizer,
        rate: f64,
        whole_word: bool,
    ) -> std::result::Result<Masker, TokenizerError> {
        let ids = SpecialIds::of(tokenizer)?;
        let vocab_size = tokenizer.get_vocab_size(true);
        let mut special = vec![false; vocab_size];
        for id in [ids.pad, ids.unk, ids.cls, ids.sep, ids.mask] {
            special[id as usize] = true;
        }
        Ok(Masker {
            rate,
            mask_id: ids.mask,
            pad_id: ids.pad,
            vocab_size: vocab_size as u32,
            special,
            continuation: whole_word.then(|| continuation_ids(tokenizer)),
        })
    }

    fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    fn continues_word(&self, id: u32) -> bool {
        self.continuation.as_ref().is_some_and(|c| c.get(id as usize).copied().unwrap_or(false))
    }

    /// Chooses and replaces tokens of one sequence.
    pub fn mask_sequence(&self, ids: &[u32], rng: &mut ChaCha8Rng) -> MaskedSequence {
        let mut chosen = Vec::new();
        let mut word_chosen = false;
        for (index, &id) in ids.iter().enumerate() {
            if self.is_special(id) || id == self.pad_id {
                word_chosen = false;
                continue;
            }
            // A continuation piece follows its word's choice; anything else draws anew.
            if !(self.continues_word(id) && index > 0) {
                word_chosen = rng.random::<f64>() < self.rate;
            }
            if word_chosen {
                chosen.push(index);
            }
        }
        let mut input_ids = ids.to_vec();
        for &index in &chosen {
            let roll: f64 = rng.random();
            if roll < 0.8 {
                input_ids[index] = self.mask_id;
            } else if roll < 0.9 {
                input_ids[index] = rng.random_range(0..self.vocab_size);
            }
        }
        MaskedSequence { input_ids, chosen }
    }

    /// Masks every sequence and pads the batch to its longest sequence. A batch in which
    /// nothing was chosen (possible for very short sequences) gets one chosen token, so its loss
    /// is defined.
    pub fn mask_batch(
        &self,
        sequences: &[Vec<u32>],
        rng: &mut ChaCha8Rng,
        device: &Device,
    ) -> Result<MaskedBatch> {
        let length = sequences.iter().map(Vec::len).max().unwrap_or(0);
        let mut input_ids = Vec::with_capacity(sequences.len() * length);
        let mut attention_mask = Vec::with_capacity(sequences.len() * length);
        let mut positions = Vec::new();
        let mut labels = Vec::new();
        for (row, sequence) in sequences.iter().enumerate() {
            let mut masked = self.mask_sequence(sequence, rng);
            if row + 1 == sequences.len() && positions.is_empty() && masked.chosen.is_empty() {
                if let Some(index) =
                    sequence.iter().position(|id| !self.is_special(*id) && *id != self.pad_id)
                {
                    masked.input_ids[index] = self.mask_id;
                    masked.chosen.push(index);
                }
            }
            for &index in &masked.chosen {
                positions.push((row * length + index) as u32);
                labels.push(sequence[index]);
            }
            attention_mask.extend(masked.input_ids.iter().map(|_| 1u32));
            input_ids.extend(masked.input_ids);
            let padding = length - sequence.len();
            input_ids.extend(std::iter::repeat_n(self.pad_id, padding));
            attention_mask.extend(std::iter::repeat_n(0u32, padding));
        }
        if positions.is_empty() {
            candle_core::bail!(
                "a batch with no maskable token: every sequence is empty or special tokens only"
            );
        }
        let tokens = attention_mask.iter().filter(|m| **m == 1).count();
        let shape = (sequences.len(), length);
        Ok(MaskedBatch {
            input_ids: Tensor::from_vec(input_ids, shape, device)?,
            attention_mask: Tensor::from_vec(attention_mask, shape, device)?,
            positions: Tensor::new(positions.as_slice(), device)?,
            labels: Tensor::new(labels.as_slice(), device)?,
            tokens,
        })
    }
}

/// The masked-token loss of a batch: cross-entropy over the whole vocabulary, averaged over
/// the chosen positions only. Dropout is on when a generator is given. Returns the loss and the
/// logits at the chosen positions (`[n, vocab]`), for accuracy.
pub fn mlm_loss(
    model: &BertForMaskedLm,
    batch: &MaskedBatch,
    rng: Option<&mut ChaCha8Rng>,
) -> Result<(Tensor, Tensor)> {
    let hidden = model.encode(&batch.input_ids, &batch.attention_mask, rng)?;
    loss_at_chosen(model, &hidden, batch)
}

/// The MLM head's cross-entropy at `batch`'s chosen positions of `hidden` (`[batch, length,
/// hidden]`, whatever computed it from the batch), and the logits there.
pub(crate) fn loss_at_chosen(
    model: &BertForMaskedLm,
    hidden: &Tensor,
    batch: &MaskedBatch,
) -> Result<(Tensor, Tensor)> {
    let (rows, length, size) = hidden.dims3()?;
    let chosen = hidden.reshape((rows * length, size))?.index_select(&batch.positions, 0)?;
    let logits = model.mlm_logits(&chosen)?;
    let loss = crate::kernels::cross_entropy(&logits, &batch.labels)?;
    Ok((loss, logits))
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    const PAD: u32 = 0;
    const CLS: u32 = 2;
    const SEP: u32 = 3;
    const MASK: u32 = 4;
    const VOCAB: u32 = 1000;

    fn masker(rate: f64) -> Masker {
        let mut special = vec![false; VOCAB as usize];
        for id in [PAD, 1, CLS, SEP, MASK] {
            special[id as usize] = true;
        }
        Masker { rate, mask_id: MASK, pad_id: PAD, vocab_size: VOCAB, special, continuation: None }
    }

    /// `[CLS] w.. [SEP] [PAD]..`: 100 eligible tokens and 4 that must never be chosen.
    fn sequence(rng: &mut ChaCha8Rng) -> Vec<u32> {
        let mut ids = vec![CLS];
        ids.extend((0..100).map(|_| rng.random_range(5..VOCAB)));
        ids.extend([SEP, PAD, PAD]);
        ids
    }

    /// Counts over many sequences: the chosen rate and the 80/10/10 split are within a few
    /// standard errors of their targets, and specials and padding are never chosen.
    #[test]
    fn proportions_match_the_recipe() {
        for rate in [0.15, 0.4] {
            let masker = masker(rate);
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            let (mut eligible, mut chosen, mut as_mask, mut kept, mut random) = (0, 0, 0, 0, 0);
            for _ in 0..2000 {
                let ids = sequence(&mut rng);
                let masked = masker.mask_sequence(&ids, &mut rng);
                eligible += 100;
                chosen += masked.chosen.len();
                for (index, (&original, &seen)) in ids.iter().zip(&masked.input_ids).enumerate() {
                    let is_chosen = masked.chosen.contains(&index);
                    if masker.is_special(original) {
                        assert!(
                            !is_chosen && seen == original,
                            "special token {original} was chosen"
                        );
                    } else if !is_chosen {
                        assert_eq!(seen, original, "an unchosen token changed");
                    } else if seen == MASK {
                        as_mask += 1;
                    } else if seen == original {
                        kept += 1;
                    } else {
                        random += 1;
                    }
                }
            }
            let share = |count: usize, of: usize| count as f64 / of as f64;
            // Standard errors: sqrt(p(1-p)/n) is under 0.002 here; allow about four.
            assert!(
                (share(chosen, eligible) - rate).abs() < 0.006,
                "chosen {}",
                share(chosen, eligible)
            );
            assert!(
                (share(as_mask, chosen) - 0.8).abs() < 0.012,
                "[MASK] {}",
                share(as_mask, chosen)
            );
            // A random token equals the original 1 time in 1000: it counts as kept.
            assert!((share(kept, chosen) - 0.1).abs() < 0.01, "kept {}", share(kept, chosen));
            assert!((share(random, chosen) - 0.1).abs() < 0.01, "random {}", share(random, chosen));
        }
    }

    #[test]
    fn whole_word_masking_chooses_whole_words() {
        let mut masker = masker(0.3);
        let mut continuation = vec![false; VOCAB as usize];
        continuation[500..].iter_mut().for_each(|c| *c = true);
        masker.continuation = Some(continuation);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // Words: 10 (+ 500, 501), 11, 12 (+ 502).
        let ids = [CLS, 10, 500, 501, 11, 12, 502, SEP];
        let mut seen_partial = false;
        for _ in 0..500 {
            let chosen = masker.mask_sequence(&ids, &mut rng).chosen;
            for word in [&[1usize, 2, 3][..], &[4], &[5, 6]] {
                let count = word.iter().filter(|i| chosen.contains(i)).count();
                seen_partial |= count != 0 && count != word.len();
            }
        }
        assert!(!seen_partial, "a word was partly chosen");
    }

    #[test]
    fn batches_are_padded_and_positions_index_the_flat_batch() {
        let masker = masker(1.0);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let batch = masker
            .mask_batch(&[vec![CLS, 7, 8, SEP], vec![CLS, 9, SEP]], &mut rng, &Device::Cpu)
            .unwrap();
        assert_eq!(batch.input_ids.dims(), [2, 4]);
        assert_eq!(batch.attention_mask.to_vec2::<u32>().unwrap(), [[1, 1, 1, 1], [1, 1, 1, 0]]);
        assert_eq!(batch.positions.to_vec1::<u32>().unwrap(), [1, 2, 5]);
        assert_eq!(batch.labels.to_vec1::<u32>().unwrap(), [7, 8, 9]);
        assert_eq!(batch.tokens, 7);
    }
}
