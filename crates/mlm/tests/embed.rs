//! Embeddings: an imported all-MiniLM-L6-v2 gives what candle-transformers' `BertModel` with
//! mean pooling gives, under the model folder's own settings.

use candle_core::{DType, Device, Tensor};
use cloze_mlm::{Embedder, Pooling};
use cloze_tests::minilm_dir;

#[test]
fn minilm_embeddings_match_candle_transformers_bert_model() {
    let device = Device::Cpu;
    let dir = minilm_dir();
    let embedder = Embedder::load(&dir, &device).unwrap();
    assert_eq!(embedder.max_len(), 256, "sentence_bert_config.json, not tokenizer.json's 128");
    assert_eq!((embedder.pooling(), embedder.dimension()), (Pooling::Mean, 384));

    let texts =
        ["Vitamin D deficiency raises the risk of fractures.", "A cat sat on the mat.", "short"];
    let ours = embedder.embed(&texts).unwrap();

    let config: candle_transformers::models::bert::Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &device,
        )
        .unwrap()
    };
    let reference = candle_transformers::models::bert::BertModel::load(vb, &config).unwrap();
    let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    tokenizer.with_padding(Some(tokenizers::PaddingParams::default()));
    let encodings = tokenizer.encode_batch(texts.to_vec(), true).unwrap();
    let ids: Vec<Vec<u32>> = encodings.iter().map(|e| e.get_ids().to_vec()).collect();
    let mask: Vec<Vec<u32>> = encodings.iter().map(|e| e.get_attention_mask().to_vec()).collect();
    let ids = Tensor::new(ids, &device).unwrap();
    let mask = Tensor::new(mask, &device).unwrap();
    let hidden = reference.forward(&ids, &ids.zeros_like().unwrap(), Some(&mask)).unwrap();
    let weights = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
    let mean = hidden
        .broadcast_mul(&weights)
        .unwrap()
        .sum(1)
        .unwrap()
        .broadcast_div(&weights.sum(1).unwrap())
        .unwrap();
    let expected: Vec<Vec<f32>> = mean.to_vec2().unwrap();

    for (ours, expected) in ours.iter().zip(&expected) {
        let norm = expected.iter().map(|x| x * x).sum::<f32>().sqrt();
        let largest =
            ours.iter().zip(expected).map(|(a, b)| (a - b / norm).abs()).fold(0f32, f32::max);
        assert!(largest < 1e-4, "embeddings differ by {largest}");
        assert!((ours.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5, "not unit length");
    }
}

#[test]
fn long_texts_use_the_sentence_transformers_length_not_the_tokenizer_file() {
    let embedder = Embedder::load(&minilm_dir(), &Device::Cpu).unwrap();
    // "hello" is one token: texts that differ after 150 tokens differ within 256 (the
    // sentence-transformers length) but not within 128 (tokenizer.json's).
    let differ = |prefix: usize| {
        let (a, b) =
            ("hello ".repeat(prefix) + "alpha beta", "hello ".repeat(prefix) + "gamma delta");
        let vectors = embedder.embed(&[&a, &b]).unwrap();
        vectors[0] != vectors[1]
    };
    assert!(differ(150), "truncated before 256 tokens");
    assert!(!differ(300), "not truncated at 256 tokens");
    let cls =
        Embedder::load(&minilm_dir(), &Device::Cpu).unwrap().with_pooling(Pooling::Cls).unwrap();
    assert_ne!(cls.embed(&["a cat"]).unwrap(), embedder.embed(&["a cat"]).unwrap());
}

#[test]
fn batches_embedded_side_by_side_give_each_text_its_own_vector_in_order() {
    let embedder = Embedder::load(&minilm_dir(), &Device::Cpu).unwrap().with_batch_size(2);
    let texts: Vec<String> = (0..9)
        .map(|i| format!("text {i} about {}", "vitamin D and bone fractures ".repeat(i % 4)))
        .collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let done = std::sync::atomic::AtomicUsize::new(0);
    // Three workers whatever the machine has, so that batches really are embedded at once.
    let together = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap().install(|| {
        embedder
            .embed_reporting(&texts, &|n| {
                done.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            })
            .unwrap()
    });
    assert_eq!(done.into_inner(), texts.len(), "progress counts every text once");
    for (text, vector) in texts.iter().zip(&together) {
        let alone = &embedder.embed(&[text]).unwrap()[0];
        let largest = vector.iter().zip(alone).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(largest < 1e-5, "{text:?}: {largest} from its vector alone");
    }
}
