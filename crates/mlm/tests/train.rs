//! The training loop: presets load, a run repeats exactly, and a resumed run continues as if
//! it had never stopped.

use std::path::{Path, PathBuf};

use candle_core::Device;
use cloze_mlm::{train, Event, TrainConfig, TrainOptions};

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

#[test]
fn every_preset_loads() {
    for name in ["tiny", "small", "base", "retrieval"] {
        let config = TrainConfig::load(&configs_dir().join(format!("{name}.toml"))).unwrap();
        assert!(config.model.hidden_size >= 128, "{name}");
        assert_eq!(config.training.contrastive.is_some(), name == "retrieval", "{name}");
    }
}

/// The contrastive loss joins the cloze loss, is logged, and a resumed run still repeats the
/// uninterrupted one exactly (the crops come from the saved generator).
#[test]
fn a_contrastive_run_logs_its_pair_loss_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus(dir.path());
    let mut config = test_config();
    config.training.max_steps = 8;
    config.training.contrastive = Some(small_contrastive());
    let straight = dir.path().join("straight");
    train(&options(&config, &corpus, &straight), &mut |_| {}).unwrap();
    let pair_losses: Vec<f64> = step_records(&straight)
        .iter()
        .filter_map(|record| record["contrastive_loss"].as_f64())
        .collect();
    assert_eq!(pair_losses.len(), 8);
    assert!(pair_losses.iter().all(|l| l.is_finite() && *l > 0.0), "{pair_losses:?}");

    let interrupted = dir.path().join("interrupted");
    stop_and_resume(&options(&config, &corpus, &interrupted), 3);
    assert_eq!(losses(&interrupted), losses(&straight));

    // Batches that pair lexical neighbours draw other documents, and resume as exactly.
    let mut paired = config.clone();
    paired.training.contrastive.as_mut().unwrap().neighbour_share = 0.5;
    let paired_straight = dir.path().join("paired-straight");
    train(&options(&paired, &corpus, &paired_straight), &mut |_| {}).unwrap();
    assert_ne!(losses(&paired_straight), losses(&straight));
    let paired_interrupted = dir.path().join("paired-interrupted");
    stop_and_resume(&options(&paired, &corpus, &paired_interrupted), 3);
    assert_eq!(losses(&paired_interrupted), losses(&paired_straight));
    paired.training.contrastive.as_mut().unwrap().neighbour_share = 0.7;
    let error = paired.validate().unwrap_err();
    assert!(error.contains("training.contrastive.neighbour_share"), "{error}");

    // A bottleneck decoder adds its loss, is saved with the checkpoints, and resumes as exactly;
    // the written model still embeds.
    let mut rebuilt = config.clone();
    rebuilt.training.contrastive.as_mut().unwrap().bottleneck_weight = 0.5;
    let rebuilt_straight = dir.path().join("rebuilt-straight");
    train(&options(&rebuilt, &corpus, &rebuilt_straight), &mut |_| {}).unwrap();
    let records = step_records(&rebuilt_straight);
    assert!(
        records.iter().all(|r| r["bottleneck_loss"].as_f64().is_some_and(|l| l > 0.0)),
        "{records:?}"
    );
    assert_ne!(losses(&rebuilt_straight), losses(&straight));
    let rebuilt_interrupted = dir.path().join("rebuilt-interrupted");
    stop_and_resume(&options(&rebuilt, &corpus, &rebuilt_interrupted), 3);
    assert_eq!(losses(&rebuilt_interrupted), losses(&rebuilt_straight));
    cloze_mlm::Embedder::load(&rebuilt_straight, &Device::Cpu).unwrap();
    rebuilt.training.contrastive.as_mut().unwrap().bottleneck_mask_rate = 1.0;
    let error = rebuilt.validate().unwrap_err();
    assert!(error.contains("training.contrastive.bottleneck_mask_rate"), "{error}");

    let mut starved = config.clone();
    starved.training.contrastive.as_mut().unwrap().min_tokens = 1000;
    let error =
        train(&options(&starved, &corpus, &dir.path().join("starved")), &mut |_| {}).unwrap_err();
    assert!(
        error.to_string().contains("training.contrastive needs at least batch_size"),
        "{error}"
    );
}

/// With the cloze loss weighted 0, a run trains on the contrastive loss alone (the logged loss
/// is the pair loss), and the model it writes embeds at `embed_max_len`, not at the crops'
/// length. Settings that leave nothing to train, or embed past the positions, are refused.
/// The model is a static encoder, with no Transformer layer, as the retrieval preset's is.
#[test]
fn a_run_for_search_alone_skips_the_cloze_task() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus(dir.path());
    let mut config = test_config();
    config.model.num_hidden_layers = 0;
    config.training.max_steps = 4;
    config.training.mlm_weight = 0.0;
    config.training.embed_max_len = Some(48);
    config.training.idf_pooling = true;
    config.training.contrastive = Some(small_contrastive());
    config.training.held_out_documents = 5;
    let out = dir.path().join("search");
    let jsonl = dir.path().join("more.jsonl");
    let documents: Vec<String> = std::fs::read_to_string(&corpus)
        .unwrap()
        .lines()
        .take(30)
        .enumerate()
        .map(|(i, text)| {
            serde_json::json!({"_id": format!("m{i}"), "title": "", "text": text}).to_string()
        })
        .collect();
    std::fs::write(&jsonl, documents.join("\n")).unwrap();
    let mut run = options(&config, &corpus, &out);
    run.corpus.push(jsonl);
    train(&run, &mut |_| {}).unwrap();
    let records = step_records(&out);
    assert_eq!(records.len(), 4);
    // Five documents of the JSONL corpus (none of the plain text) are listed as left out.
    let listed = cloze_mlm::HeldOutDocuments::read(&out).unwrap().unwrap();
    assert_eq!(listed.len(), 5);
    let lines = std::fs::read_to_string(&corpus).unwrap();
    let left_out: Vec<usize> = (0..30).filter(|i| listed.lists(&format!("m{i}"))).collect();
    assert_eq!(left_out.len(), 5);
    let text = lines.lines().nth(left_out[0]).unwrap();
    assert!(listed.contains(&format!("m{}", left_out[0]), text));
    for record in &records {
        assert_eq!(record["loss"], record["contrastive_loss"], "{record}");
        assert!(record["tokens_per_second"].as_f64().unwrap() > 0.0, "{record}");
        assert!(record["seconds"].as_f64().unwrap() > 0.0, "{record}");
    }
    let sentence_bert: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("sentence_bert_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(sentence_bert["max_seq_length"], 48);
    // The IDF weights ship with the model, and embedders pool with them.
    let weights: Vec<f32> = serde_json::from_str(
        &std::fs::read_to_string(out.join(cloze_mlm::TOKEN_WEIGHTS_FILE)).unwrap(),
    )
    .unwrap();
    let model: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(model["num_hidden_layers"], 0);
    let embedder = cloze_mlm::Embedder::load(&out, &Device::Cpu).unwrap();
    assert_eq!(embedder.pooling(), cloze_mlm::Pooling::IdfMean);
    assert!(weights.iter().all(|w| w.is_finite() && *w >= 0.0));
    assert!(weights.iter().any(|w| *w > 0.0));
    let text = ["the cat sat on a mat while dogs ran"];
    let weighted = embedder.embed(&text).unwrap();
    let plain = embedder.with_pooling(cloze_mlm::Pooling::Mean).unwrap().embed(&text).unwrap();
    assert_ne!(weighted, plain);

    let mut idle = config.clone();
    idle.training.contrastive = None;
    let error = idle.validate().unwrap_err();
    assert!(error.contains("nothing to train"), "{error}");
    let mut too_long = config.clone();
    too_long.training.embed_max_len = Some(65);
    let error = too_long.validate().unwrap_err();
    assert!(error.contains("training.embed_max_len (65)"), "{error}");
}

/// With a cloze stage, the first steps train the cloze task alone and the contrastive loss
/// joins after them (only then is it logged); a run stopped inside the stage resumes exactly
/// across its end. A stage with nothing after it, or with no contrastive training, is refused.
#[test]
fn a_cloze_stage_comes_before_contrastive_training() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus(dir.path());
    let mut config = test_config();
    (config.training.max_steps, config.training.cloze_steps) = (7, 3);
    (config.training.mlm_weight, config.training.warmup_steps) = (0.0, 1);
    config.training.contrastive = Some(small_contrastive());
    let straight = dir.path().join("straight");
    train(&options(&config, &corpus, &straight), &mut |_| {}).unwrap();
    let steps: Vec<(u64, bool)> = step_records(&straight)
        .iter()
        .map(|record| (record["step"].as_u64().unwrap(), record.get("contrastive_loss").is_some()))
        .collect();
    let expected: Vec<(u64, bool)> = (1..=7).map(|step| (step, step > 3)).collect();
    assert_eq!(steps, expected);
    let saved = std::fs::read_to_string(straight.join("train_config.toml")).unwrap();
    assert!(saved.contains("cloze_steps = 3"), "{saved}");

    let interrupted = dir.path().join("interrupted");
    stop_and_resume(&options(&config, &corpus, &interrupted), 2);
    assert_eq!(losses(&interrupted), losses(&straight));

    let mut endless = config.clone();
    endless.training.cloze_steps = 7;
    let error = endless.validate().unwrap_err();
    assert!(error.contains("training.cloze_steps (7) must be below training.max_steps (7)"));
    let mut alone = config.clone();
    alone.training.contrastive = None;
    let error = alone.validate().unwrap_err();
    assert!(error.contains("training.cloze_steps needs a training.contrastive section"));
}

/// Contrastive settings for the tiny test corpus: 4 pairs a batch.
fn small_contrastive() -> cloze_mlm::ContrastiveSettings {
    cloze_mlm::ContrastiveSettings {
        weight: 1.0,
        batch_size: 4,
        temperature: 0.1,
        min_crop: 0.3,
        max_crop: 0.7,
        min_tokens: 8,
        neighbour_share: 0.0,
        bottleneck_weight: 0.0,
        bottleneck_mask_rate: 0.5,
        shared_token_drop: 0.0,
    }
}

/// A config small enough to train in a test, from the tiny preset.
fn test_config() -> TrainConfig {
    let mut config = TrainConfig::load(&configs_dir().join("tiny.toml")).unwrap();
    config.model.hidden_size = 32;
    config.model.intermediate_size = 64;
    config.model.max_position_embeddings = 64;
    config.tokenizer.vocab_size = 300;
    let t = &mut config.training;
    (t.max_len, t.batch_size, t.gradient_accumulation, t.max_steps, t.warmup_steps) =
        (32, 4, 2, 20, 4);
    (t.eval_every, t.checkpoint_every, t.valid_fraction) = (5, 100, 0.1);
    config
}

fn corpus(dir: &Path) -> PathBuf {
    let path = dir.join("corpus.txt");
    let words = [
        "the", "cat", "sat", "on", "a", "mat", "while", "dogs", "ran", "through", "fields", "of",
        "grass",
    ];
    let lines: Vec<String> = (0..120)
        .map(|i| {
            (0..8 + i % 7)
                .map(|j| words[(i * 7 + j * 3) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

fn options(config: &TrainConfig, corpus: &Path, out: &Path) -> TrainOptions {
    TrainOptions {
        config: config.clone(),
        corpus: vec![corpus.to_path_buf()],
        valid: vec![],
        out: out.to_path_buf(),
        init: None,
        resume: false,
        stop_after: None,
        device: Device::Cpu,
    }
}

/// Trains as `run` says but stops after `step`, then resumes to the end.
fn stop_and_resume(run: &TrainOptions, step: u64) {
    train(&TrainOptions { stop_after: Some(step), ..run.clone() }, &mut |_| {}).unwrap();
    train(&TrainOptions { resume: true, ..run.clone() }, &mut |_| {}).unwrap();
}

/// The records of a run's metrics log that a training step wrote (not an evaluation's).
fn step_records(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|record| record.get("loss").is_some())
        .collect()
}

/// Step losses, by step, from a run's metrics log.
fn losses(out: &Path) -> Vec<(u64, f64)> {
    step_records(out)
        .iter()
        .map(|record| (record["step"].as_u64().unwrap(), record["loss"].as_f64().unwrap()))
        .collect()
}

#[test]
fn a_resumed_run_gives_the_same_losses_as_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus(dir.path());
    let config = test_config();

    let straight = dir.path().join("straight");
    let mut events = Vec::new();
    let evaluation =
        train(&options(&config, &corpus, &straight), &mut |e| events.push(e.clone())).unwrap();
    assert!(matches!(events[0], Event::Ready { start_step: 0, .. }));
    assert_eq!(events.iter().filter(|e| matches!(e, Event::Evaluation(_))).count(), 4);
    assert!(evaluation.accuracy > 0.0 && evaluation.perplexity > 1.0);
    for file in
        ["config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "train_config.toml"]
    {
        assert!(straight.join(file).is_file(), "{file} missing");
    }

    let interrupted = dir.path().join("interrupted");
    let mut first = options(&config, &corpus, &interrupted);
    first.stop_after = Some(10);
    train(&first, &mut |_| {}).unwrap();
    assert!(!interrupted.join("model.safetensors").exists(), "no final model before max_steps");
    let mut rest = options(&config, &corpus, &interrupted);
    rest.resume = true;
    let mut resumed_events = Vec::new();
    let resumed_evaluation = train(&rest, &mut |e| resumed_events.push(e.clone())).unwrap();
    assert!(matches!(resumed_events[0], Event::Ready { start_step: 10, .. }));

    let expected = losses(&straight);
    assert_eq!(expected.len(), 20);
    assert_eq!(losses(&interrupted), expected);
    assert_eq!(resumed_evaluation, evaluation);
    assert_eq!(
        std::fs::read(straight.join("model.safetensors")).unwrap(),
        std::fs::read(interrupted.join("model.safetensors")).unwrap()
    );

    // The training repeats: the loss falls on this tiny, repetitive text.
    assert!(expected[19].1 < expected[0].1, "loss did not fall: {expected:?}");
}

#[test]
fn bad_runs_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus(dir.path());
    let mut config = test_config();
    config.training.max_steps = 1;
    let out = dir.path().join("run");
    train(&options(&config, &corpus, &out), &mut |_| {}).unwrap();
    let again = train(&options(&config, &corpus, &out), &mut |_| {}).unwrap_err().to_string();
    assert!(again.contains("already holds a training run"), "{again}");
    let mut changed = options(&config, &corpus, &out);
    changed.resume = true;
    changed.config.training.learning_rate = 0.5;
    let error = train(&changed, &mut |_| {}).unwrap_err().to_string();
    assert!(error.contains("settings differ"), "{error}");
    let mut bad = options(&config, &corpus, &dir.path().join("bad"));
    bad.config.training.max_len = 1000;
    let error = train(&bad, &mut |_| {}).unwrap_err().to_string();
    assert!(error.contains("max_len"), "{error}");
}

/// Domain-adaptive pre-training: all-MiniLM-L6-v2 (a BertModel, no MLM head, a tokenizer that
/// pads to 128) continues with the cloze task, and its settings travel with it.
#[test]
fn training_continues_from_a_hugging_face_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus(dir.path());
    let mut config = test_config();
    (
        config.training.max_steps,
        config.training.batch_size,
        config.training.gradient_accumulation,
    ) = (2, 2, 1);
    let out = dir.path().join("adapted");
    let mut adapted = options(&config, &corpus, &out);
    adapted.init = Some(cloze_tests::minilm_dir());
    let mut sequences = 0;
    train(&adapted, &mut |e| {
        if let Event::Ready { train_sequences, .. } = e {
            sequences = *train_sequences
        }
    })
    .unwrap();
    // Blocks of 32 tokens from the whole text, not one padded sequence per line.
    assert!(sequences < 100, "{sequences} sequences: the text was padded line by line");
    let model: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        (model["hidden_size"].as_u64(), model["num_hidden_layers"].as_u64()),
        (Some(384), Some(6))
    );
    assert!(
        out.join("sentence_bert_config.json").is_file()
            && out.join("1_Pooling/config.json").is_file()
    );
    let embedder = cloze_mlm::Embedder::load(&out, &Device::Cpu).unwrap();
    assert_eq!(embedder.max_len(), 256);
}
