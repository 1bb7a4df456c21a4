//! Tuning hybrid fusion on judged queries: which fusion setting ranks them best, and whether
//! it beats the better side alone by more than chance.
//!
//! Each query's keyword and semantic candidates are retrieved once, as deep as the deepest
//! setting tried (and the semantic side once more for each feedback setting, which moves the
//! query by the keyword side's best hits); every combination of method, depth and feedback is
//! then only a fusion of lists already in memory.

use cloze_eval::{evaluate, paired_randomization_test, Metric, Qrels, Run};
use serde::{Serialize, Serializer};

use crate::{
    candidates, fuse, Candidates, Feedback, Fusion, FusionMethod, JudgedQuery, Mode, Ranking,
    SearchError, SearchRequest,
};

/// Random swaps in the significance test: p-values resolve to about 0.0001.
pub const SIGNIFICANCE_TRIALS: usize = 10_000;
/// Fixed, so the same judgments always choose the same setting.
const SIGNIFICANCE_SEED: u64 = 0x5eed;

/// The settings to try, and how to choose among them.
#[derive(Debug, Clone, PartialEq)]
pub struct TuneOptions {
    /// What to maximise.
    pub metric: Metric,
    /// Convex weights of the semantic side, each from 0 to 1.
    pub alphas: Vec<f64>,
    /// Reciprocal rank fusion constants.
    pub rrf_ks: Vec<f64>,
    /// Candidates per side.
    pub depths: Vec<usize>,
    /// Pseudo-relevance feedback: how many of the best keyword hits move the semantic query
    /// toward their mean vector (0: none).
    pub feedback_docs: Vec<usize>,
    /// Pseudo-relevance feedback: the weights of that mean vector.
    pub feedback_weights: Vec<f64>,
    /// Semantic side: HNSW candidates per query [default: the collection's ef_search].
    pub ef_search: Option<usize>,
    /// Keep the best fusion only if it beats the better side alone with a p-value under this
    /// (a paired randomization test over the queries); otherwise choose that side alone
    /// (convex alpha 0 for keyword, 1 for semantic), since a gain that chance explains will not
    /// carry over to new queries. 1 keeps the best fusion whatever its margin.
    pub significance: f64,
}

impl Default for TuneOptions {
    fn default() -> TuneOptions {
        TuneOptions {
            metric: Metric::Ndcg(Some(10)),
            alphas: vec![0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
            rrf_ks: vec![10.0, 20.0, 40.0, 60.0, 100.0],
            depths: vec![50, 100, 200],
            feedback_docs: vec![0, 3, 5, 10],
            feedback_weights: vec![0.5, 1.0, 2.0],
            ef_search: None,
            significance: 0.05,
        }
    }
}

impl TuneOptions {
    /// Every fusion setting to try, or the option that cannot be used and why.
    pub fn settings(&self) -> Result<Vec<Fusion>, SearchError> {
        let invalid = |param, message: String| SearchError::InvalidTuning { param, message };
        if self.depths.is_empty() || self.depths.contains(&0) {
            return Err(invalid("depths", "each must be at least 1".to_string()));
        }
        if let Some(alpha) = self.alphas.iter().find(|a| !(0.0..=1.0).contains(*a)) {
            return Err(invalid("alphas", format!("{alpha} is not between 0 and 1")));
        }
        if let Some(k) = self.rrf_ks.iter().find(|k| !(**k >= 0.0 && k.is_finite())) {
            return Err(invalid("rrf_ks", format!("must be numbers of 0 or more (found {k})")));
        }
        if let Some(weight) = self.feedback_weights.iter().find(|w| !(**w >= 0.0 && w.is_finite()))
        {
            let message = format!("must be a number of 0 or more (found {weight})");
            return Err(invalid("feedback_weights", message));
        }
        if !(0.0..=1.0).contains(&self.significance) {
            let message = format!("must be between 0 and 1 (found {})", self.significance);
            return Err(invalid("significance", message));
        }
        let mut feedbacks: Vec<Option<Feedback>> = Vec::new();
        for &docs in &self.feedback_docs {
            match docs {
                0 => feedbacks.push(None),
                docs => feedbacks.extend(
                    self.feedback_weights.iter().map(|&weight| Some(Feedback { docs, weight })),
                ),
            }
        }
        if feedbacks.is_empty() {
            return Err(invalid("feedback_docs", "give at least one (0 for none)".to_string()));
        }
        let mut settings = Vec::new();
        for &depth in &self.depths {
            for &feedback in &feedbacks {
                for &k in &self.rrf_ks {
                    settings.push(Fusion { method: FusionMethod::Rrf { k }, depth, feedback });
                }
                for &alpha in &self.alphas {
                    for normalization in crate::Normalization::ALL {
                        let method = FusionMethod::Convex { alpha, normalization };
                        settings.push(Fusion { method, depth, feedback });
                    }
                }
            }
        }
        if settings.is_empty() {
            return Err(invalid("alphas", "give alphas or rrf_ks to try".to_string()));
        }
        Ok(settings)
    }
}

/// A fusion setting and its mean score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoredFusion {
    #[serde(serialize_with = "as_text")]
    pub fusion: Fusion,
    pub value: f64,
}

/// What tuning found: each side's score alone, every setting's score best first, and the
/// choice. Serialized, it is what `cloze tune --json` prints and `_tune` answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tuning {
    #[serde(serialize_with = "as_text")]
    pub metric: Metric,
    pub queries: usize,
    pub keyword: f64,
    pub semantic: f64,
    /// Best first; among equals, the earlier (smaller, simpler) setting.
    pub settings: Vec<ScoredFusion>,
    /// The better side alone: "keyword" or "semantic".
    pub best_side: &'static str,
    /// The paired randomization test of the best setting against the better side alone.
    pub p_value: f64,
    /// The best setting, if it wins beyond chance; else the better side alone, as a fusion.
    #[serde(serialize_with = "as_text")]
    pub chosen: Fusion,
    /// Whether the best setting beat the better side alone beyond chance.
    pub fusion_wins: bool,
    /// The chosen setting, once made the collection's default.
    #[serde(serialize_with = "optional_text")]
    pub saved: Option<Fusion>,
    /// Which documents the queries were made of, when they are pseudo-queries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pseudo_query_sources: Option<PseudoQuerySources>,
}

/// The documents pseudo-queries are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PseudoQuerySources {
    /// Only those the collection's model lists as left out of its training.
    HeldOut,
    /// Any (the model lists none of the collection's documents as left out).
    AnyDocument,
}

fn as_text<T: std::fmt::Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

fn optional_text<S: Serializer>(value: &Option<Fusion>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(fusion) => s.collect_str(fusion),
        None => s.serialize_none(),
    }
}

impl Tuning {
    /// The best setting tried and its score.
    pub fn best(&self) -> &ScoredFusion {
        &self.settings[0]
    }

    /// The better side's score alone.
    pub fn side_value(&self) -> f64 {
        match self.best_side {
            "keyword" => self.keyword,
            _ => self.semantic,
        }
    }

    /// Makes the chosen setting `collection`'s default hybrid fusion.
    pub fn save(
        &mut self,
        collection: &mut cloze_index::Collection,
    ) -> Result<(), cloze_index::IndexError> {
        collection.set_default_fusion(Some(self.chosen.to_settings()))?;
        self.saved = Some(self.chosen);
        Ok(())
    }
}

/// One query's candidates: both sides as retrieved, and the semantic side of each feedback
/// setting at each depth (feedback moves the query by the keyword side's best hits, so its
/// semantic side differs with both).
struct Retrieved {
    id: String,
    found: Candidates,
    moved: Vec<((usize, Feedback), Ranking)>,
}

impl Retrieved {
    /// The semantic side that `fusion` fuses.
    fn semantic(&self, fusion: &Fusion) -> &Ranking {
        let Some(feedback) = fusion.feedback else {
            return &self.found.semantic;
        };
        let key = (fusion.depth, feedback);
        // Every setting tried was retrieved.
        let (_, ranking) = self.moved.iter().find(|(k, _)| *k == key).expect("retrieved");
        ranking
    }
}

/// Tries every fusion setting of `options` on `queries`, scored against `qrels`, and chooses
/// one (see [`TuneOptions::significance`]); `on_query` is called after each query's
/// candidates are retrieved, for progress.
pub fn tune(
    collection: &cloze_index::Collection,
    queries: &[JudgedQuery],
    qrels: &Qrels,
    options: &TuneOptions,
    mut on_query: impl FnMut(),
) -> Result<Tuning, SearchError> {
    let settings = options.settings()?;
    let deepest = options.depths.iter().copied().max().expect("checked: not empty");
    let feedbacks: Vec<Feedback> = {
        let mut seen = Vec::new();
        for feedback in settings.iter().filter_map(|f| f.feedback) {
            if !seen.contains(&feedback) {
                seen.push(feedback);
            }
        }
        seen
    };
    let mut template = SearchRequest::new("", Mode::Hybrid, deepest);
    template.ef_search = options.ef_search;
    let mut sides = Vec::new();
    for query in queries {
        let in_query =
            |error| SearchError::InQuery { id: query.id.clone(), source: Box::new(error) };
        let found = candidates(collection, &query.request(&template), deepest).map_err(in_query)?;
        let mut moved: Vec<((usize, Feedback), Ranking)> = Vec::new();
        for &depth in &options.depths {
            for &feedback in &feedbacks {
                let ranking = found.with_feedback(collection, feedback, depth).map_err(in_query)?;
                moved.push(((depth, feedback), ranking));
            }
        }
        sides.push(Retrieved { id: query.id.clone(), found, moved });
        on_query();
    }

    // Per-query scores, in the judgments' query order.
    let per_query = |ranking: &dyn Fn(&Retrieved) -> Vec<(String, f64)>| -> Vec<f64> {
        let mut run = Run::new();
        for retrieved in &sides {
            run.insert(&retrieved.id, ranking(retrieved));
        }
        evaluate(qrels, &run, &[options.metric]).per_query().values().map(|s| s[0]).collect()
    };
    let mean = |scores: &[f64]| scores.iter().sum::<f64>() / scores.len().max(1) as f64;
    let fused_run = |fusion: Fusion| {
        move |retrieved: &Retrieved| -> Vec<(String, f64)> {
            fuse(&retrieved.found.keyword, retrieved.semantic(&fusion), &fusion)
                .into_iter()
                .map(|f| (f.id, f64::from(f.explanation.fused)))
                .collect()
        }
    };
    let as_run = |side: &[(String, f32)]| -> Vec<(String, f64)> {
        side.iter().map(|(id, s)| (id.clone(), f64::from(*s))).collect()
    };
    let keyword_scores = per_query(&|retrieved| as_run(&retrieved.found.keyword));
    let semantic_scores = per_query(&|retrieved| as_run(&retrieved.found.semantic));
    let (keyword, semantic) = (mean(&keyword_scores), mean(&semantic_scores));
    let mut scored: Vec<ScoredFusion> = settings
        .into_iter()
        .map(|fusion| ScoredFusion { fusion, value: mean(&per_query(&fused_run(fusion))) })
        .collect();
    // A stable sort: among equals, the earlier (smaller, simpler) setting first.
    scored.sort_by(|a, b| b.value.total_cmp(&a.value));
    let best = scored[0].clone();

    // The best fusion against the better side alone, on the same queries.
    let (best_side, side_value, side_scores, side_alpha) = if keyword >= semantic {
        ("keyword", keyword, &keyword_scores, 0.0)
    } else {
        ("semantic", semantic, &semantic_scores, 1.0)
    };
    let p_value = paired_randomization_test(
        &per_query(&fused_run(best.fusion)),
        side_scores,
        SIGNIFICANCE_TRIALS,
        SIGNIFICANCE_SEED,
    );
    let fusion_wins =
        options.significance >= 1.0 || (best.value > side_value && p_value < options.significance);
    let chosen = if fusion_wins {
        best.fusion
    } else {
        // As deep as was tried: the fused ranking is then that side's own, all the way down.
        let FusionMethod::Convex { normalization, .. } = Fusion::SCIFACT_TUNED.method else {
            unreachable!("the tuned default is convex")
        };
        let method = FusionMethod::Convex { alpha: side_alpha, normalization };
        Fusion { method, depth: deepest, feedback: None }
    };
    Ok(Tuning {
        metric: options.metric,
        queries: sides.len(),
        keyword,
        semantic,
        settings: scored,
        best_side,
        p_value,
        chosen,
        fusion_wins,
        saved: None,
        pseudo_query_sources: None,
    })
}
