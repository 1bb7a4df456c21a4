//! AdamW as PyTorch defines it, with what candle's `AdamW` lacks: biases and LayerNorm weights
//! excluded from weight decay, clipping by global gradient norm, and moments that can be saved
//! and restored so a resumed run continues exactly.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

use crate::model::Parameters;

/// Optimiser settings; the learning rate comes with each step, from the schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWSettings {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWSettings {
    fn default() -> Self {
        AdamWSettings { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

struct Slot {
    name: String,
    var: Var,
    first_moment: Tensor,
    second_moment: Tensor,
    decays: bool,
}

pub struct AdamW {
    settings: AdamWSettings,
    slots: Vec<Slot>,
    steps: u64,
}

/// Hugging Face's rule: no weight decay for biases and LayerNorm weights.
pub fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.contains("LayerNorm."))
}

impl AdamW {
    pub fn new(parameters: &Parameters, settings: AdamWSettings) -> Result<AdamW> {
        let slots = parameters
            .iter()
            .map(|(name, var)| {
                Ok(Slot {
                    name: name.to_string(),
                    var: var.clone(),
                    first_moment: var.zeros_like()?,
                    second_moment: var.zeros_like()?,
                    decays: decays(name),
                })
            })
            .collect::<Result<_>>()?;
        Ok(AdamW { settings, slots, steps: 0 })
    }

    /// How many updates have been made.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Each parameter's gradient from `grads`, zeros where it has none, in parameter order.
    ///
    /// Detached: a gradient computed from an activation (a weight's is the layer's input
    /// times the gradient of its output) records that op, and through it the step's whole
    /// forward graph; kept in the moments, each step's graph would stay alive for the rest
    /// of the run (24 GB within 120 steps of `tiny`).
    pub fn gradients(&self, grads: &GradStore) -> Result<Vec<Tensor>> {
        self.slots
            .iter()
            .map(|slot| match grads.get(slot.var.as_tensor()) {
                Some(grad) => Ok(grad.detach()),
                None => slot.var.zeros_like(),
            })
            .collect()
    }

    /// The global L2 norm of `gradients`.
    pub fn norm(gradients: &[Tensor]) -> Result<f64> {
        let mut sum = 0.0;
        for grad in gradients {
            sum += f64::from(grad.sqr()?.sum_all()?.to_scalar::<f32>()?);
        }
        Ok(sum.sqrt())
    }

    /// One update with learning rate `lr`, after scaling the gradients down to a global norm of
    /// at most `max_norm` (if given). Returns the norm before clipping.
    pub fn step(&mut self, gradients: &[Tensor], lr: f64, max_norm: Option<f64>) -> Result<f64> {
        if gradients.len() != self.slots.len() {
            candle_core::bail!("{} gradients for {} parameters", gradients.len(), self.slots.len());
        }
        let norm = Self::norm(gradients)?;
        let scale = match max_norm {
            Some(max) if norm > max => max / (norm + 1e-6),
            _ => 1.0,
        };
        self.steps += 1;
        let AdamWSettings { beta1, beta2, eps, weight_decay } = self.settings;
        let first_correction = 1.0 - beta1.powi(self.steps as i32);
        let second_correction = 1.0 - beta2.powi(self.steps as i32);
        for (slot, grad) in self.slots.iter_mut().zip(gradients) {
            let grad = (grad * scale)?;
            slot.first_moment = ((&slot.first_moment * beta1)? + (&grad * (1.0 - beta1))?)?;
            slot.second_moment = ((&slot.second_moment * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?;
            let mut value = slot.var.as_tensor().detach();
            if slot.decays && weight_decay > 0.0 {
                value = (&value * (1.0 - lr * weight_decay))?;
            }
            let update = ((&slot.first_moment / first_correction)?
                / ((&slot.second_moment / second_correction)?.sqrt()? + eps)?)?;
            slot.var.set(&(value - (update * lr)?)?)?;
        }
        Ok(norm)
    }

    /// The moments and step count, by name, for saving beside a checkpoint.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut state = HashMap::new();
        for slot in &self.slots {
            state.insert(format!("first_moment.{}", slot.name), slot.first_moment.clone());
            state.insert(format!("second_moment.{}", slot.name), slot.second_moment.clone());
        }
        let device = self
            .slots
            .first()
            .map(|slot| slot.var.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        state.insert("steps".to_string(), Tensor::new(&[self.steps as f64], &device)?);
        Ok(state)
    }

    /// Restores what [`AdamW::state`] returned.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let get = |name: String| {
            state
                .get(&name)
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("optimizer state has no {name}")))
        };
        for slot in &mut self.slots {
            slot.first_moment = get(format!("first_moment.{}", slot.name))?;
            slot.second_moment = get(format!("second_moment.{}", slot.name))?;
        }
        self.steps = get("steps".to_string())?.to_vec1::<f64>()?[0] as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn biases_and_layer_norms_do_not_decay() {
        assert!(decays("bert.encoder.layer.0.attention.self.query.weight"));
        assert!(decays("bert.embeddings.word_embeddings.weight"));
        assert!(!decays("bert.encoder.layer.0.attention.self.query.bias"));
        assert!(!decays("bert.embeddings.LayerNorm.weight"));
        assert!(!decays("cls.predictions.bias"));
    }

    /// A weight's gradient is computed from the layer's input; unless the optimizer cuts it
    /// loose, it keeps the step's forward graph alive in the moments.
    #[test]
    fn gradients_hold_no_graph() {
        let device = candle_core::Device::Cpu;
        let first = Var::new(&[[1.0f32, 2.0], [3.0, 4.0]], &device).unwrap();
        let second = Var::new(&[[0.5f32], [-1.0]], &device).unwrap();
        let parameters = Parameters::from_vars(vec![
            ("first.weight".into(), first.clone()),
            ("second.weight".into(), second.clone()),
        ]);
        let optimizer = AdamW::new(&parameters, AdamWSettings::default()).unwrap();
        let hidden = first.as_tensor().exp().unwrap();
        let loss = hidden.matmul(second.as_tensor()).unwrap().sum_all().unwrap();
        let gradients = optimizer.gradients(&loss.backward().unwrap()).unwrap();
        assert_eq!(gradients.len(), 2);
        for gradient in &gradients {
            assert!(!gradient.track_op(), "a gradient still records the ops it came from");
            assert!(gradient.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
        }
    }

    /// One step by hand, as PyTorch's AdamW computes it: decay, then the bias-corrected update
    /// (whose size is `lr` on the first step), with and without clipping.
    #[test]
    fn one_step_matches_the_pytorch_formula() {
        let device = candle_core::Device::Cpu;
        let weight = Var::new(&[1.0f32, -2.0], &device).unwrap();
        let bias = Var::new(&[1.0f32], &device).unwrap();
        let parameters = Parameters::from_vars(vec![
            ("w.weight".into(), weight.clone()),
            ("w.bias".into(), bias.clone()),
        ]);
        let mut optimizer =
            AdamW::new(&parameters, AdamWSettings { eps: 0.0, ..Default::default() }).unwrap();
        let gradients = [
            Tensor::new(&[0.5f32, -0.25], &device).unwrap(),
            Tensor::new(&[3.0f32], &device).unwrap(),
        ];
        let norm = optimizer.step(&gradients, 0.1, None).unwrap();
        assert!((norm - (0.25f64 + 0.0625 + 9.0).sqrt()).abs() < 1e-6);
        let close = |a: Vec<f32>, b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        assert!(close(weight.to_vec1().unwrap(), &[1.0 * 0.999 - 0.1, -2.0 * 0.999 + 0.1]));
        assert!(close(bias.to_vec1().unwrap(), &[0.9]), "biases do not decay");
        assert_eq!(optimizer.steps(), 1);
        let state = optimizer.state().unwrap();
        let mut restored = AdamW::new(&parameters, AdamWSettings::default()).unwrap();
        restored.load_state(&state).unwrap();
        assert_eq!(restored.steps(), 1);
    }
}
