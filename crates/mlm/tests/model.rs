//! The model trains: every parameter gets a gradient, it can learn, and its checkpoints are
//! Hugging Face's `BertForMaskedLM`.

use candle_core::{DType, Device, Tensor};
use cloze_mlm::reference::{mlm_loss, AdamW, AdamWSettings, Masker};
use cloze_mlm::{BertConfig, BertForMaskedLm};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const PAD: u32 = 0;
const CLS: u32 = 2;
const SEP: u32 = 3;
const MASK: u32 = 4;

fn tiny_config(vocab_size: usize) -> BertConfig {
    serde_json::from_value(serde_json::json!({
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
    }))
    .unwrap()
}

fn masker(vocab_size: usize, rate: f64) -> Masker {
    let mut special = vec![false; vocab_size];
    for id in [PAD, 1, CLS, SEP, MASK] {
        special[id as usize] = true;
    }
    Masker {
        rate,
        mask_id: MASK,
        pad_id: PAD,
        vocab_size: vocab_size as u32,
        special,
        continuation: None,
    }
}

fn random_sequences(rng: &mut ChaCha8Rng, count: usize, vocab_size: u32) -> Vec<Vec<u32>> {
    (0..count)
        .map(|i| {
            let length = 8 + i % 5;
            let mut ids = vec![CLS];
            ids.extend((0..length).map(|_| rng.random_range(5..vocab_size)));
            ids.push(SEP);
            ids
        })
        .collect()
}

#[test]
fn every_trainable_tensor_gets_a_nonzero_gradient() {
    let device = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let model = BertForMaskedLm::new(&tiny_config(50), &mut rng, &device).unwrap();
    let sequences = random_sequences(&mut rng, 6, 50);
    let batch = masker(50, 0.5).mask_batch(&sequences, &mut rng, &device).unwrap();
    let (loss, _) = mlm_loss(&model, &batch, Some(&mut rng)).unwrap();
    let grads = loss.backward().unwrap();
    // 16 per layer, 5 in the embeddings, 5 in the head.
    assert_eq!(model.parameters().len(), 2 * 16 + 5 + 5);
    for (name, var) in model.parameters().iter() {
        let grad = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name} has no gradient"));
        let size = grad.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(size > 0.0, "{name} has an all-zero gradient");
    }
}

#[test]
fn dropout_is_seeded_and_only_in_training() {
    let device = Device::Cpu;
    let model =
        BertForMaskedLm::new(&tiny_config(50), &mut ChaCha8Rng::seed_from_u64(0), &device).unwrap();
    let ids = Tensor::new(&[[CLS, 10, 11, 12, SEP]], &device).unwrap();
    let mask = ids.ones_like().unwrap();
    let encode = |rng: Option<&mut ChaCha8Rng>| {
        model.encode(&ids, &mask, rng).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    assert_eq!(encode(None), encode(None));
    let train_a = encode(Some(&mut ChaCha8Rng::seed_from_u64(5)));
    assert_eq!(train_a, encode(Some(&mut ChaCha8Rng::seed_from_u64(5))), "same seed, same dropout");
    assert_ne!(train_a, encode(Some(&mut ChaCha8Rng::seed_from_u64(6))));
    assert_ne!(train_a, encode(None));
}

/// On a tiny, repeated text the masked-token loss goes to nearly zero: the model can learn.
#[test]
fn learns_a_repeated_text() {
    let device = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut config = tiny_config(30);
    config.hidden_dropout_prob = 0.0;
    config.attention_probs_dropout_prob = 0.0;
    let model = BertForMaskedLm::new(&config, &mut rng, &device).unwrap();
    let mut optimizer =
        AdamW::new(model.parameters(), AdamWSettings { weight_decay: 0.0, ..Default::default() })
            .unwrap();
    // The same sentence: every token is predictable from its neighbours.
    let sentence: Vec<u32> = [CLS].into_iter().chain(5..25).chain([SEP]).collect();
    let masker = masker(30, 0.15);
    let mut last = f32::MAX;
    for _ in 0..300 {
        let batch = masker.mask_batch(&vec![sentence.clone(); 8], &mut rng, &device).unwrap();
        let (loss, _) = mlm_loss(&model, &batch, Some(&mut rng)).unwrap();
        let gradients = optimizer.gradients(&loss.backward().unwrap()).unwrap();
        optimizer.step(&gradients, 3e-3, Some(1.0)).unwrap();
        last = loss.to_scalar::<f32>().unwrap();
    }
    assert!(last < 0.05, "loss after 300 steps: {last}");
}

/// A saved checkpoint loads in candle-transformers' `BertForMaskedLM` and gives the same logits.
#[test]
fn checkpoint_matches_candle_transformers_bert_for_masked_lm() {
    let device = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let model = BertForMaskedLm::new(&tiny_config(40), &mut rng, &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    cloze_mlm::save(&model, dir.path()).unwrap();

    let config: candle_transformers::models::bert::Config =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    let weights = dir.path().join("model.safetensors");
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &device).unwrap()
    };
    let reference = candle_transformers::models::bert::BertForMaskedLM::load(vb, &config).unwrap();

    let ids =
        Tensor::new(&[[CLS, 10, 11, 12, 13, SEP], [CLS, 20, 21, SEP, PAD, PAD]], &device).unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], &device).unwrap();
    let expected = reference.forward(&ids, &ids.zeros_like().unwrap(), Some(&mask)).unwrap();
    let hidden = model.encode(&ids, &mask, None).unwrap();
    let ours =
        model.mlm_logits(&hidden.reshape((12, 32)).unwrap()).unwrap().reshape((2, 6, 40)).unwrap();
    let difference =
        (ours - expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(difference < 1e-4, "logits differ by {difference}");

    let reloaded = cloze_mlm::load(dir.path(), &mut rng, &device).unwrap();
    let again = reloaded
        .mlm_logits(&reloaded.encode(&ids, &mask, None).unwrap().reshape((12, 32)).unwrap())
        .unwrap();
    let before = model.mlm_logits(&hidden.reshape((12, 32)).unwrap()).unwrap();
    let difference =
        (again - before).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(difference, 0.0, "save then load changes nothing");
}
