//! A bottleneck for the pooled vector, after RetroMAE (Xiao et al., "RetroMAE: Pre-Training
//! Retrieval-oriented Language Models Via Masked Auto-Encoder", 2022) and Condenser (Gao and
//! Callan, 2021).
//!
//! The contrastive loss asks a crop's vector only to tell its partner apart from the batch's
//! other documents, which a few rare words can do. Here a one-layer decoder must rebuild the
//! crop, most of its tokens masked, from the crop's vector and the few tokens left: the words
//! the mask hides can only come through the vector, so the vector has to carry the crop's
//! content. The decoder is kept weak on purpose, so that it cannot do without the vector.

use candle_core::{Result, Tensor};
use rand_chacha::ChaCha8Rng;

use crate::masking::{loss_at_chosen, MaskedBatch};
use crate::model::BertForMaskedLm;

/// The decoder's cross-entropy at the masked positions of `masked` (the same texts whose
/// pooled `vectors`, `[batch, hidden]`, it is given), over the whole vocabulary. Dropout is on
/// when a generator is given. The model needs its bottleneck decoder
/// ([`BertForMaskedLm::add_bottleneck_decoder`]).
pub fn bottleneck_loss(
    model: &BertForMaskedLm,
    vectors: &Tensor,
    masked: &MaskedBatch,
    rng: Option<&mut ChaCha8Rng>,
) -> Result<Tensor> {
    let hidden =
        model.decode_from_vectors(vectors, &masked.input_ids, &masked.attention_mask, rng)?;
    let (loss, _) = loss_at_chosen(model, &hidden, masked)?;
    Ok(loss)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use rand::SeedableRng;

    use super::*;
    use crate::config::BertConfig;
    use crate::embed::mean_pool;
    use crate::masking::Masker;

    fn model(rng: &mut ChaCha8Rng) -> BertForMaskedLm {
        let config: BertConfig = serde_json::from_value(serde_json::json!({
            "vocab_size": 60, "hidden_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 32,
        }))
        .unwrap();
        let mut model = BertForMaskedLm::new(&config, rng, &Device::Cpu).unwrap();
        model.add_bottleneck_decoder(rng).unwrap();
        model
    }

    fn masker() -> Masker {
        let special = (0..60).map(|id| id < 5).collect();
        Masker { rate: 0.5, mask_id: 4, pad_id: 0, vocab_size: 60, special, continuation: None }
    }

    /// The loss reaches the decoder and, through the pooled vector alone, every encoder weight:
    /// candle's fast LayerNorm and softmax would silently pass no gradient.
    #[test]
    fn the_loss_reaches_the_decoder_and_the_encoder_through_the_vector() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let model = model(&mut rng);
        let texts: Vec<Vec<u32>> = (0..4)
            .map(|d| {
                let mut text = vec![2];
                text.extend((0..12).map(|t| (d * 11 + t * 3) % 50 + 5));
                text.push(3);
                text
            })
            .collect();
        let masked = masker().mask_batch(&texts, &mut rng, &Device::Cpu).unwrap();
        // The encoder sees the texts whole; only the decoder's copy is masked.
        let input_ids = Tensor::new(texts.clone(), &Device::Cpu).unwrap();
        let hidden = model.encode(&input_ids, &masked.attention_mask, Some(&mut rng)).unwrap();
        let vectors = mean_pool(&hidden, &masked.attention_mask).unwrap();
        let loss = bottleneck_loss(&model, &vectors, &masked, Some(&mut rng)).unwrap();
        assert!(loss.to_scalar::<f32>().unwrap() > 0.0);
        let gradients = loss.backward().unwrap();
        let mut decoder = 0;
        for (name, var) in model.parameters().iter() {
            decoder += usize::from(name.starts_with("cls.bottleneck."));
            let gradient = gradients.get(var).unwrap_or_else(|| panic!("{name}: no gradient"));
            let size = gradient.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(size > 0.0, "{name}: zero gradient");
        }
        assert_eq!(decoder, 16, "a whole layer: 6 linear maps and 2 norms");
    }

    /// The decoder's tensors are saved with the model and come back when it is loaded, so a
    /// resumed run goes on with the same decoder; a model trained without one loads without.
    #[test]
    fn the_decoder_travels_with_the_checkpoint() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let model = model(&mut rng);
        let dir = tempfile::tempdir().unwrap();
        crate::checkpoint::save(&model, dir.path()).unwrap();
        let loaded = crate::checkpoint::load(dir.path(), &mut rng, &Device::Cpu).unwrap();
        let names = |m: &BertForMaskedLm| -> Vec<String> {
            m.parameters().iter().map(|(name, _)| name.to_string()).collect()
        };
        assert_eq!(names(&loaded), names(&model));
        let fresh = BertForMaskedLm::new(model.config(), &mut rng, &Device::Cpu).unwrap();
        assert!(!names(&fresh).iter().any(|name| name.starts_with("cls.bottleneck.")));
    }
}
