use anyhow::{anyhow, Result};
use clap::Args;
use cloze_search::{Fusion, FusionParams, Normalization};

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

    /// Hybrid mode: pseudo-relevance feedback. The semantic query moves toward the mean vector
    /// of this many of the best keyword hits, and every keyword candidate gets a semantic
    /// score [default: none].
    #[arg(long, value_name = "N")]
    feedback_docs: Option<usize>,

    /// Hybrid mode, with --feedback-docs: the weight of their mean vector [default: 1].
    #[arg(long, value_name = "WEIGHT", requires = "feedback_docs")]
    feedback_weight: Option<f64>,
}

fn parse_normalization(name: &str) -> Result<Normalization, String> {
    name.parse()
}

impl FusionFlags {
    /// The fusion asked for, on top of the default; None if no flag was given.
    pub fn fusion(&self) -> Result<Option<Fusion>> {
        let params = FusionParams {
            method: self.fusion.clone(),
            alpha: self.alpha,
            normalization: self.normalization.map(|n| n.name().to_string()),
            k: self.rrf_k,
            depth: self.depth_per_side,
            feedback_docs: self.feedback_docs,
            feedback_weight: self.feedback_weight,
        };
        params.fusion().map_err(|error| {
            let flag = match error.param {
                "method" => "fusion",
                "k" => "rrf-k",
                "depth" => "depth-per-side",
                "feedback_docs" => "feedback-docs",
                "feedback_weight" => "feedback-weight",
                other => other,
            };
            anyhow!("--{flag}: {}", error.message)
        })
    }
}
