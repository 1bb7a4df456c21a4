//! A BERT encoder with its masked-language-model head, readable top to bottom.
//!
//! The layout and tensor names are Hugging Face's `BertForMaskedLM`, so checkpoints load in
//! `transformers` and candle-transformers. It differs from candle-transformers' BERT where
//! training needs it to:
//! - layer norm, softmax and GELU are our own fused kernels (`kernels`), with backward passes:
//!   candle's fused fast paths pass no gradient back, and a model trained through them silently
//!   learns nothing;
//! - dropout really drops, from a seeded generator, so a training run can be repeated exactly;
//! - the decoder is tied to the word embeddings, and logits are computed only at the positions
//!   the loss looks at.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::config::BertConfig;
use crate::kernels;

/// How a parameter starts when no checkpoint provides it (Hugging Face's BERT initialisation).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Init {
    Normal(f64),
    Zeros,
    Ones,
}

/// The trainable tensors, in creation order, by their Hugging Face names.
#[derive(Default)]
pub struct Parameters {
    vars: Vec<(String, Var)>,
}

impl Parameters {
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.vars.iter().map(|(name, var)| (name.as_str(), var))
    }

    pub fn len(&self) -> usize {
        self.vars.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn from_vars(vars: Vec<(String, Var)>) -> Parameters {
        Parameters { vars }
    }
}

/// Creates each parameter, from a checkpoint's tensors when it has them and from the seeded
/// initialisation otherwise.
pub(crate) struct ParameterSource<'a> {
    pub loaded: &'a HashMap<String, Tensor>,
    pub rng: &'a mut ChaCha8Rng,
    pub device: &'a Device,
    pub parameters: Parameters,
}

impl ParameterSource<'_> {
    fn get(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let tensor = match self.loaded.get(name) {
            Some(tensor) if tensor.dims() == shape => {
                tensor.to_dtype(DType::F32)?.to_device(self.device)?
            }
            Some(tensor) => candle_core::bail!(
                "tensor {name} has shape {:?} in the checkpoint, the config needs {shape:?}",
                tensor.dims()
            ),
            // A checkpoint must bring the whole encoder; only a missing MLM head is created.
            None if !self.loaded.is_empty() && !name.starts_with("cls.") => {
                candle_core::bail!("tensor {name} is missing from the checkpoint")
            }
            None => {
                let count: usize = shape.iter().product();
                let values: Vec<f32> = match init {
                    Init::Zeros => vec![0.0; count],
                    Init::Ones => vec![1.0; count],
                    Init::Normal(std) => {
                        (0..count).map(|_| normal(self.rng) * std as f32).collect()
                    }
                };
                Tensor::from_vec(values, shape, self.device)?
            }
        };
        let var = Var::from_tensor(&tensor)?;
        let tensor = var.as_tensor().clone();
        self.parameters.vars.push((name.to_string(), var));
        Ok(tensor)
    }
}

/// A standard normal sample (Box–Muller), from our own generator so runs are repeatable.
fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

/// Dropout that really drops: zeroes each value with probability `p` and scales the rest by
/// `1 / (1 - p)`, drawing from the training run's generator.
fn dropout(xs: &Tensor, p: f64, rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
    let Some(rng) = rng else { return Ok(xs.clone()) };
    if p == 0.0 {
        return Ok(xs.clone());
    }
    let keep = 1.0 / (1.0 - p) as f32;
    let mask: Vec<f32> =
        (0..xs.elem_count()).map(|_| if rng.random::<f64>() < p { 0.0 } else { keep }).collect();
    xs * Tensor::from_vec(mask, xs.shape(), xs.device())?
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn new(source: &mut ParameterSource, prefix: &str, config: &BertConfig) -> Result<LayerNorm> {
        let size = [config.hidden_size];
        Ok(LayerNorm {
            weight: source.get(&format!("{prefix}.weight"), &size, Init::Ones)?,
            bias: source.get(&format!("{prefix}.bias"), &size, Init::Zeros)?,
            eps: config.layer_norm_eps,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        kernels::layer_norm(xs, &self.weight, &self.bias, self.eps)
    }
}

struct Linear {
    /// `[out, in]`, as PyTorch stores it.
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn new(
        source: &mut ParameterSource,
        prefix: &str,
        inputs: usize,
        outputs: usize,
        config: &BertConfig,
    ) -> Result<Linear> {
        Ok(Linear {
            weight: source.get(
                &format!("{prefix}.weight"),
                &[outputs, inputs],
                Init::Normal(config.initializer_range),
            )?,
            bias: source.get(&format!("{prefix}.bias"), &[outputs], Init::Zeros)?,
        })
    }

    /// `xs` (`[..., inputs]`) times the weight, plus the bias. The leading dimensions are
    /// flattened into one, so the weight's gradient is a single matrix product rather than one
    /// per batch row followed by a sum.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut dims = xs.dims().to_vec();
        let inputs = dims.pop().unwrap_or(0);
        let rows = dims.iter().product::<usize>();
        let product = kernels::linear(&xs.reshape((rows, inputs))?, &self.weight, &self.bias)?;
        dims.push(product.dim(1)?);
        product.reshape(dims)
    }
}

struct Embeddings {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    norm: LayerNorm,
}

impl Embeddings {
    fn new(source: &mut ParameterSource, config: &BertConfig) -> Result<Embeddings> {
        let init = Init::Normal(config.initializer_range);
        let hidden = config.hidden_size;
        let prefix = "bert.embeddings";
        Ok(Embeddings {
            word: source.get(
                &format!("{prefix}.word_embeddings.weight"),
                &[config.vocab_size, hidden],
                init,
            )?,
            position: source.get(
                &format!("{prefix}.position_embeddings.weight"),
                &[config.max_position_embeddings, hidden],
                init,
            )?,
            token_type: source.get(
                &format!("{prefix}.token_type_embeddings.weight"),
                &[config.type_vocab_size, hidden],
                init,
            )?,
            norm: LayerNorm::new(source, &format!("{prefix}.LayerNorm"), config)?,
        })
    }

    /// Word + position + token-type (always type 0: single segments) embeddings, normalised.
    fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (batch, length) = input_ids.dims2()?;
        let hidden = self.word.dim(1)?;
        let words = self
            .word
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((batch, length, hidden))?;
        let positions = self.position.narrow(0, 0, length)?;
        let token_type = self.token_type.narrow(0, 0, 1)?;
        let embeddings = words.broadcast_add(&positions)?.broadcast_add(&token_type)?;
        self.norm.forward(&embeddings)
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
    heads: usize,
}

impl Layer {
    fn new(source: &mut ParameterSource, prefix: &str, config: &BertConfig) -> Result<Layer> {
        let (hidden, inner) = (config.hidden_size, config.intermediate_size);
        Ok(Layer {
            query: Linear::new(
                source,
                &format!("{prefix}.attention.self.query"),
                hidden,
                hidden,
                config,
            )?,
            key: Linear::new(
                source,
                &format!("{prefix}.attention.self.key"),
                hidden,
                hidden,
                config,
            )?,
            value: Linear::new(
                source,
                &format!("{prefix}.attention.self.value"),
                hidden,
                hidden,
                config,
            )?,
            attention_output: Linear::new(
                source,
                &format!("{prefix}.attention.output.dense"),
                hidden,
                hidden,
                config,
            )?,
            attention_norm: LayerNorm::new(
                source,
                &format!("{prefix}.attention.output.LayerNorm"),
                config,
            )?,
            intermediate: Linear::new(
                source,
                &format!("{prefix}.intermediate.dense"),
                hidden,
                inner,
                config,
            )?,
            output: Linear::new(source, &format!("{prefix}.output.dense"), inner, hidden, config)?,
            output_norm: LayerNorm::new(source, &format!("{prefix}.output.LayerNorm"), config)?,
            heads: config.num_attention_heads,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        attention_bias: &Tensor,
        config: &BertConfig,
        mut rng: Option<&mut ChaCha8Rng>,
    ) -> Result<Tensor> {
        let query = self.query.forward(xs)?;
        let key = self.key.forward(xs)?;
        let value = self.value.forward(xs)?;
        let context = match rng.as_deref_mut() {
            // Dropout on the attention weights needs them as a tensor.
            Some(rng) if config.attention_probs_dropout_prob > 0.0 => {
                kernels::unfused_attention(&query, &key, &value, attention_bias, self.heads, |p| {
                    dropout(&p, config.attention_probs_dropout_prob, Some(rng))
                })?
            }
            _ => kernels::attention(&query, &key, &value, attention_bias, self.heads)?,
        };
        let attended = dropout(
            &self.attention_output.forward(&context)?,
            config.hidden_dropout_prob,
            rng.as_deref_mut(),
        )?;
        let xs = self.attention_norm.forward(&(attended + xs)?)?;
        let inner = kernels::gelu(&self.intermediate.forward(&xs)?)?;
        let output = dropout(&self.output.forward(&inner)?, config.hidden_dropout_prob, rng)?;
        self.output_norm.forward(&(output + xs)?)
    }
}

/// The prediction head: transform, normalise, then score every vocabulary entry with the
/// (tied) word embeddings.
struct MlmHead {
    transform: Linear,
    norm: LayerNorm,
    bias: Tensor,
}

/// Where the bottleneck decoder's tensors live in a checkpoint: under `cls.`, beside the MLM
/// head, so loaders of the encoder alone (`BertModel`, sentence-transformers) skip them.
const BOTTLENECK_PREFIX: &str = "cls.bottleneck.layer";

/// A BERT encoder with its masked-language-model head.
pub struct BertForMaskedLm {
    config: BertConfig,
    embeddings: Embeddings,
    layers: Vec<Layer>,
    head: MlmHead,
    /// A one-layer decoder that rebuilds a text from its pooled vector ([`crate::bottleneck`]);
    /// only models trained with that loss have one.
    bottleneck: Option<Layer>,
    parameters: Parameters,
}

impl BertForMaskedLm {
    /// Builds the model, taking each tensor from `loaded` (Hugging Face names) when present and
    /// initialising the rest from `rng`.
    pub(crate) fn build(
        config: &BertConfig,
        loaded: &HashMap<String, Tensor>,
        rng: &mut ChaCha8Rng,
        device: &Device,
    ) -> Result<BertForMaskedLm> {
        if let Err(message) = config.validate() {
            candle_core::bail!("invalid model config: {message}");
        }
        let mut source = ParameterSource { loaded, rng, device, parameters: Parameters::default() };
        let embeddings = Embeddings::new(&mut source, config)?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::new(&mut source, &format!("bert.encoder.layer.{i}"), config))
            .collect::<Result<_>>()?;
        let hidden = config.hidden_size;
        let head = MlmHead {
            transform: Linear::new(
                &mut source,
                "cls.predictions.transform.dense",
                hidden,
                hidden,
                config,
            )?,
            norm: LayerNorm::new(&mut source, "cls.predictions.transform.LayerNorm", config)?,
            bias: source.get("cls.predictions.bias", &[config.vocab_size], Init::Zeros)?,
        };
        // A run that trained a decoder saved it; resuming goes on with the same one.
        let saved_decoder = format!("{BOTTLENECK_PREFIX}.output.dense.weight");
        let bottleneck = if loaded.contains_key(&saved_decoder) {
            Some(Layer::new(&mut source, BOTTLENECK_PREFIX, config)?)
        } else {
            None
        };
        Ok(BertForMaskedLm {
            config: config.clone(),
            embeddings,
            layers,
            head,
            bottleneck,
            parameters: source.parameters,
        })
    }

    /// Gives the model a freshly initialised bottleneck decoder, unless it has one (a resumed
    /// run's checkpoint brings its own).
    pub(crate) fn add_bottleneck_decoder(&mut self, rng: &mut ChaCha8Rng) -> Result<()> {
        if self.bottleneck.is_some() {
            return Ok(());
        }
        let device = self.embeddings.word.device().clone();
        let loaded = HashMap::new();
        let mut source = ParameterSource {
            loaded: &loaded,
            rng,
            device: &device,
            parameters: Parameters::default(),
        };
        self.bottleneck = Some(Layer::new(&mut source, BOTTLENECK_PREFIX, &self.config)?);
        self.parameters.vars.extend(source.parameters.vars);
        Ok(())
    }

    /// A freshly initialised model, the same for the same seed.
    pub fn new(
        config: &BertConfig,
        rng: &mut ChaCha8Rng,
        device: &Device,
    ) -> Result<BertForMaskedLm> {
        Self::build(config, &HashMap::new(), rng, device)
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    pub fn parameters(&self) -> &Parameters {
        &self.parameters
    }

    /// Contextual vectors `[batch, length, hidden]` for `input_ids` (`[batch, length]`, u32),
    /// attending only where `attention_mask` (`[batch, length]`, 1 or 0) is 1. Dropout is on
    /// when a generator is given (training) and off otherwise.
    pub fn encode(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        mut rng: Option<&mut ChaCha8Rng>,
    ) -> Result<Tensor> {
        let length = input_ids.dim(1)?;
        if length > self.config.max_position_embeddings {
            candle_core::bail!(
                "sequence of {length} tokens is longer than max_position_embeddings ({})",
                self.config.max_position_embeddings
            );
        }
        let attention_bias = attention_bias(attention_mask)?;
        let mut xs = dropout(
            &self.embeddings.forward(input_ids)?,
            self.config.hidden_dropout_prob,
            rng.as_deref_mut(),
        )?;
        for layer in &self.layers {
            xs = layer.forward(&xs, &attention_bias, &self.config, rng.as_deref_mut())?;
        }
        Ok(xs)
    }

    /// The bottleneck decoder's vectors `[batch, length, hidden]` for `input_ids` (masked
    /// texts, `[CLS]` first) when it sees each text's `vectors` (`[batch, hidden]`) in place of
    /// its `[CLS]` embedding. Fails on a model without a decoder.
    pub(crate) fn decode_from_vectors(
        &self,
        vectors: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        mut rng: Option<&mut ChaCha8Rng>,
    ) -> Result<Tensor> {
        let Some(decoder) = &self.bottleneck else {
            candle_core::bail!("the model has no bottleneck decoder")
        };
        let (batch, length) = input_ids.dims2()?;
        let words = self.embeddings.forward(input_ids)?.narrow(1, 1, length - 1)?;
        let xs = Tensor::cat(&[&vectors.reshape((batch, 1, ()))?, &words], 1)?;
        let xs = dropout(&xs, self.config.hidden_dropout_prob, rng.as_deref_mut())?;
        decoder.forward(&xs, &attention_bias(attention_mask)?, &self.config, rng)
    }

    /// Vocabulary logits `[n, vocab]` for hidden vectors `[n, hidden]`.
    pub fn mlm_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let transformed =
            self.head.norm.forward(&kernels::gelu(&self.head.transform.forward(hidden)?)?)?;
        kernels::linear(&transformed, &self.embeddings.word, &self.head.bias)
    }
}

/// What attention adds to its scores for `attention_mask` (`[batch, length]`, 1 or 0): masked
/// keys get the lowest float, as Hugging Face does.
fn attention_bias(attention_mask: &Tensor) -> Result<Tensor> {
    let (batch, length) = attention_mask.dims2()?;
    let mask = attention_mask.to_dtype(DType::F32)?.reshape((batch, 1, 1, length))?;
    (1.0 - mask)? * f64::from(f32::MIN)
}
