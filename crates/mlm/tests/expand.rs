//! Document expansion with the MLM head: what it adds, how long texts count, what it refuses.

use std::collections::HashSet;

use candle_core::Device;
use cloze_mlm::Expander;
use cloze_tests::{minilm_dir, small_model};

const TEXTS: [&str; 3] = [
    "the cat sat on the mat and the dog slept by the door",
    "proteins fold into shapes that decide what each enzyme can do",
    "rivers carry sediment from the mountains down to the sea",
];

/// A model whose vocabulary holds the whole words of `TEXTS` (WordPiece merges what it sees
/// more than once), with an untrained head: what it predicts is arbitrary but fixed.
fn model(dir: &std::path::Path, seed: u64) -> std::path::PathBuf {
    let training: Vec<&str> = TEXTS.iter().cycle().take(3 * TEXTS.len()).copied().collect();
    small_model(dir, &training, 64, seed)
}

fn tokens(dir: &std::path::Path, text: &str) -> Vec<String> {
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    tokenizer.encode(text, false).unwrap().get_tokens().to_vec()
}

#[test]
fn expansions_are_new_whole_words_ranked_by_expected_count() {
    let dir = tempfile::tempdir().unwrap();
    let model = model(dir.path(), 1);
    let expander = Expander::load(&model, &Device::Cpu).unwrap();
    let expansions = expander.expand(&TEXTS, 8, 64).unwrap();
    assert_eq!(expansions.len(), TEXTS.len());
    for (text, expansion) in TEXTS.iter().zip(&expansions) {
        assert_eq!(expansion.len(), 8, "{text}: {expansion:?}");
        let present: HashSet<String> = tokens(&model, text).into_iter().collect();
        for term in expansion {
            assert!(!present.contains(&term.term), "{} is already in {text:?}", term.term);
            assert!(term.term.chars().all(char::is_alphabetic), "{} is no word", term.term);
            assert!(term.weight > 0.0);
        }
        assert!(expansion.windows(2).all(|pair| pair[0].weight >= pair[1].weight));
        // Each counted position's distribution sums to 1.
        let counted = tokens(&model, text).len() as f32;
        assert!(expansion.iter().map(|t| t.weight).sum::<f32>() < counted);
    }
}

#[test]
fn a_long_text_counts_every_window() {
    let dir = tempfile::tempdir().unwrap();
    let model = model(dir.path(), 2);
    let expander = Expander::load(&model, &Device::Cpu).unwrap();
    // A window holds the text exactly ([CLS] and [SEP] besides), so the doubled text is two
    // windows, each the text alone: every word's expected count doubles.
    let text = TEXTS[1];
    let window = tokens(&model, text).len() + 2;
    let doubled = format!("{text} {text}");
    let once = expander.expand(&[text], 10, window).unwrap().remove(0);
    let twice = expander.expand(&[&doubled], 10, window).unwrap().remove(0);
    assert_eq!(
        once.iter().map(|t| &t.term).collect::<Vec<_>>(),
        twice.iter().map(|t| &t.term).collect::<Vec<_>>()
    );
    for (one, two) in once.iter().zip(&twice) {
        assert!((two.weight - 2.0 * one.weight).abs() < 1e-4 * two.weight, "{one:?} {two:?}");
    }
    // In one window as long as the model allows, the two halves see each other: not a sum.
    let joined = expander.expand(&[&doubled], 10, 64).unwrap().remove(0);
    assert_ne!(joined, twice);
}

#[test]
fn a_model_without_its_mlm_head_is_refused() {
    let error = Expander::load(&minilm_dir(), &Device::Cpu).err().expect("no MLM head");
    let message = error.to_string();
    assert!(message.contains("model.safetensors") && message.contains("MLM head"), "{message}");
}
