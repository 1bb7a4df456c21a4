//! Contrastive training for retrieval, with no labels (Izacard et al., "Unsupervised Dense
//! Information Retrieval with Contrastive Learning", 2022: Contriever).
//!
//! The cloze task teaches a model about words, not which texts are about the same thing, and
//! its mean-pooled vectors rank poorly. Here two spans cropped at random from the same document
//! are a positive pair, and the other documents of the batch are the negatives: the loss pulls
//! each pair's vectors together and pushes the others apart, which is what search needs.

use std::collections::HashSet;

use candle_core::{Device, Result, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::embed::{mean_pool, pad_batch, unit_length};
use crate::model::BertForMaskedLm;
use crate::tokenizer::SpecialIds;

/// `[training.contrastive]` in a preset: train on the contrastive loss besides the cloze task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContrastiveSettings {
    /// The contrastive loss's weight in the sum with the cloze loss.
    pub weight: f64,
    /// Documents per batch: each gives a pair, and is a negative for the others.
    pub batch_size: usize,
    /// The similarities' temperature: lower makes the loss care about the hardest negatives.
    pub temperature: f64,
    /// Each crop keeps between these shares of its document's tokens.
    pub min_crop: f64,
    pub max_crop: f64,
    /// Documents shorter than this many tokens are not used (too little to crop twice).
    pub min_tokens: usize,
    /// Share of each batch's documents drawn as the lexical nearest neighbour of another
    /// document of the batch ([`crate::neighbours`]) rather than at random: harder negatives.
    #[serde(default)]
    pub neighbour_share: f64,
    /// Weight of the bottleneck loss ([`crate::bottleneck`]): a one-layer decoder rebuilds each
    /// first crop from its vector. 0: no decoder.
    #[serde(default)]
    pub bottleneck_weight: f64,
    /// Share of each crop's tokens the decoder has to rebuild.
    #[serde(default = "default_bottleneck_mask_rate")]
    pub bottleneck_mask_rate: f64,
    /// Chance that each token of a second crop that also occurs in its first crop is dropped
    /// from it. Pairs that share words are told apart by those words alone, which keyword search
    /// already does; without them the model must learn which different words go together.
    /// 0: crops keep every token.
    #[serde(default)]
    pub shared_token_drop: f64,
}

fn default_bottleneck_mask_rate() -> f64 {
    0.5
}

impl ContrastiveSettings {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(self.weight >= 0.0 && self.weight.is_finite()) {
            return Err(format!(
                "training.contrastive.weight must be 0 or more, found {}",
                self.weight
            ));
        }
        if self.batch_size < 2 {
            return Err("training.contrastive.batch_size must be at least 2 (one negative)".into());
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err("training.contrastive.temperature must be above 0".into());
        }
        if !(0.0 < self.min_crop && self.min_crop <= self.max_crop && self.max_crop <= 1.0) {
            return Err("training.contrastive needs 0 < min_crop <= max_crop <= 1".into());
        }
        if self.min_tokens < 2 {
            return Err("training.contrastive.min_tokens must be at least 2".into());
        }
        if !(0.0..=0.5).contains(&self.neighbour_share) {
            return Err(format!(
                "training.contrastive.neighbour_share must be between 0 and 0.5 (each neighbour \
                 needs a document drawn at random beside it), found {}",
                self.neighbour_share
            ));
        }
        if !(self.bottleneck_weight >= 0.0 && self.bottleneck_weight.is_finite()) {
            return Err(format!(
                "training.contrastive.bottleneck_weight must be 0 or more, found {}",
                self.bottleneck_weight
            ));
        }
        if !(self.bottleneck_mask_rate > 0.0 && self.bottleneck_mask_rate < 1.0) {
            return Err(format!(
                "training.contrastive.bottleneck_mask_rate must be between 0 and 1, found {}",
                self.bottleneck_mask_rate
            ));
        }
        if !(0.0..=1.0).contains(&self.shared_token_drop) {
            return Err(format!(
                "training.contrastive.shared_token_drop must be between 0 and 1, found {}",
                self.shared_token_drop
            ));
        }
        Ok(())
    }
}

/// The documents of one batch: `batch_size` distinct indices below `count` (a document twice in
/// a batch would be its own negative). With `neighbours`, each document drawn at random brings
/// its neighbour along until `neighbour_share` of the batch are neighbours.
pub fn draw_batch(
    count: usize,
    settings: &ContrastiveSettings,
    neighbours: Option<&[Option<usize>]>,
    rng: &mut ChaCha8Rng,
) -> Vec<usize> {
    let neighbours = match neighbours {
        Some(neighbours) if settings.neighbour_share > 0.0 => neighbours,
        _ => return rand::seq::index::sample(rng, count, settings.batch_size).into_vec(),
    };
    let wanted = (settings.batch_size as f64 * settings.neighbour_share).round() as usize;
    let mut drawn = Vec::with_capacity(settings.batch_size);
    let mut taken = std::collections::HashSet::with_capacity(settings.batch_size);
    let mut paired = 0;
    while drawn.len() < settings.batch_size {
        let pick = rng.random_range(0..count);
        if !taken.insert(pick) {
            continue;
        }
        drawn.push(pick);
        if paired < wanted && drawn.len() < settings.batch_size {
            if let Some(neighbour) = neighbours[pick] {
                if taken.insert(neighbour) {
                    drawn.push(neighbour);
                    paired += 1;
                }
            }
        }
    }
    drawn
}

/// Two crops of each of a batch's documents: rows `0..n` are the first crops, `n..2n` the
/// second, padded to the longest.
#[derive(Debug)]
pub struct CropBatch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub pairs: usize,
    /// Tokens in the crops, padding excluded.
    pub tokens: usize,
    /// The crops' token ids, `[CLS]` and `[SEP]` included, unpadded, in the rows' order.
    pub crops: Vec<Vec<u32>>,
}

/// Crops two random spans from each document of `documents` (token ids without special
/// tokens), each at most `max_len` tokens with `[CLS]` and `[SEP]`; the second loses each token
/// the first has at the chance `shared_token_drop`, unless that would leave it empty.
pub fn crop_pairs(
    documents: &[&[u32]],
    settings: &ContrastiveSettings,
    max_len: usize,
    special: SpecialIds,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> Result<CropBatch> {
    let mut crops: Vec<Vec<u32>> = vec![Vec::new(); documents.len() * 2];
    for (i, document) in documents.iter().enumerate() {
        for view in 0..2 {
            let share = rng.random_range(settings.min_crop..=settings.max_crop);
            let length = ((document.len() as f64 * share).round() as usize)
                .clamp(1, document.len())
                .min(max_len - 2);
            let start = rng.random_range(0..=document.len() - length);
            let mut span = document[start..start + length].to_vec();
            if view == 1 && settings.shared_token_drop > 0.0 {
                let first: HashSet<u32> = crops[i][1..crops[i].len() - 1].iter().copied().collect();
                let kept: Vec<u32> = span
                    .iter()
                    .copied()
                    .filter(|token| {
                        !first.contains(token) || !rng.random_bool(settings.shared_token_drop)
                    })
                    .collect();
                if !kept.is_empty() {
                    span = kept;
                }
            }
            let crop = &mut crops[view * documents.len() + i];
            crop.push(special.cls);
            crop.extend_from_slice(&span);
            crop.push(special.sep);
        }
    }
    let tokens = crops.iter().map(Vec::len).sum();
    let (input_ids, attention_mask) = pad_batch(&crops, special.pad, device)?;
    Ok(CropBatch { input_ids, attention_mask, pairs: documents.len(), tokens, crops })
}

/// InfoNCE over the batch, both ways: each first crop must pick its own second crop among all
/// second crops (cosine similarity over `temperature`), and the other way round. Dropout is on
/// when a generator is given. Returns the loss and the crops' mean-pooled vectors
/// (`[2 * pairs, hidden]`, before normalising), for a loss that trains them further.
pub fn contrastive_loss(
    model: &BertForMaskedLm,
    batch: &CropBatch,
    temperature: f64,
    rng: Option<&mut ChaCha8Rng>,
) -> Result<(Tensor, Tensor)> {
    let hidden = model.encode(&batch.input_ids, &batch.attention_mask, rng)?;
    let vectors = mean_pool(&hidden, &batch.attention_mask)?;
    let unit = unit_length(&vectors)?;
    let n = batch.pairs;
    let (first, second) = (unit.narrow(0, 0, n)?, unit.narrow(0, n, n)?);
    let similarities = (first.matmul(&second.t()?)? / temperature)?;
    let labels = Tensor::arange(0u32, n as u32, similarities.device())?;
    let forward = crate::kernels::cross_entropy(&similarities, &labels)?;
    let backward = crate::kernels::cross_entropy(&similarities.t()?.contiguous()?, &labels)?;
    Ok((((forward + backward)? / 2.0)?, vectors))
}

/// The documents long enough to crop twice.
pub fn usable_documents(documents: Vec<Vec<u32>>, settings: &ContrastiveSettings) -> Vec<Vec<u32>> {
    documents.into_iter().filter(|d| d.len() >= settings.min_tokens).collect()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::config::BertConfig;

    fn settings() -> ContrastiveSettings {
        ContrastiveSettings {
            weight: 1.0,
            batch_size: 4,
            temperature: 0.05,
            min_crop: 0.3,
            max_crop: 0.6,
            min_tokens: 4,
            neighbour_share: 0.0,
            bottleneck_weight: 0.0,
            bottleneck_mask_rate: 0.5,
            shared_token_drop: 0.0,
        }
    }

    #[test]
    fn batches_bring_neighbours_along_up_to_their_share() {
        // Documents pair up: 2k and 2k + 1 are each other's neighbours.
        let neighbours: Vec<Option<usize>> = (0..100).map(|d| Some(d ^ 1)).collect();
        let mut settings = settings();
        settings.batch_size = 20;
        settings.neighbour_share = 0.5;
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..50 {
            let batch = draw_batch(100, &settings, Some(&neighbours), &mut rng);
            assert_eq!(batch.len(), 20);
            let distinct: std::collections::HashSet<_> = batch.iter().collect();
            assert_eq!(distinct.len(), 20, "{batch:?}");
            let pairs = batch.chunks(2).filter(|p| p.len() == 2 && p[1] == p[0] ^ 1).count();
            assert_eq!(pairs, 10, "{batch:?}");
        }
        settings.neighbour_share = 0.25;
        let batch = draw_batch(100, &settings, Some(&neighbours), &mut rng);
        let together = batch.iter().filter(|d| batch.contains(&(**d ^ 1))).count();
        assert!((10..=14).contains(&together), "5 pairs, and chance: {batch:?}");
    }

    fn special() -> SpecialIds {
        SpecialIds { pad: 0, unk: 1, cls: 2, sep: 3, mask: 4 }
    }

    #[test]
    fn crops_are_spans_of_their_document_within_the_length() {
        let documents: Vec<Vec<u32>> =
            (0..3).map(|d| (0..40).map(|t| 100 * d + t + 5).collect()).collect();
        let refs: Vec<&[u32]> = documents.iter().map(Vec::as_slice).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let batch = crop_pairs(&refs, &settings(), 16, special(), &mut rng, &Device::Cpu).unwrap();
        let ids = batch.input_ids.to_vec2::<u32>().unwrap();
        let mask = batch.attention_mask.to_vec2::<u32>().unwrap();
        assert_eq!(ids.len(), 6);
        for (row, (ids, mask)) in ids.iter().zip(&mask).enumerate() {
            let used = mask.iter().filter(|m| **m == 1).count();
            assert!((3..=16).contains(&used), "{used}");
            assert_eq!((ids[0], ids[used - 1]), (2, 3));
            let tokens = &ids[1..used - 1];
            let document = &documents[row % 3];
            let start = document.iter().position(|t| *t == tokens[0]).unwrap();
            assert_eq!(&document[start..start + tokens.len()], tokens);
        }
    }

    #[test]
    fn second_crops_lose_the_tokens_their_first_crops_have() {
        // Each document cycles through 20 tokens, so that two 12-token crops share some.
        let documents: Vec<Vec<u32>> =
            (0..4).map(|d| (0..40).map(|t| 100 * d + t % 20 + 5).collect()).collect();
        let refs: Vec<&[u32]> = documents.iter().map(Vec::as_slice).collect();
        let mut settings = settings();
        settings.min_crop = 0.3;
        settings.max_crop = 0.3;
        let shared = |batch: &CropBatch, i: usize| -> usize {
            let (first, second) = (&batch.crops[i], &batch.crops[batch.pairs + i]);
            second[1..second.len() - 1].iter().filter(|t| first.contains(t)).count()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (mut sharing, mut dropped) = (0, 0);
        for _ in 0..20 {
            let kept = crop_pairs(&refs, &settings, 16, special(), &mut rng, &Device::Cpu).unwrap();
            sharing += (0..kept.pairs).filter(|i| shared(&kept, *i) > 0).count();
        }
        settings.shared_token_drop = 1.0;
        for _ in 0..20 {
            let batch =
                crop_pairs(&refs, &settings, 16, special(), &mut rng, &Device::Cpu).unwrap();
            for i in 0..batch.pairs {
                let second = &batch.crops[batch.pairs + i];
                assert_eq!((second[0], *second.last().unwrap()), (2, 3));
                let length = second.len() - 2;
                // A span whose every token is in the first crop stays whole rather than empty.
                assert!(shared(&batch, i) == 0 || length == 12, "{:?} {second:?}", batch.crops[i]);
                dropped += usize::from(length < 12);
            }
        }
        assert!(sharing > 40, "crops of a document share tokens: {sharing} of 80");
        assert!(dropped > 40, "shared tokens are dropped: {dropped} of 80");
    }

    /// Every trainable tensor but the MLM head's own gets a gradient from the contrastive loss
    /// (the head is trained by the cloze loss): candle's fast LayerNorm and softmax would
    /// silently pass none.
    #[test]
    fn the_loss_reaches_every_encoder_weight() {
        for layers in [2, 0] {
            the_loss_reaches_every_weight_of_an_encoder_with(layers);
        }
    }

    fn the_loss_reaches_every_weight_of_an_encoder_with(layers: usize) {
        let config: BertConfig = serde_json::from_value(serde_json::json!({
            "vocab_size": 60, "hidden_size": 16, "num_hidden_layers": layers,
            "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 32,
        }))
        .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let model = BertForMaskedLm::new(&config, &mut rng, &Device::Cpu).unwrap();
        let documents: Vec<Vec<u32>> =
            (0..4).map(|d| (0..20).map(|t| (d * 11 + t * 3) % 50 + 5).collect()).collect();
        let refs: Vec<&[u32]> = documents.iter().map(Vec::as_slice).collect();
        let batch = crop_pairs(&refs, &settings(), 24, special(), &mut rng, &Device::Cpu).unwrap();
        let (loss, _) = contrastive_loss(&model, &batch, 0.05, Some(&mut rng)).unwrap();
        assert!(loss.to_scalar::<f32>().unwrap() > 0.0);
        let gradients = loss.backward().unwrap();
        for (name, var) in model.parameters().iter() {
            // The head's transform, norm and bias see only the cloze loss; token_type
            // embeddings of type 1 are never used.
            if name.starts_with("cls.predictions") {
                continue;
            }
            let gradient = gradients
                .get(var)
                .unwrap_or_else(|| panic!("{name} ({layers} layers): no gradient"));
            let size = gradient.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(size > 0.0, "{name} ({layers} layers): zero gradient");
        }
    }
}
