use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use cloze_mlm::{train, Event, TrainConfig, TrainOptions};
use indicatif::{ProgressBar, ProgressStyle};

use crate::progress;

/// Train an encoder on your own text with the cloze task (masked language modelling).
///
/// Trains a WordPiece tokenizer and a BERT encoder from scratch (or continues from a Hugging
/// Face BERT checkpoint with --init), and writes a model folder in the Hugging Face layout to
/// --out: config.json, model.safetensors, tokenizer.json, vocab.txt. Checkpoints, the settings
/// and metrics.jsonl (loss, learning rate, tokens/s, held-out masked-token accuracy and
/// perplexity) go there too; --resume continues an interrupted run exactly.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// A preset file: configs/tiny.toml, configs/small.toml, configs/base.toml,
    /// configs/retrieval.toml, or your own [default with --resume: the settings saved in --out].
    #[arg(long, value_name = "FILE", required_unless_present_any = ["resume", "preset"], conflicts_with = "preset")]
    config: Option<PathBuf>,

    /// A built-in preset by name, the same as the file in configs/: tiny, small, base, or
    /// retrieval (an encoder for search, trained from scratch in under an hour on your
    /// documents to match spans cropped from the same document; no labels needed).
    #[arg(long, value_name = "NAME", value_parser = PRESETS.map(|(name, _)| name))]
    preset: Option<String>,

    /// Training text: plain text (.txt, .txt.gz; one document or paragraph a line) or JSONL
    /// corpora (.jsonl, .jsonl.gz; title and text of each document).
    #[arg(long, value_name = "FILE", num_args = 1.., required = true)]
    corpus: Vec<PathBuf>,

    /// Held-out text to evaluate on [default: training.valid_fraction of the training texts].
    #[arg(long, value_name = "FILE", num_args = 1..)]
    valid: Vec<PathBuf>,

    /// The folder for the model, checkpoints and logs.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// Start from this Hugging Face BERT model folder (and its tokenizer) instead of from
    /// scratch: domain-adaptive pre-training. A model without an MLM head gets a new one.
    #[arg(long, value_name = "DIR")]
    init: Option<PathBuf>,

    /// Continue the run in --out from its latest checkpoint.
    #[arg(long)]
    resume: bool,

    /// Stop after this step with a checkpoint, keeping the schedule of the full run (resume
    /// later with --resume).
    #[arg(long, value_name = "STEP")]
    stop_after: Option<u64>,

    /// Override training.max_steps.
    #[arg(long, value_name = "N")]
    max_steps: Option<u64>,

    /// Override training.batch_size.
    #[arg(long, value_name = "N")]
    batch_size: Option<u64>,

    /// Override training.learning_rate.
    #[arg(long, value_name = "RATE")]
    lr: Option<f64>,

    /// Override training.seed.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,

    /// Override training.max_len (tokens per sequence).
    #[arg(long, value_name = "N")]
    max_len: Option<u64>,

    /// Override training.mask_rate (share of tokens chosen for the cloze task).
    #[arg(long, value_name = "RATE")]
    mask_rate: Option<f64>,

    /// Override any setting of the preset, e.g. --set model.hidden_size=256
    /// --set training.schedule=cosine (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let config = resolve_config(&args)?;
    let options = TrainOptions {
        config,
        corpus: args.corpus,
        valid: args.valid,
        out: args.out.clone(),
        init: args.init,
        resume: args.resume,
        stop_after: args.stop_after,
        device: Device::Cpu,
    };
    let max_steps = options.config.training.max_steps;
    let bar = ProgressBar::new(max_steps).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
            .expect("valid template"),
    );
    bar.set_message("reading and tokenizing the text");
    let mut tokens_per_second = None::<f64>;
    let evaluation = train(&options, &mut |event| match event {
        Event::Ready { train_sequences, valid_sequences, parameters, start_step } => {
            bar.set_position(*start_step);
            progress::say(
                &bar,
                format!(
                "training {parameters} parameters on {train_sequences} sequences ({valid_sequences} held out), from step {start_step}"
            ));
        }
        Event::Step { step, loss, learning_rate, tokens, seconds, .. } => {
            let rate = *tokens as f64 / seconds.max(1e-9);
            // A running average: single steps are noisy.
            let smoothed = tokens_per_second.map_or(rate, |previous| 0.9 * previous + 0.1 * rate);
            tokens_per_second = Some(smoothed);
            bar.set_position(*step);
            bar.set_message(format!("loss {loss:.3}  lr {learning_rate:.2e}  {smoothed:.0} tokens/s"));
        }
        Event::Evaluation(e) => progress::say(
            &bar,
            format!(
            "step {}: held-out masked-token accuracy {:.4} (most frequent token: {:.4}), perplexity {:.2} \
             ({} masked tokens)",
            e.step, e.accuracy, e.baseline_accuracy, e.perplexity, e.masked_tokens
        )),
        Event::Checkpoint { path, .. } => tracing::info!("checkpoint written to {}", path.display()),
    })
    .with_context(|| format!("training into {}", args.out.display()))?;
    bar.finish_and_clear();
    println!(
        "step {}: held-out masked-token accuracy {:.4} (most frequent token: {:.4}), perplexity {:.2}; model in {}",
        evaluation.step,
        evaluation.accuracy,
        evaluation.baseline_accuracy,
        evaluation.perplexity,
        args.out.display()
    );
    Ok(())
}

/// The presets shipped in configs/, built in so `--preset` works from any folder.
const PRESETS: [(&str, &str); 4] = [
    ("tiny", include_str!("../../../../configs/tiny.toml")),
    ("small", include_str!("../../../../configs/small.toml")),
    ("base", include_str!("../../../../configs/base.toml")),
    ("retrieval", include_str!("../../../../configs/retrieval.toml")),
];

/// The preset (or the resumed run's settings) with the flags applied.
fn resolve_config(args: &TrainArgs) -> Result<TrainConfig> {
    let (path, text) = match (&args.preset, &args.config) {
        (Some(name), _) => {
            let (_, text) =
                PRESETS.iter().find(|(preset, _)| preset == name).expect("clap checked");
            (PathBuf::from(format!("configs/{name}.toml")), text.to_string())
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            (path.clone(), text)
        }
        (None, None) => {
            let path = args.out.join("train_config.toml");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            (path, text)
        }
    };
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    let named = [
        ("training.max_steps", args.max_steps.map(|v| v.to_string())),
        ("training.batch_size", args.batch_size.map(|v| v.to_string())),
        ("training.learning_rate", args.lr.map(|v| format!("{v:?}"))),
        ("training.seed", args.seed.map(|v| v.to_string())),
        ("training.max_len", args.max_len.map(|v| v.to_string())),
        ("training.mask_rate", args.mask_rate.map(|v| format!("{v:?}"))),
    ];
    for (key, value) in named.iter().filter_map(|(key, value)| Some((*key, value.clone()?))) {
        set(&mut table, key, &value)
            .with_context(|| format!("--{}", key.trim_start_matches("training.")))?;
    }
    for assignment in &args.overrides {
        let Some((key, value)) = assignment.split_once('=') else {
            bail!("--set {assignment}: expected SECTION.KEY=VALUE");
        };
        set(&mut table, key.trim(), value.trim()).with_context(|| format!("--set {assignment}"))?;
    }
    let origin = PathBuf::from(format!("{} (with the command-line overrides)", path.display()));
    Ok(TrainConfig::parse(&toml::to_string(&table)?, &origin)?)
}

/// Sets `section.key` to `value`, read as a TOML value (a bare word is a string).
fn set(table: &mut toml::Table, key: &str, value: &str) -> Result<()> {
    // SECTION.KEY, or deeper for a subsection such as training.contrastive.batch_size.
    let Some((path, field)) = key.rsplit_once('.') else {
        bail!("\"{key}\" is not SECTION.KEY (sections: model, tokenizer, training)");
    };
    let mut section = table;
    for name in path.split('.') {
        section = section.get_mut(name).and_then(toml::Value::as_table_mut).with_context(|| {
            format!("no [{path}] section (sections: model, tokenizer, training)")
        })?;
    }
    if !section.contains_key(field) {
        let known: Vec<&String> = section.keys().collect();
        bail!("no setting \"{field}\" in [{path}]; known: {known:?}");
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    section.insert(field.to_string(), parsed);
    Ok(())
}
