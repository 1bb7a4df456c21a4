//! Cloze's MLM training against a PyTorch reference, on the shared Gutenberg corpus.
//!
//! `cargo bench -p cloze-benches --bench mlm_reference -- [tiny|small] [STEPS]` (defaults: tiny,
//! 300). Trains with `cloze_mlm::train` (our real loop), then exports the exact batches it
//! consumed, in order, and a set of masked held-out batches; `mlm_reference.py` trains Hugging
//! Face's `BertForMaskedLM` (PyTorch, same config, same recipe and schedule) on those batches,
//! and both models are scored on the same held-out masks. Prints held-out masked-token
//! accuracy, training tokens/s (median over steps) and peak resident memory during training
//! for each side, and writes them to `target/mlm-reference/<preset>-<steps>/result.json`.
//! The Python side needs `torch` and `transformers`: set `CLOZE_PEER_PYTHON` to an interpreter
//! that has them (default `python3`).

use std::io::Write;
use std::path::Path;
use std::process::Command;

use candle_core::{Device, Tensor};
use cloze_mlm::reference::{
    epoch_order, mlm_loss, pack, read_texts, tokenize, MaskedBatch, Masker, SpecialIds,
};
use cloze_mlm::{load_tokenizer, train, Event, TrainConfig, TrainOptions};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Resident memory of this process now, in MiB.
fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap_or("VmRSS: 0 kB");
    line.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()).unwrap_or(0.0) / 1024.0
}

fn write_values<T: Copy>(path: &Path, values: &[T], to_bytes: impl Fn(T) -> [u8; 4]) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for value in values {
        file.write_all(&to_bytes(*value)).unwrap();
    }
}

fn main() {
    // As `cloze train` does: the benchmark measures the program people run.
    cloze_mlm::allocator::reuse_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let preset = args.first().map(String::as_str).unwrap_or("tiny").to_string();
    let steps: u64 = args.get(1).map(|s| s.parse().expect("STEPS is a number")).unwrap_or(300);
    let corpus = cloze_tests::test_data_dir().join("mlm-corpus");
    let (train_file, valid_file) =
        (corpus.join("gutenberg-en-train.txt.gz"), corpus.join("gutenberg-en-valid.txt"));
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = manifest.join("../target/mlm-reference").join(format!("{preset}-{steps}"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();

    let mut config =
        TrainConfig::load(&manifest.join(format!("../configs/{preset}.toml"))).unwrap();
    let t = &mut config.training;
    (t.max_steps, t.warmup_steps, t.eval_every, t.checkpoint_every) =
        (steps, (steps / 10).max(1), steps, steps);
    let settings = config.training.clone();
    let options = TrainOptions {
        config,
        corpus: vec![train_file.clone()],
        valid: vec![valid_file.clone()],
        out: work.join("cloze"),
        init: None,
        resume: false,
        stop_after: None,
        device: Device::Cpu,
    };
    eprintln!("training Cloze ({preset}, {steps} steps) ...");
    let (mut rates, mut peak) = (Vec::new(), 0f64);
    train(&options, &mut |event| {
        if let Event::Step { step, tokens, seconds, .. } = event {
            // The first steps warm caches and allocators up; PyTorch's are skipped alike.
            if *step > 10 {
                rates.push(*tokens as f64 / seconds);
            }
            peak = peak.max(rss_mb());
        }
    })
    .unwrap();

    eprintln!("exporting the batches ...");
    let tokenizer = load_tokenizer(&work.join("cloze")).unwrap();
    let special = SpecialIds::of(&tokenizer).unwrap();
    let sequences = pack(
        &tokenize(&tokenizer, &read_texts(&[train_file]).unwrap()).unwrap(),
        settings.packing,
        settings.max_len,
        special,
    );
    let (mut rows, mut epoch, mut position) = (Vec::new(), 0, 0);
    let mut order = epoch_order(sequences.len(), settings.seed, 0);
    for _ in 0..steps as usize * settings.batch_size * settings.gradient_accumulation {
        if position == order.len() {
            (epoch, position) = (epoch + 1, 0);
            order = epoch_order(sequences.len(), settings.seed, epoch);
        }
        rows.extend_from_slice(&sequences[order[position]]);
        position += 1;
    }
    write_values(&work.join("train.u32"), &rows, u32::to_le_bytes);

    let mut valid = pack(
        &tokenize(&tokenizer, &read_texts(&[valid_file]).unwrap()).unwrap(),
        settings.packing,
        settings.max_len,
        special,
    );
    valid.truncate(settings.eval_sequences);
    let masker = Masker::for_tokenizer(&tokenizer, settings.mask_rate, false).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(1234);
    let (mut inputs, mut labels) = (Vec::new(), Vec::new());
    for sequence in &valid {
        let masked = masker.mask_sequence(sequence, &mut rng);
        let mut row = vec![-100i32; sequence.len()];
        masked.chosen.iter().for_each(|i| row[*i] = sequence[*i] as i32);
        inputs.extend(masked.input_ids);
        labels.extend(row);
    }
    write_values(&work.join("eval_inputs.u32"), &inputs, u32::to_le_bytes);
    write_values(&work.join("eval_labels.i32"), &labels, i32::to_le_bytes);

    // Our model on the exported held-out batches.
    let model =
        cloze_mlm::load(&work.join("cloze"), &mut ChaCha8Rng::seed_from_u64(0), &Device::Cpu)
            .unwrap();
    let (mut correct, mut total, mut loss_sum) = (0usize, 0usize, 0f64);
    let length = settings.max_len;
    for (input, label) in
        inputs.chunks(settings.batch_size * length).zip(labels.chunks(settings.batch_size * length))
    {
        let rows = input.len() / length;
        let positions: Vec<u32> =
            (0..label.len()).filter(|i| label[*i] >= 0).map(|i| i as u32).collect();
        let targets: Vec<u32> = positions.iter().map(|i| label[*i as usize] as u32).collect();
        let batch = MaskedBatch {
            input_ids: Tensor::from_vec(input.to_vec(), (rows, length), &Device::Cpu).unwrap(),
            attention_mask: Tensor::ones((rows, length), candle_core::DType::U32, &Device::Cpu)
                .unwrap(),
            positions: Tensor::new(positions.as_slice(), &Device::Cpu).unwrap(),
            labels: Tensor::new(targets.as_slice(), &Device::Cpu).unwrap(),
            tokens: input.len(),
        };
        let (loss, logits) = mlm_loss(&model, &batch, None).unwrap();
        let predicted: Vec<u32> = logits.argmax(1).unwrap().to_vec1().unwrap();
        correct += predicted.iter().zip(&targets).filter(|(p, t)| p == t).count();
        loss_sum += f64::from(loss.to_scalar::<f32>().unwrap()) * targets.len() as f64;
        total += targets.len();
    }
    let ours = serde_json::json!({
        "tokens_per_second_median": cloze_tests::median(&mut rates),
        "peak_rss_mb": peak,
        "eval_accuracy": correct as f64 / total as f64,
        "eval_loss": loss_sum / total as f64,
        "eval_masked_tokens": total,
    });

    let meta = serde_json::json!({
        "steps": steps, "batch_size": settings.batch_size * settings.gradient_accumulation,
        "max_len": settings.max_len, "learning_rate": settings.learning_rate,
        "warmup_steps": settings.warmup_steps, "weight_decay": settings.weight_decay,
        "max_grad_norm": settings.max_grad_norm, "mask_rate": settings.mask_rate, "seed": settings.seed,
        "vocab_size": tokenizer.get_vocab_size(true), "mask_id": special.mask,
        "special_ids": [special.pad, special.unk, special.cls, special.sep, special.mask],
        "threads": std::thread::available_parallelism().map_or(1, usize::from),
    });
    std::fs::write(work.join("meta.json"), meta.to_string()).unwrap();
    eprintln!("training the PyTorch reference ...");
    let python = cloze_tests::peer_python();
    let output =
        Command::new(&python).arg(manifest.join("mlm_reference.py")).arg(&work).output().unwrap();
    assert!(
        output.status.success(),
        "{python} mlm_reference.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reference: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();

    let number = |side: &serde_json::Value, key: &str| side[key].as_f64().unwrap();
    println!(
        "MLM training, preset {preset}, {steps} steps of {} x {} tokens, Gutenberg",
        settings.batch_size, settings.max_len
    );
    println!("{:<34} {:>12} {:>12} {:>8}", "", "Cloze", "PyTorch", "ratio");
    for (label, key) in [
        ("held-out masked-token accuracy", "eval_accuracy"),
        ("training tokens/s (median)", "tokens_per_second_median"),
        ("peak resident memory, MiB", "peak_rss_mb"),
    ] {
        let (a, b) = (number(&ours, key), number(&reference, key));
        println!("{label:<34} {a:>12.4} {b:>12.4} {:>8.3}", a / b);
    }
    let result = serde_json::json!({ "preset": preset, "steps": steps, "cloze": ours, "pytorch": reference });
    std::fs::write(work.join("result.json"), serde_json::to_string_pretty(&result).unwrap())
        .unwrap();
    cloze_tests::save_bench_result(&format!("mlm-reference-{preset}-{steps}"), &result);
}
