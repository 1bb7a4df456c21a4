//! The training loop: what `run_mlm.py` does, repeatable and resumable.
//!
//! An output folder holds the run:
//! ```text
//! <out>/train_config.toml              the settings the run started with
//! <out>/tokenizer.json, vocab.txt      trained at the start (or taken from --init)
//! <out>/metrics.jsonl                  one line per step and per evaluation
//! <out>/checkpoints/step-N/            model, optimizer moments, trainer state
//! <out>/config.json, model.safetensors the final model, in the Hugging Face layout
//! <out>/sentence_bert_config.json      from scratch: its text length (the training length)
//! ```
//! Resuming reloads the latest checkpoint: weights, optimizer moments, step, data position and
//! the generator, so the continued run takes exactly the steps the uninterrupted one would.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::bottleneck::bottleneck_loss;
use crate::checkpoint::{self, CheckpointError};
use crate::config::BertConfig;
use crate::contrastive::{self, contrastive_loss, crop_pairs, ContrastiveSettings};
use crate::data::{self, DataError, Packing};
use crate::masking::{mlm_loss, Masker};
use crate::model::BertForMaskedLm;
use crate::optim::{AdamW, AdamWSettings};
use crate::tokenizer::{self, SpecialIds, TokenizerError};

const CONFIG_FILE: &str = "train_config.toml";
const METRICS_FILE: &str = "metrics.jsonl";
const STATE_FILE: &str = "trainer_state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const CHECKPOINTS_DIR: &str = "checkpoints";
/// Tokens of a document (its highest tf-idf) that query for its lexical neighbour: enough to
/// say what it is about, few enough to find neighbours for every document in seconds.
const NEIGHBOUR_QUERY_TOKENS: usize = 24;
/// Checkpoints kept on disk besides the final model; older ones are removed.
const CHECKPOINTS_KEPT: usize = 2;

/// The encoder's shape; the vocabulary size comes from the tokenizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelShape {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerSettings {
    pub vocab_size: usize,
    pub lowercase: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Linear warmup, then linear decay to zero at `max_steps`.
    Linear,
    /// Linear warmup, then half a cosine down to zero at `max_steps`.
    Cosine,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSettings {
    /// Tokens per sequence, `[CLS]` and `[SEP]` included.
    pub max_len: usize,
    pub batch_size: usize,
    /// Batches whose gradients are summed into one update.
    pub gradient_accumulation: usize,
    pub max_steps: u64,
    pub learning_rate: f64,
    pub warmup_steps: u64,
    pub schedule: Schedule,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    /// Share of tokens chosen for the cloze task.
    pub mask_rate: f64,
    pub whole_word_masking: bool,
    pub packing: Packing,
    /// Share of the training texts held out for evaluation when no validation file is given.
    pub valid_fraction: f64,
    /// Held-out sequences evaluated at most (the first ones).
    pub eval_sequences: usize,
    pub eval_every: u64,
    pub checkpoint_every: u64,
    pub seed: u64,
    /// Tokens per text when the trained model embeds (`max_seq_length` in
    /// `sentence_bert_config.json`) [default: max_len]. A document is longer than the spans
    /// contrastive training crops from it, and its vector should see all of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed_max_len: Option<usize>,
    /// Write each token's inverse document frequency in the training text beside the model
    /// ([`crate::TOKEN_WEIGHTS_FILE`]), so that embedders pool with it: what the retrieval preset
    /// does, as it ranks better than a plain mean.
    #[serde(default)]
    pub idf_pooling: bool,
    /// The cloze loss's weight in the sum with the contrastive loss. 0 skips the cloze task
    /// (and its cost) for a model trained for search alone.
    #[serde(default = "default_mlm_weight")]
    pub mlm_weight: f64,
    /// Also train on the contrastive loss over cropped spans (for retrieval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contrastive: Option<ContrastiveSettings>,
    /// With `contrastive`: the first steps train the cloze task alone, and the contrastive loss
    /// joins after them, so that search training starts from a pre-trained encoder (as
    /// Contriever starts from BERT). The learning-rate schedule, warmup included, starts again
    /// when they end. 0: both losses from the first step.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cloze_steps: u64,
    /// Documents of each JSONL corpus (at most a quarter of it) left out of training and listed
    /// beside the model ([`crate::HELD_OUT_FILE`]), so that `cloze tune` with no judgments
    /// makes its pseudo-queries of documents the model never saw. 0: train on every document.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held_out_documents: u64,
}

fn is_zero(count: &u64) -> bool {
    *count == 0
}

fn default_mlm_weight() -> f64 {
    1.0
}

/// A preset: `configs/tiny.toml` and friends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelShape,
    pub tokenizer: TokenizerSettings,
    pub training: TrainingSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    HeldOut(#[from] crate::HeldOutError),
    #[error("model: {0}")]
    Model(#[from] candle_core::Error),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.to_path_buf(), source }
}

impl TrainConfig {
    pub fn load(path: &Path) -> Result<TrainConfig, TrainError> {
        let text = std::fs::read_to_string(path).map_err(io_error(path))?;
        Self::parse(&text, path)
    }

    /// Parses and checks settings in TOML; `origin` names them in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<TrainConfig, TrainError> {
        let invalid = |message: String| TrainError::Config { path: origin.to_path_buf(), message };
        let config: TrainConfig = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), String> {
        let t = &self.training;
        let positive = [
            ("training.max_len", t.max_len as u64),
            ("training.batch_size", t.batch_size as u64),
            ("training.gradient_accumulation", t.gradient_accumulation as u64),
            ("training.max_steps", t.max_steps),
            ("training.eval_every", t.eval_every),
            ("training.checkpoint_every", t.checkpoint_every),
            ("tokenizer.vocab_size", self.tokenizer.vocab_size as u64),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!("{name} must be at least 1"));
        }
        if t.max_len < 3 || t.max_len > self.model.max_position_embeddings {
            return Err(format!(
                "training.max_len ({}) must be between 3 and model.max_position_embeddings ({})",
                t.max_len, self.model.max_position_embeddings
            ));
        }
        if !(t.mask_rate > 0.0 && t.mask_rate < 1.0) {
            return Err(format!("training.mask_rate must be in (0, 1), found {}", t.mask_rate));
        }
        if !(0.0..1.0).contains(&t.valid_fraction) {
            return Err(format!(
                "training.valid_fraction must be in [0, 1), found {}",
                t.valid_fraction
            ));
        }
        if t.learning_rate.is_nan() || t.learning_rate <= 0.0 {
            return Err("training.learning_rate must be above 0".to_string());
        }
        if let Some(length) = t.embed_max_len {
            if length < 3 || length > self.model.max_position_embeddings {
                return Err(format!(
                    "training.embed_max_len ({length}) must be between 3 and \
                     model.max_position_embeddings ({})",
                    self.model.max_position_embeddings
                ));
            }
        }
        if !(t.mlm_weight >= 0.0 && t.mlm_weight.is_finite()) {
            return Err(format!("training.mlm_weight must be 0 or more, found {}", t.mlm_weight));
        }
        if let Some(contrastive) = &t.contrastive {
            contrastive.validate()?;
        }
        if t.cloze_steps > 0 {
            if t.contrastive.is_none() {
                return Err("training.cloze_steps needs a training.contrastive section: \
                            without one, every step trains the cloze task alone"
                    .to_string());
            }
            if t.cloze_steps >= t.max_steps {
                return Err(format!(
                    "training.cloze_steps ({}) must be below training.max_steps ({}): \
                     the contrastive steps come after them",
                    t.cloze_steps, t.max_steps
                ));
            }
        }
        let contrastive_weight = t.contrastive.as_ref().map_or(0.0, |c| c.weight);
        if t.mlm_weight == 0.0 && contrastive_weight == 0.0 {
            return Err("training.mlm_weight and training.contrastive.weight are both 0: \
                        there is nothing to train"
                .to_string());
        }
        self.bert_config(self.tokenizer.vocab_size, 0).validate().map_err(|e| format!("model: {e}"))
    }

    /// The full model config for a vocabulary.
    pub fn bert_config(&self, vocab_size: usize, pad_token_id: usize) -> BertConfig {
        let m = &self.model;
        BertConfig {
            vocab_size,
            hidden_size: m.hidden_size,
            num_hidden_layers: m.num_hidden_layers,
            num_attention_heads: m.num_attention_heads,
            intermediate_size: m.intermediate_size,
            hidden_act: "gelu".to_string(),
            hidden_dropout_prob: m.hidden_dropout_prob,
            attention_probs_dropout_prob: m.attention_probs_dropout_prob,
            max_position_embeddings: m.max_position_embeddings,
            type_vocab_size: 2,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            pad_token_id,
        }
    }
}

/// Whether `step` (0-based) belongs to the cloze stage that comes before contrastive training.
fn in_cloze_stage(settings: &TrainingSettings, step: u64) -> bool {
    settings.contrastive.is_some() && step < settings.cloze_steps
}

/// The learning rate at `step` (0-based): linear warmup, then the schedule's decay to zero;
/// with a cloze stage, once over its steps and once over the steps after it.
pub fn learning_rate(settings: &TrainingSettings, step: u64) -> f64 {
    let stage = if settings.contrastive.is_some() { settings.cloze_steps } else { 0 };
    let (step, steps) = if step < stage {
        (step, stage)
    } else {
        (step - stage, settings.max_steps.saturating_sub(stage))
    };
    let peak = settings.learning_rate;
    if step < settings.warmup_steps {
        return peak * (step + 1) as f64 / settings.warmup_steps as f64;
    }
    let decay_steps = steps.saturating_sub(settings.warmup_steps).max(1);
    let progress = ((step - settings.warmup_steps) as f64 / decay_steps as f64).min(1.0);
    match settings.schedule {
        Schedule::Linear => peak * (1.0 - progress),
        Schedule::Cosine => peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

/// What to train on and where to put it.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub config: TrainConfig,
    /// Training text: plain text (one document or paragraph a line) or JSONL corpora.
    pub corpus: Vec<PathBuf>,
    /// Held-out text; without it, `valid_fraction` of the training texts is held out.
    pub valid: Vec<PathBuf>,
    pub out: PathBuf,
    /// Start from this Hugging Face BERT checkpoint (and its tokenizer) instead of from scratch.
    pub init: Option<PathBuf>,
    /// Continue the run in `out` from its latest checkpoint.
    pub resume: bool,
    /// Stop (with a checkpoint) after this step, as if interrupted; the schedule still runs to
    /// `max_steps`, so a resumed run carries on exactly.
    pub stop_after: Option<u64>,
    pub device: Device,
}

/// Progress, as the run goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Before training: what it will run on.
    Ready {
        train_sequences: usize,
        valid_sequences: usize,
        parameters: usize,
        start_step: u64,
    },
    Step {
        step: u64,
        loss: f64,
        learning_rate: f64,
        grad_norm: f64,
        tokens: usize,
        seconds: f64,
    },
    Evaluation(Evaluation),
    Checkpoint {
        step: u64,
        path: PathBuf,
    },
}

/// Held-out masked-token accuracy and perplexity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Evaluation {
    pub step: u64,
    pub loss: f64,
    pub accuracy: f64,
    pub perplexity: f64,
    pub masked_tokens: usize,
    /// The accuracy of always predicting the training text's most frequent token: the floor a
    /// model that learnt anything must beat.
    pub baseline_accuracy: f64,
}

/// Where the run is: enough, with a checkpoint's weights and moments, to continue exactly.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainerState {
    step: u64,
    epoch: u64,
    /// Sequences of the current epoch already used.
    position: usize,
    rng: ChaCha8Rng,
}

/// Trains, reporting each step to `on_event`; returns the final held-out evaluation.
pub fn train(
    options: &TrainOptions,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Evaluation, TrainError> {
    let out = &options.out;
    let config = prepare_output(options)?;
    let settings = &config.training;
    let device = &options.device;

    let (texts, held_out) = data::read_texts_holding_out(
        &options.corpus,
        settings.held_out_documents as usize,
        settings.seed,
    )?;
    if settings.held_out_documents > 0 {
        tracing::info!(documents = held_out.len(), "left out of training for tuning");
    }
    let tokenizer = prepare_tokenizer(options, &config, &texts)?;
    let special = SpecialIds::of(&tokenizer)?;
    let (train_texts, valid_texts) = split_validation(options, texts)?;
    let train_tokens = data::tokenize(&tokenizer, &train_texts)?;
    let train = data::pack(&train_tokens, settings.packing, settings.max_len, special);
    let token_weights = settings.idf_pooling.then(|| {
        crate::embed::inverse_document_frequencies(
            &train_tokens,
            tokenizer.get_vocab_size(true),
            &special.all(),
        )
    });
    // Contrastive pairs are cropped from whole documents, not from packed blocks.
    let documents = match &settings.contrastive {
        Some(contrastive) => {
            let documents = contrastive::usable_documents(train_tokens, contrastive);
            if documents.len() < contrastive.batch_size {
                return Err(TrainError::Invalid(format!(
                    "training.contrastive needs at least batch_size ({}) documents of min_tokens \
                     ({}) tokens; the training text has {}",
                    contrastive.batch_size,
                    contrastive.min_tokens,
                    documents.len()
                )));
            }
            documents
        }
        None => Vec::new(),
    };
    let neighbours = match &settings.contrastive {
        Some(contrastive) if contrastive.neighbour_share > 0.0 => {
            let started = Instant::now();
            let idf = crate::embed::inverse_document_frequencies(
                &documents,
                tokenizer.get_vocab_size(true),
                &special.all(),
            );
            let neighbours =
                crate::neighbours::lexical_neighbours(&documents, &idf, NEIGHBOUR_QUERY_TOKENS);
            tracing::info!(
                documents = documents.len(),
                with_neighbour = neighbours.iter().flatten().count(),
                seconds = started.elapsed().as_secs_f64(),
                "found each document's lexical neighbour for hard negatives"
            );
            Some(neighbours)
        }
        _ => None,
    };
    let mut valid = data::pack(
        &data::tokenize(&tokenizer, &valid_texts)?,
        settings.packing,
        settings.max_len,
        special,
    );
    valid.truncate(settings.eval_sequences);
    if train.is_empty() {
        return Err(TrainError::Invalid("the training text has no tokens".to_string()));
    }

    let latest = if options.resume { latest_checkpoint(out)? } else { None };
    let mut model = build_model(options, &config, &tokenizer, latest.as_deref())?;
    let vocab_size = tokenizer.get_vocab_size(true);
    if model.config().vocab_size < vocab_size {
        return Err(TrainError::Invalid(format!(
            "the tokenizer has {vocab_size} tokens but the model only {}",
            model.config().vocab_size
        )));
    }
    if settings.max_len > model.config().max_position_embeddings {
        return Err(TrainError::Invalid(format!(
            "training.max_len ({}) is longer than the model's max_position_embeddings ({})",
            settings.max_len,
            model.config().max_position_embeddings
        )));
    }
    if settings.contrastive.as_ref().is_some_and(|c| c.bottleneck_weight > 0.0) {
        // Its own generator, so adding a decoder leaves the encoder's initialisation as it was.
        model.add_bottleneck_decoder(&mut ChaCha8Rng::seed_from_u64(settings.seed ^ 0xdec0de))?;
    }
    let mut optimizer = AdamW::new(
        model.parameters(),
        AdamWSettings { weight_decay: settings.weight_decay, ..AdamWSettings::default() },
    )?;
    let mut state = match &latest {
        Some(dir) => restore(dir, &mut optimizer, device)?,
        None => TrainerState {
            step: 0,
            epoch: 0,
            position: 0,
            rng: ChaCha8Rng::seed_from_u64(settings.seed ^ 0x5eed),
        },
    };
    let mut metrics = open_metrics(out, state.step)?;

    let masker =
        Masker::for_tokenizer(&tokenizer, settings.mask_rate, settings.whole_word_masking)?;
    let bottleneck_masker = match &settings.contrastive {
        Some(contrastive) if contrastive.bottleneck_weight > 0.0 => {
            Some(Masker { rate: contrastive.bottleneck_mask_rate, ..masker.clone() })
        }
        _ => None,
    };
    on_event(&Event::Ready {
        train_sequences: train.len(),
        valid_sequences: valid.len(),
        parameters: model.parameters().iter().map(|(_, var)| var.elem_count()).sum(),
        start_step: state.step,
    });

    let most_frequent = most_frequent_token(&train, &masker);
    let stop = options.stop_after.unwrap_or(settings.max_steps).min(settings.max_steps);
    let mut order = epoch_order(train.len(), settings.seed, state.epoch);
    let mut last_evaluation = None;
    while state.step < stop {
        let started = Instant::now();
        let mut gradients: Option<Vec<Tensor>> = None;
        let mut loss_sum = 0.0;
        let mut contrastive_sum = 0.0;
        let mut bottleneck_sum = 0.0;
        let mut tokens = 0;
        let (mlm_weight, contrastive) = if in_cloze_stage(settings, state.step) {
            (1.0, None)
        } else {
            (settings.mlm_weight, settings.contrastive.as_ref())
        };
        for _ in 0..settings.gradient_accumulation {
            let mut loss = Tensor::zeros((), DType::F32, device)?;
            if mlm_weight > 0.0 {
                let sequences = next_sequences(&train, &mut order, &mut state, settings);
                let batch = masker.mask_batch(&sequences, &mut state.rng, device)?;
                tokens += batch.tokens;
                let (cloze, _) = mlm_loss(&model, &batch, Some(&mut state.rng))?;
                loss = (loss + (cloze * mlm_weight)?)?;
            }
            if let Some(contrastive) = contrastive {
                let picks: Vec<&[u32]> = contrastive::draw_batch(
                    documents.len(),
                    contrastive,
                    neighbours.as_deref(),
                    &mut state.rng,
                )
                .into_iter()
                .map(|i| documents[i].as_slice())
                .collect();
                let crops = crop_pairs(
                    &picks,
                    contrastive,
                    settings.max_len,
                    special,
                    &mut state.rng,
                    device,
                )?;
                let (pairs_loss, vectors) = contrastive_loss(
                    &model,
                    &crops,
                    contrastive.temperature,
                    Some(&mut state.rng),
                )?;
                tokens += crops.tokens;
                contrastive_sum += f64::from(pairs_loss.to_scalar::<f32>()?);
                loss = (loss + (pairs_loss * contrastive.weight)?)?;
                if let Some(masker) = &bottleneck_masker {
                    // The first crops suffice: the second are the same documents.
                    let first = &crops.crops[..crops.pairs];
                    let masked = masker.mask_batch(first, &mut state.rng, device)?;
                    let rebuilt = bottleneck_loss(
                        &model,
                        &vectors.narrow(0, 0, crops.pairs)?,
                        &masked,
                        Some(&mut state.rng),
                    )?;
                    bottleneck_sum += f64::from(rebuilt.to_scalar::<f32>()?);
                    loss = (loss + (rebuilt * contrastive.bottleneck_weight)?)?;
                }
            }
            loss_sum += f64::from(loss.to_scalar::<f32>()?);
            let scaled = (loss / settings.gradient_accumulation as f64)?;
            let micro = optimizer.gradients(&scaled.backward()?)?;
            gradients = Some(match gradients {
                None => micro,
                Some(sum) => sum
                    .iter()
                    .zip(&micro)
                    .map(|(a, b)| a + b)
                    .collect::<candle_core::Result<_>>()?,
            });
        }
        let learning_rate = learning_rate(settings, state.step);
        let grad_norm = optimizer.step(
            &gradients.expect("at least one micro-batch"),
            learning_rate,
            Some(settings.max_grad_norm),
        )?;
        state.step += 1;
        let loss = loss_sum / settings.gradient_accumulation as f64;
        let seconds = started.elapsed().as_secs_f64();
        let mut record = serde_json::json!({
            "step": state.step, "loss": loss, "learning_rate": learning_rate,
            "grad_norm": grad_norm, "tokens_per_second": tokens as f64 / seconds,
            "seconds": seconds,
        });
        if contrastive.is_some() {
            record["contrastive_loss"] =
                serde_json::json!(contrastive_sum / settings.gradient_accumulation as f64);
        }
        if contrastive.is_some() && bottleneck_masker.is_some() {
            record["bottleneck_loss"] =
                serde_json::json!(bottleneck_sum / settings.gradient_accumulation as f64);
        }
        write_metric(&mut metrics, out, &record)?;
        on_event(&Event::Step {
            step: state.step,
            loss,
            learning_rate,
            grad_norm,
            tokens,
            seconds,
        });

        let finished = state.step == stop;
        if state.step.is_multiple_of(settings.eval_every) || finished {
            let evaluation =
                evaluate(&model, &masker, &valid, settings, state.step, most_frequent, device)?;
            if let Some(evaluation) = evaluation {
                write_metric(
                    &mut metrics,
                    out,
                    &serde_json::json!({
                        "step": evaluation.step, "eval_loss": evaluation.loss, "eval_accuracy": evaluation.accuracy,
                        "eval_perplexity": evaluation.perplexity, "eval_masked_tokens": evaluation.masked_tokens,
                        "eval_baseline_accuracy": evaluation.baseline_accuracy,
                    }),
                )?;
                on_event(&Event::Evaluation(evaluation));
                last_evaluation = Some(evaluation);
            }
        }
        if state.step.is_multiple_of(settings.checkpoint_every) || finished {
            let path = save_checkpoint(out, &model, &tokenizer, &optimizer, &state)?;
            on_event(&Event::Checkpoint { step: state.step, path });
        }
    }
    if state.step == settings.max_steps {
        checkpoint::save(&model, out)?;
        tokenizer::save_tokenizer(&tokenizer, out)?;
        // Positions past the training length of a model trained from scratch never learnt
        // anything: tell embedders (ours and sentence-transformers) to stop there, as they
        // read this file first. A model continued from a checkpoint keeps its own length.
        let path = out.join("sentence_bert_config.json");
        if options.init.is_none() && !path.exists() {
            let max_seq_length = settings.embed_max_len.unwrap_or(settings.max_len);
            let settings_json =
                serde_json::json!({"max_seq_length": max_seq_length, "do_lower_case": false});
            std::fs::write(&path, settings_json.to_string() + "\n").map_err(io_error(&path))?;
        }
        if let Some(weights) = &token_weights {
            let path = out.join(crate::TOKEN_WEIGHTS_FILE);
            let text = serde_json::to_string(weights).expect("numbers serialize");
            std::fs::write(&path, text).map_err(io_error(&path))?;
        }
        if !held_out.is_empty() {
            crate::HeldOutDocuments::write(&held_out, out)?;
        }
    }
    match last_evaluation {
        Some(evaluation) => Ok(evaluation),
        None => evaluate(&model, &masker, &valid, settings, state.step, most_frequent, device)?
            .ok_or_else(|| TrainError::Invalid("no held-out text to evaluate on".to_string())),
    }
}

/// The model to train: the checkpoint being resumed, the one to start from, or a new one.
fn build_model(
    options: &TrainOptions,
    config: &TrainConfig,
    tokenizer: &Tokenizer,
    resumed: Option<&Path>,
) -> Result<BertForMaskedLm, TrainError> {
    let mut rng = ChaCha8Rng::seed_from_u64(config.training.seed);
    let device = &options.device;
    Ok(match (resumed, &options.init) {
        (Some(dir), _) => checkpoint::load(dir, &mut rng, device)?,
        (None, Some(init)) => checkpoint::load(init, &mut rng, device)?,
        (None, None) => {
            let pad = SpecialIds::of(tokenizer)?.pad as usize;
            let bert = config.bert_config(tokenizer.get_vocab_size(true), pad);
            BertForMaskedLm::new(&bert, &mut rng, device)?
        }
    })
}

/// Reloads the optimizer moments and the trainer state of a checkpoint.
fn restore(dir: &Path, optimizer: &mut AdamW, device: &Device) -> Result<TrainerState, TrainError> {
    let moments = candle_core::safetensors::load(dir.join(OPTIMIZER_FILE), device)?;
    optimizer.load_state(&moments)?;
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Config { path, message: e.to_string() })
}

/// The next `batch_size` training sequences, starting a new epoch (and order) when one ends.
fn next_sequences(
    train: &[Vec<u32>],
    order: &mut Vec<usize>,
    state: &mut TrainerState,
    settings: &TrainingSettings,
) -> Vec<Vec<u32>> {
    let mut sequences = Vec::with_capacity(settings.batch_size);
    while sequences.len() < settings.batch_size {
        if state.position == order.len() {
            state.epoch += 1;
            state.position = 0;
            *order = epoch_order(train.len(), settings.seed, state.epoch);
        }
        sequences.push(train[order[state.position]].clone());
        state.position += 1;
    }
    sequences
}

/// Creates or checks the output folder and returns the run's settings.
fn prepare_output(options: &TrainOptions) -> Result<TrainConfig, TrainError> {
    let out = &options.out;
    let saved = out.join(CONFIG_FILE);
    if options.resume {
        let config = TrainConfig::load(&saved)?;
        if config != options.config {
            return Err(TrainError::Invalid(format!(
                "the settings differ from those of the run being resumed ({}); resume with the same settings",
                saved.display()
            )));
        }
        return Ok(config);
    }
    options.config.validate().map_err(TrainError::Invalid)?;
    if saved.exists() {
        return Err(TrainError::Invalid(format!(
            "{} already holds a training run: use --resume to continue it, or another --out",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(io_error(out))?;
    let text = toml::to_string(&options.config).expect("a config serializes");
    std::fs::write(&saved, text).map_err(io_error(&saved))?;
    Ok(options.config.clone())
}

fn prepare_tokenizer(
    options: &TrainOptions,
    config: &TrainConfig,
    texts: &[String],
) -> Result<Tokenizer, TrainError> {
    let mut tokenizer = if let Some(init) = &options.init {
        let tokenizer = tokenizer::load_tokenizer(init)?;
        // Saved as it came (with its own padding and truncation), so the trained model embeds
        // like the original; the sentence-transformers settings go along for the same reason.
        tokenizer::save_tokenizer(&tokenizer, &options.out)?;
        copy_sentence_transformers_settings(init, &options.out)?;
        tokenizer
    } else if options.resume && options.out.join(tokenizer::TOKENIZER_FILE).exists() {
        tokenizer::load_tokenizer(&options.out)?
    } else {
        let tokenizer = tokenizer::train_wordpiece(
            texts.iter(),
            config.tokenizer.vocab_size,
            config.tokenizer.lowercase,
            false,
        )?;
        tokenizer::save_tokenizer(&tokenizer, &options.out)?;
        tokenizer
    };
    // Training text is packed into blocks here: a tokenizer that pads or truncates by itself
    // (all-MiniLM-L6-v2's pads everything to 128) would fill them with [PAD] and cut texts.
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(None)
        .map_err(|e| TrainError::Invalid(format!("tokenizer settings: {e}")))?;
    Ok(tokenizer)
}

/// The files sentence-transformers reads besides the weights (length, pooling), when present.
fn copy_sentence_transformers_settings(from: &Path, to: &Path) -> Result<(), TrainError> {
    for name in [
        "sentence_bert_config.json",
        "modules.json",
        "config_sentence_transformers.json",
        "1_Pooling/config.json",
    ] {
        let source = from.join(name);
        if source.is_file() {
            let target = to.join(name);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(io_error(parent))?;
            }
            std::fs::copy(&source, &target).map_err(io_error(&target))?;
        }
    }
    Ok(())
}

/// The validation files' texts, or a seeded sample of the training texts.
fn split_validation(
    options: &TrainOptions,
    texts: Vec<String>,
) -> Result<(Vec<String>, Vec<String>), TrainError> {
    if !options.valid.is_empty() {
        return Ok((texts, data::read_texts(&options.valid)?));
    }
    let settings = &options.config.training;
    let held_out = (texts.len() as f64 * settings.valid_fraction).round() as usize;
    let mut indices: Vec<usize> = (0..texts.len()).collect();
    indices.shuffle(&mut ChaCha8Rng::seed_from_u64(settings.seed ^ 0xda7a));
    let mut is_valid = vec![false; texts.len()];
    indices[..held_out].iter().for_each(|i| is_valid[*i] = true);
    let (valid, train): (Vec<_>, Vec<_>) = texts.into_iter().zip(is_valid).partition(|(_, v)| *v);
    Ok((train.into_iter().map(|(t, _)| t).collect(), valid.into_iter().map(|(t, _)| t).collect()))
}

/// The order in which training visits its sequences in `epoch`: a fresh seeded shuffle each
/// epoch. Public so a reference implementation can be fed the very same batches.
pub fn epoch_order(count: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..count).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(
        seed.wrapping_add(epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
    ));
    order
}

/// Masked-token loss and accuracy on the held-out sequences, with the same masks every time
/// (a fixed seed) and no dropout. `None` when there is nothing held out.
fn evaluate(
    model: &BertForMaskedLm,
    masker: &Masker,
    valid: &[Vec<u32>],
    settings: &TrainingSettings,
    step: u64,
    most_frequent: u32,
    device: &Device,
) -> Result<Option<Evaluation>, TrainError> {
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed ^ 0xe7a1);
    let (mut loss_sum, mut correct, mut total, mut baseline) = (0.0, 0usize, 0usize, 0usize);
    for chunk in valid.chunks(settings.batch_size) {
        let batch = masker.mask_batch(chunk, &mut rng, device)?;
        let (loss, logits) = mlm_loss(model, &batch, None)?;
        let count = batch.labels.dim(0)?;
        loss_sum += f64::from(loss.to_scalar::<f32>()?) * count as f64;
        let predicted = logits.argmax(candle_core::D::Minus1)?;
        correct += predicted
            .eq(&batch.labels)?
            .to_dtype(candle_core::DType::U32)?
            .sum_all()?
            .to_scalar::<u32>()? as usize;
        total += count;
        baseline +=
            batch.labels.to_vec1::<u32>()?.iter().filter(|label| **label == most_frequent).count();
    }
    if total == 0 {
        return Ok(None);
    }
    let loss = loss_sum / total as f64;
    Ok(Some(Evaluation {
        step,
        loss,
        accuracy: correct as f64 / total as f64,
        perplexity: loss.exp(),
        masked_tokens: total,
        baseline_accuracy: baseline as f64 / total as f64,
    }))
}

/// The most frequent token of the training sequences that the cloze task can choose.
fn most_frequent_token(sequences: &[Vec<u32>], masker: &Masker) -> u32 {
    let mut counts = vec![0u64; masker.vocab_size as usize];
    for id in sequences.iter().flatten() {
        if !masker.special.get(*id as usize).copied().unwrap_or(true) {
            counts[*id as usize] += 1;
        }
    }
    counts.iter().enumerate().max_by_key(|(_, count)| **count).map_or(0, |(id, _)| id as u32)
}

fn checkpoint_dir(out: &Path, step: u64) -> PathBuf {
    out.join(CHECKPOINTS_DIR).join(format!("step-{step}"))
}

/// The newest checkpoint in `out`, by step.
fn latest_checkpoint(out: &Path) -> Result<Option<PathBuf>, TrainError> {
    let dir = out.join(CHECKPOINTS_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(TrainError::Invalid(format!(
                "nothing to resume: {} has no checkpoints",
                out.display()
            )))
        }
        Err(source) => return Err(TrainError::Io { path: dir, source }),
    };
    let mut steps: Vec<u64> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.path().join(STATE_FILE).is_file())
        .filter_map(|entry| entry.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
        .collect();
    steps.sort_unstable();
    Ok(steps.last().map(|step| checkpoint_dir(out, *step)))
}

/// Writes a checkpoint whole into a temporary folder, then renames it into place, so a crash
/// never leaves a half-written one to resume from; keeps the newest few.
fn save_checkpoint(
    out: &Path,
    model: &BertForMaskedLm,
    tokenizer: &Tokenizer,
    optimizer: &AdamW,
    state: &TrainerState,
) -> Result<PathBuf, TrainError> {
    let final_dir = checkpoint_dir(out, state.step);
    let building = out.join(CHECKPOINTS_DIR).join(format!(".step-{}.tmp", state.step));
    if building.exists() {
        std::fs::remove_dir_all(&building).map_err(io_error(&building))?;
    }
    checkpoint::save(model, &building)?;
    tokenizer::save_tokenizer(tokenizer, &building)?;
    let moments: HashMap<String, Tensor> = optimizer.state()?;
    candle_core::safetensors::save(&moments, building.join(OPTIMIZER_FILE))?;
    let state_path = building.join(STATE_FILE);
    std::fs::write(&state_path, serde_json::to_string(state).expect("state serializes"))
        .map_err(io_error(&state_path))?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(io_error(&final_dir))?;
    }
    std::fs::rename(&building, &final_dir).map_err(io_error(&final_dir))?;

    let root = out.join(CHECKPOINTS_DIR);
    let mut steps: Vec<u64> = std::fs::read_dir(&root)
        .map_err(io_error(&root))?
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
        .collect();
    steps.sort_unstable();
    for step in steps.iter().rev().skip(CHECKPOINTS_KEPT) {
        let old = checkpoint_dir(out, *step);
        std::fs::remove_dir_all(&old).map_err(io_error(&old))?;
    }
    Ok(final_dir)
}

/// Opens the metrics log for appending, first dropping lines past `step` (left by a run that
/// went on after the checkpoint being resumed).
fn open_metrics(out: &Path, step: u64) -> Result<std::fs::File, TrainError> {
    let path = out.join(METRICS_FILE);
    let kept: String = match std::fs::read_to_string(&path) {
        Ok(text) => text
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s <= step)
            })
            .map(|line| format!("{line}\n"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(TrainError::Io { path, source }),
    };
    std::fs::write(&path, kept).map_err(io_error(&path))?;
    std::fs::OpenOptions::new().append(true).open(&path).map_err(io_error(&path))
}

fn write_metric(
    file: &mut std::fs::File,
    out: &Path,
    record: &serde_json::Value,
) -> Result<(), TrainError> {
    writeln!(file, "{record}").map_err(io_error(&out.join(METRICS_FILE)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(schedule: Schedule) -> TrainingSettings {
        let mut config: TrainConfig =
            toml::from_str(include_str!("../../../configs/tiny.toml")).unwrap();
        (config.training.max_steps, config.training.warmup_steps, config.training.schedule) =
            (110, 10, schedule);
        config.training.learning_rate = 1.0;
        config.training
    }

    #[test]
    fn warmup_then_linear_or_cosine_decay_to_zero() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        for schedule in [Schedule::Linear, Schedule::Cosine] {
            let s = settings(schedule);
            assert!(close(learning_rate(&s, 0), 0.1) && close(learning_rate(&s, 9), 1.0), "warmup");
            assert!(close(learning_rate(&s, 10), 1.0), "peak after warmup");
            assert!(
                close(learning_rate(&s, 110), 0.0) && close(learning_rate(&s, 500), 0.0),
                "zero at the end"
            );
        }
        assert!(close(learning_rate(&settings(Schedule::Linear), 60), 0.5));
        assert!(close(learning_rate(&settings(Schedule::Cosine), 60), 0.5));
        assert!(close(
            learning_rate(&settings(Schedule::Cosine), 35),
            0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos())
        ));
    }

    /// A cloze stage has its own warmup and decay, and the contrastive steps after it start
    /// their warmup again and decay to zero at `max_steps`.
    #[test]
    fn the_schedule_starts_again_after_the_cloze_stage() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        let mut s = settings(Schedule::Linear);
        let retrieval: TrainConfig =
            toml::from_str(include_str!("../../../configs/retrieval.toml")).unwrap();
        s.contrastive = retrieval.training.contrastive;
        s.cloze_steps = 50;
        assert!(close(learning_rate(&s, 0), 0.1) && close(learning_rate(&s, 9), 1.0));
        assert!(close(learning_rate(&s, 30), 0.5) && close(learning_rate(&s, 49), 0.025));
        assert!(close(learning_rate(&s, 50), 0.1) && close(learning_rate(&s, 59), 1.0));
        assert!(close(learning_rate(&s, 85), 0.5) && close(learning_rate(&s, 110), 0.0));
        // Without contrastive training there is no stage to end.
        s.contrastive = None;
        assert!(close(learning_rate(&s, 60), 0.5));
    }

    #[test]
    fn every_epoch_visits_every_sequence_once_in_a_new_order() {
        let (first, second) = (epoch_order(100, 7, 0), epoch_order(100, 7, 1));
        let mut sorted = first.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(first, second);
        assert_eq!(first, epoch_order(100, 7, 0));
    }
}
