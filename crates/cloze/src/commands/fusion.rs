use anyhow::{bail, Result};
use clap::Args;
use cloze_search::{Fusion, FusionMethod, Normalization};

/// How `--mode hybrid` fuses keyword and semantic rankings: shared by search and eval.
#[derive(Debug, Args)]
pub struct FusionFlags {
    /// Hybrid mode: rrf (reciprocal rank fusion) or convex (a weighted sum of normalised
    /// scores) [default: convex, alpha 0.8, theoretical, depth 100: the best on SciFact's
    /// training queries; `cloze tune` finds the best for your judgments].
    #[arg(long, value_name = "METHOD", value_parser = ["rrf", "convex"])]
    fusion: Option<String>,

    /// Hybrid mode, convex: the semantic side's weight, 0 to 1 (keyword gets 1 - alpha).
    #[arg(long, value_name = "ALPHA")]
    alpha: Option<f64>,

    /// Hybrid mode, convex: how scores are normalised: min-max, z-score or theoretical.
    #[arg(long, value_name = "NAME", value_parser = parse_normalization)]
    normalization: Option<Normalization>,

    /// Hybrid mode, rrf: the constant k in 1 / (k + rank).
    #[arg(long, value_name = "K")]
    rrf_k: Option<f64>,

    /// Hybrid mode: candidates each side retrieves before fusing.
    #[arg(long, value_name = "N")]
    depth_per_side: Option<usize>,
}

fn parse_normalization(name: &str) -> Result<Normalization, String> {
    name.parse()
}

impl FusionFlags {
    /// The fusion asked for, on top of the default; None if no flag was given.
    pub fn fusion(&self) -> Result<Option<Fusion>> {
        let given = self.fusion.is_some()
            || self.alpha.is_some()
            || self.normalization.is_some()
            || self.rrf_k.is_some()
            || self.depth_per_side.is_some();
        if !given {
            return Ok(None);
        }
        let rrf = match self.fusion.as_deref() {
            Some(method) => method == "rrf",
            None => self.rrf_k.is_some(),
        };
        let method = if rrf {
            if self.alpha.is_some() || self.normalization.is_some() {
                bail!("--alpha and --normalization are for --fusion convex, not rrf");
            }
            let k = self.rrf_k.unwrap_or(Fusion::DEFAULT_RRF_K);
            if !(k >= 0.0 && k.is_finite()) {
                bail!("--rrf-k {k}: must be a number of 0 or more");
            }
            FusionMethod::Rrf { k }
        } else {
            if self.rrf_k.is_some() {
                bail!("--rrf-k is for --fusion rrf, not convex");
            }
            let alpha = self.alpha.unwrap_or(Fusion::DEFAULT_ALPHA);
            if !(0.0..=1.0).contains(&alpha) {
                bail!("--alpha {alpha}: must be between 0 and 1");
            }
            FusionMethod::Convex {
                alpha,
                normalization: self.normalization.unwrap_or(Fusion::DEFAULT_NORMALIZATION),
            }
        };
        let depth = self.depth_per_side.unwrap_or(Fusion::DEFAULT_DEPTH);
        if depth == 0 {
            bail!("--depth-per-side must be at least 1");
        }
        Ok(Some(Fusion { method, depth }))
    }
}
