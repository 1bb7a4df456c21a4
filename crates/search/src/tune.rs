//! Tuning hybrid fusion on judged queries: which fusion setting ranks them best, and whether
//! it beats the better side alone by more than chance.
//!
//! Each query's keyword and semantic candidates are retrieved once, as deep as the deepest
//! setting tried (and the semantic side once more for each feedback setting, which moves the
//! query by the keyword side's best hits); every combination of method, depth and feedback is
//! then only a fusion of lists already in memory. In a collection that expands its documents,
//! the expansion weight is chosen first, on keyword search alone, by the same guard.

use cloze_eval::{evaluate, paired_randomization_test, Metric, Qrels, Run};
use serde::{Serialize, Serializer};

use cloze_index::ExpansionSettings;

use crate::{
    candidates, fuse, search_judged, Candidates, Feedback, Fusion, FusionMethod, JudgedQuery, Mode,
    Ranking, SearchError, SearchRequest,
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
    /// Keyword side, in a collection that expands its documents: the weights of the
    /// neighbours' text to try (beside the collection's own), before any fusion; empty keeps
    /// the collection's. None: [`EXPANSION_WEIGHTS`] on judged queries, none on
    /// pseudo-queries, which undervalue expansion (a query that is a document's own sentence
    /// matches that document's other words best; on SciFact and NPL they chose no expansion,
    /// where the test judgments gain 0.007 and 0.024 from the default weight).
    pub expansion_weights: Option<Vec<f64>>,
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
            expansion_weights: None,
            ef_search: None,
            significance: 0.05,
        }
    }
}

/// The expansion weights tuning on judged queries tries by default.
pub const EXPANSION_WEIGHTS: [f64; 5] = [0.0, 0.2, 0.4, 0.7, 1.0];

impl TuneOptions {
    /// The expansion weights to try: those given, else [`EXPANSION_WEIGHTS`].
    pub fn expansion_weights(&self) -> &[f64] {
        self.expansion_weights.as_deref().unwrap_or(&EXPANSION_WEIGHTS)
    }

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
        if let Some(message) =
            self.expansion_weights().iter().find_map(|w| ExpansionSettings::check_weight(*w).err())
        {
            return Err(invalid("expansion_weights", message));
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
    /// In a collection that expands its documents, the expansion weight chosen first, on
    /// keyword search alone; `keyword` and every fusion were then scored with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expansion: Option<ExpansionTuning>,
}

/// How keyword search ranked the tuning queries with each weight of the neighbours' text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExpansionTuning {
    /// The collection's weight before tuning.
    pub current: f64,
    /// Each weight tried, with keyword search's mean score; best first, and among equals the
    /// collection's own, then the smaller.
    pub weights: Vec<ScoredWeight>,
    /// The paired randomization test of the best weight against the collection's own.
    pub p_value: f64,
    /// The best weight if it beats the collection's own beyond chance (the same guard as the
    /// fusion's); else the collection's own.
    pub chosen: f64,
}

/// An expansion weight and keyword search's mean score with it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ScoredWeight {
    pub weight: f64,
    pub value: f64,
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

    /// Makes the chosen setting `collection`'s default hybrid fusion, and the chosen expansion
    /// weight (where one was tuned) its default for every search.
    pub fn save(
        &mut self,
        collection: &mut cloze_index::Collection,
    ) -> Result<(), cloze_index::IndexError> {
        if let Some(expansion) = &self.expansion {
            collection.set_expansion_weight(expansion.chosen)?;
        }
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
    let expansion = match collection.expansion() {
        Some((_, settings)) if !options.expansion_weights().is_empty() => {
            Some(tune_expansion(collection, queries, qrels, options, settings.weight, deepest)?)
        }
        _ => None,
    };
    let mut template = SearchRequest::new("", Mode::Hybrid, deepest);
    template.ef_search = options.ef_search;
    template.expansion_weight = expansion.as_ref().map(|expansion| expansion.chosen);
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

    let per_query = |ranking: &dyn Fn(&Retrieved) -> Vec<(String, f64)>| -> Vec<f64> {
        let mut run = Run::new();
        for retrieved in &sides {
            run.insert(&retrieved.id, ranking(retrieved));
        }
        per_query_scores(qrels, options.metric, &run)
    };
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
        expansion,
    })
}

/// Each query's score by `metric`, in the judgments' query order.
fn per_query_scores(qrels: &Qrels, metric: Metric, run: &Run) -> Vec<f64> {
    evaluate(qrels, run, &[metric]).per_query().values().map(|s| s[0]).collect()
}

fn mean(scores: &[f64]) -> f64 {
    scores.iter().sum::<f64>() / scores.len().max(1) as f64
}

/// Keyword search of `queries` with the collection's expansion weight (`current`) and with
/// each of `options.expansion_weights`, `depth` deep: the best weight, kept only if it beats
/// the collection's own beyond chance. Fusion is tuned after, on this weight's keyword side:
/// trying every weight with every fusion would multiply the semantic searches that feedback
/// makes by the number of weights.
fn tune_expansion(
    collection: &cloze_index::Collection,
    queries: &[JudgedQuery],
    qrels: &Qrels,
    options: &TuneOptions,
    current: f64,
    depth: usize,
) -> Result<ExpansionTuning, SearchError> {
    let mut tried = vec![current];
    for &weight in options.expansion_weights() {
        if !tried.contains(&weight) {
            tried.push(weight);
        }
    }
    let mut template = SearchRequest::new("", Mode::Keyword, depth);
    template.with_documents = false;
    let mut scores: Vec<(f64, Vec<f64>)> = Vec::new();
    for &weight in &tried {
        template.expansion_weight = Some(weight);
        let run = search_judged(collection, &template, queries, || {})?;
        scores.push((weight, per_query_scores(qrels, options.metric, &run)));
    }
    let mut weights: Vec<ScoredWeight> = scores
        .iter()
        .map(|(weight, per_query)| ScoredWeight { weight: *weight, value: mean(per_query) })
        .collect();
    // A stable sort, the collection's own weight first among equals; then the smaller.
    weights.sort_by(|a, b| {
        let own = |w: &ScoredWeight| w.weight != current;
        b.value.total_cmp(&a.value).then(own(a).cmp(&own(b))).then(a.weight.total_cmp(&b.weight))
    });
    let best = weights[0];
    let scores_of = |weight: f64| &scores.iter().find(|(w, _)| *w == weight).expect("tried").1;
    let p_value = if best.weight == current {
        1.0
    } else {
        paired_randomization_test(
            scores_of(best.weight),
            scores_of(current),
            SIGNIFICANCE_TRIALS,
            SIGNIFICANCE_SEED,
        )
    };
    let own_value = mean(scores_of(current));
    let wins = best.weight != current
        && (options.significance >= 1.0
            || (best.value > own_value && p_value < options.significance));
    let chosen = if wins { best.weight } else { current };
    Ok(ExpansionTuning { current, weights, p_value, chosen })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyword::tests::expanding_collection;

    /// An expanding collection of pairs of nearest documents, each the other's neighbour, and
    /// its judged queries: a query names the first's word, and only the second, which never
    /// says it, is relevant: keyword search finds it through its neighbour's text alone.
    fn pairs(dir: &std::path::Path) -> (cloze_index::Collection, Vec<JudgedQuery>, Qrels) {
        let (mut texts, mut queries, mut qrels) = (Vec::new(), Vec::new(), Qrels::default());
        for i in 0..6 {
            let angle = i as f32 * 0.25;
            let near = angle + 0.02;
            let word = format!("topic{i}");
            texts.push((format!("a{i}"), format!("{word} named here"), [angle.cos(), angle.sin()]));
            texts.push((format!("b{i}"), format!("other words {i}"), [near.cos(), near.sin()]));
            let vector = Some(vec![angle.cos(), angle.sin()]);
            queries.push(JudgedQuery { id: format!("q{i}"), text: word, vector });
            qrels.insert(&format!("q{i}"), &format!("b{i}"), 1);
        }
        let documents: Vec<(&str, &str, [f32; 2])> =
            texts.iter().map(|(id, text, v)| (id.as_str(), text.as_str(), *v)).collect();
        (expanding_collection(dir, &documents), queries, qrels)
    }

    #[test]
    fn tuning_chooses_the_expansion_weight_on_keyword_search_first() {
        let dir = tempfile::tempdir().unwrap();
        let (mut collection, queries, qrels) = pairs(dir.path());
        let options = TuneOptions {
            depths: vec![10],
            feedback_docs: vec![0],
            significance: 1.0,
            ..TuneOptions::default()
        };
        let mut tuned = tune(&collection, &queries, &qrels, &options, || {}).unwrap();
        let expansion = tuned.expansion.clone().unwrap();
        assert_eq!(expansion.current, 0.5);
        // The collection's own weight and the five tried.
        let mut tried: Vec<f64> = expansion.weights.iter().map(|w| w.weight).collect();
        tried.sort_by(f64::total_cmp);
        assert_eq!(tried, [0.0, 0.2, 0.4, 0.5, 0.7, 1.0]);
        let value =
            |weight: f64| expansion.weights.iter().find(|w| w.weight == weight).unwrap().value;
        // Without the neighbours' text, no relevant document is found at all.
        assert_eq!(value(0.0), 0.0);
        assert_eq!(expansion.weights.last().unwrap().weight, 0.0);
        assert!(value(0.5) > 0.0);
        assert_eq!(expansion.chosen, expansion.weights[0].weight);
        // The fusions were tried on the chosen weight's keyword side.
        assert_eq!(tuned.keyword, expansion.weights[0].value);

        // Saved, it is the weight of every search that asks for none.
        tuned.save(&mut collection).unwrap();
        let reopened = cloze_index::DataDir::new(dir.path()).open("test").unwrap();
        assert_eq!(reopened.expansion().unwrap().1.weight, expansion.chosen);

        // With the guard, 6 queries cannot move it off the collection's own unless the gain
        // is beyond chance; and what cannot be a weight is refused before any search.
        let guarded = TuneOptions { significance: 0.05, ..options.clone() };
        let kept = tune(&reopened, &queries, &qrels, &guarded, || {}).unwrap();
        let kept = kept.expansion.unwrap();
        assert!(kept.chosen == kept.current || kept.p_value < 0.05, "{kept:?}");
        let refused = TuneOptions { expansion_weights: Some(vec![0.5, -1.0]), ..options };
        let error = tune(&reopened, &queries, &qrels, &refused, || {}).unwrap_err().to_string();
        assert!(error.starts_with("expansion_weights: is -1"), "{error}");
    }
}
