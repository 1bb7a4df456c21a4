//! Hybrid ranking: the keyword and the semantic ranking of the same query, fused.
//!
//! Each side retrieves its best `depth` documents; [`fuse`] combines the two lists by
//! reciprocal rank fusion or by a convex combination of normalised scores (Bruch, Gai and
//! Ingber, "An Analysis of Fusion Functions for Hybrid Retrieval", 2023).
//!
//! With [`Feedback`], the semantic side searches for the query's vector moved toward the mean
//! vector of the best keyword hits (Rocchio's pseudo-relevance feedback, in the vector space),
//! and scores every keyword candidate too, not only the ones its graph search returns: a
//! weak encoder's vector of a short query says little, the vectors of the documents BM25
//! ranks first say what the query is about, and the keyword side's candidates are where
//! fusion decides.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use cloze_index::{Collection, FusionSettings};
use serde::Serialize;

use crate::{keyword, query_vector, semantic, Hit, Results, SearchError, SearchRequest, Timings};

/// How each side's scores are put on a common scale before a convex combination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalization {
    /// (s - min) / (max - min) over the side's candidates.
    MinMax,
    /// (s - mean) / standard deviation over the side's candidates.
    ZScore,
    /// (s - lowest possible) / (max - lowest possible): 0 for BM25, -1 for cosine
    /// (Bruch et al.'s TM2C2), so one strong candidate does not stretch the scale.
    Theoretical,
}

impl Normalization {
    pub const ALL: [Normalization; 3] =
        [Normalization::MinMax, Normalization::ZScore, Normalization::Theoretical];

    pub fn name(self) -> &'static str {
        match self {
            Normalization::MinMax => "min-max",
            Normalization::ZScore => "z-score",
            Normalization::Theoretical => "theoretical",
        }
    }
}

impl FromStr for Normalization {
    type Err = String;

    fn from_str(name: &str) -> Result<Normalization, String> {
        Normalization::ALL.into_iter().find(|n| n.name() == name).ok_or_else(|| {
            format!("unknown normalization \"{name}\": expected min-max, z-score or theoretical")
        })
    }
}

/// How the two rankings become one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FusionMethod {
    /// Reciprocal rank fusion: the sum over sides of 1 / (k + rank).
    Rrf { k: f64 },
    /// alpha x semantic + (1 - alpha) x keyword, each normalised; a document one side did not
    /// retrieve gets that side's lowest normalised score.
    Convex { alpha: f64, normalization: Normalization },
}

/// Pseudo-relevance feedback for the semantic side of a hybrid search (see the module's
/// documentation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Feedback {
    /// How many of the best keyword hits the query's vector moves toward (at least 1).
    pub docs: usize,
    /// The weight of their mean vector added to the query's (0 or more) before it is
    /// normalised again.
    pub weight: f64,
}

impl Feedback {
    pub const DEFAULT_WEIGHT: f64 = 1.0;
}

/// Fusion settings of a hybrid search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fusion {
    pub method: FusionMethod,
    /// Candidates each side retrieves.
    pub depth: usize,
    /// Pseudo-relevance feedback for the semantic side, if any.
    pub feedback: Option<Feedback>,
}

impl Default for Fusion {
    fn default() -> Fusion {
        Fusion::SCIFACT_TUNED
    }
}

impl Fusion {
    /// The fusion used when none is named, and what fills in a setting left out: what measured
    /// best at 100 candidates a side when tuned by `cloze tune` on SciFact's 809 training
    /// queries with all-MiniLM-L6-v2 (nDCG@10 0.738; keyword 0.698, semantic 0.660), and
    /// within 0.001 of the best with our `tiny` encoder; reciprocal rank fusion at k = 60
    /// scored 0.38 with `tiny`, far below keyword alone.
    pub const SCIFACT_TUNED: Fusion = Fusion {
        method: FusionMethod::Convex { alpha: 0.8, normalization: Normalization::Theoretical },
        depth: 100,
        feedback: None,
    };
    /// Reciprocal rank fusion's usual constant (Cormack et al., 2009).
    pub const DEFAULT_RRF_K: f64 = 60.0;

    /// The fusion a hybrid search of `collection` uses when it asks for none: the collection's
    /// saved default (`cloze tune --save`), else [`Fusion::SCIFACT_TUNED`].
    pub fn default_for(collection: &Collection) -> Result<Fusion, SearchError> {
        match &collection.manifest().fusion {
            Some(settings) => {
                Fusion::from_settings(settings).map_err(|error| SearchError::InvalidFusion {
                    origin: format!("the manifest of \"{}\"", collection.name()),
                    message: error.to_string(),
                })
            }
            None => Ok(Fusion::default()),
        }
    }

    /// The fusion a request asks for: None when it gives no setting (the collection's default
    /// applies), else [`Fusion::from_settings`].
    pub fn requested(settings: &FusionSettings) -> Result<Option<Fusion>, FusionParamError> {
        match settings.is_empty() {
            true => Ok(None),
            false => Fusion::from_settings(settings).map(Some),
        }
    }

    /// Checks `settings`, the defaults of [`Fusion::SCIFACT_TUNED`] filling in what they
    /// leave out; an error names the setting that cannot be used, and why.
    pub fn from_settings(settings: &FusionSettings) -> Result<Fusion, FusionParamError> {
        let error = |param, message: String| FusionParamError { param, message };
        let rrf = match settings.method.as_deref() {
            Some("rrf") => true,
            Some("convex") => false,
            Some(other) => {
                let message = format!("unknown method \"{other}\": expected rrf or convex");
                return Err(error("method", message));
            }
            None => settings.k.is_some(),
        };
        let method = if rrf {
            for (param, given) in [
                ("alpha", settings.alpha.is_some()),
                ("normalization", settings.normalization.is_some()),
            ] {
                if given {
                    return Err(error(param, "is for the convex method, not rrf".to_string()));
                }
            }
            let k = settings.k.unwrap_or(Fusion::DEFAULT_RRF_K);
            if !(k >= 0.0 && k.is_finite()) {
                return Err(error("k", format!("must be a number of 0 or more (found {k})")));
            }
            FusionMethod::Rrf { k }
        } else {
            if settings.k.is_some() {
                return Err(error("k", "is for the rrf method, not convex".to_string()));
            }
            let FusionMethod::Convex { alpha, normalization } = Fusion::SCIFACT_TUNED.method else {
                unreachable!("the tuned default is convex")
            };
            let alpha = settings.alpha.unwrap_or(alpha);
            if !(0.0..=1.0).contains(&alpha) {
                return Err(error("alpha", format!("must be between 0 and 1 (found {alpha})")));
            }
            let normalization = match settings.normalization.as_deref() {
                Some(name) => name.parse().map_err(|message| error("normalization", message))?,
                None => normalization,
            };
            FusionMethod::Convex { alpha, normalization }
        };
        let depth = settings.depth.unwrap_or(Fusion::SCIFACT_TUNED.depth);
        if depth == 0 {
            return Err(error("depth", "must be at least 1".to_string()));
        }
        let feedback = match (settings.feedback_docs, settings.feedback_weight) {
            (None, None) => None,
            (None, Some(_)) => return Err(error("feedback_weight", "needs feedback_docs".into())),
            (Some(0), _) => return Err(error("feedback_docs", "must be at least 1".into())),
            (Some(docs), weight) => {
                let weight = weight.unwrap_or(Feedback::DEFAULT_WEIGHT);
                if !(weight >= 0.0 && weight.is_finite()) {
                    let message = format!("must be a number of 0 or more (found {weight})");
                    return Err(error("feedback_weight", message));
                }
                Some(Feedback { docs, weight })
            }
        };
        Ok(Fusion { method, depth, feedback })
    }

    /// The complete settings, as a collection's manifest keeps them.
    pub fn to_settings(&self) -> FusionSettings {
        let (method, k, alpha, normalization) = match self.method {
            FusionMethod::Rrf { k } => ("rrf", Some(k), None, None),
            FusionMethod::Convex { alpha, normalization } => {
                ("convex", None, Some(alpha), Some(normalization.name().to_string()))
            }
        };
        FusionSettings {
            method: Some(method.to_string()),
            k,
            alpha,
            normalization,
            depth: Some(self.depth),
            feedback_docs: self.feedback.map(|f| f.docs),
            feedback_weight: self.feedback.map(|f| f.weight),
        }
    }
}

/// A fusion setting that cannot be used: which one, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct FusionParamError {
    /// The setting's name, as a field of [`FusionSettings`].
    pub param: &'static str,
    pub message: String,
}

impl fmt::Display for Fusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.method {
            FusionMethod::Rrf { k } => write!(f, "rrf k={k} depth={}", self.depth)?,
            FusionMethod::Convex { alpha, normalization } => write!(
                f,
                "convex alpha={alpha} normalization={} depth={}",
                normalization.name(),
                self.depth
            )?,
        }
        match self.feedback {
            Some(Feedback { docs, weight }) => {
                write!(f, " feedback_docs={docs} feedback_weight={weight}")
            }
            None => Ok(()),
        }
    }
}

/// One side's view of a hit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SideScore {
    /// 1 for the side's best document.
    pub rank: usize,
    pub score: f32,
}

/// Why a hybrid hit ranks where it does.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyword: Option<SideScore>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub semantic: Option<SideScore>,
    pub fused: f32,
}

/// A fused document: its id, fused score, and each side's rank and score.
#[derive(Debug, Clone, PartialEq)]
pub struct Fused {
    pub id: String,
    pub explanation: Explanation,
}

impl From<Fused> for Hit {
    /// A hit ranked by its fused score, with how it was fused as its explanation.
    fn from(fused: Fused) -> Hit {
        let mut hit = Hit::ranked(fused.id, fused.explanation.fused);
        hit.explanation = Some(fused.explanation);
        hit
    }
}

/// Fuses two rankings (best first) into one, best first; equal fused scores keep the order in
/// which documents were first met, keyword side first. Each side is cut to `fusion.depth`,
/// except a semantic side with feedback, which [`Candidates::with_feedback`] has already cut
/// and extended by the keyword candidates.
pub fn fuse(keyword: &[(String, f32)], semantic: &[(String, f32)], fusion: &Fusion) -> Vec<Fused> {
    let keyword = &keyword[..keyword.len().min(fusion.depth)];
    let semantic = match fusion.feedback {
        Some(_) => semantic,
        None => &semantic[..semantic.len().min(fusion.depth)],
    };
    let mut fused: Vec<Fused> = Vec::new();
    let mut position: HashMap<&str, usize> = HashMap::new();
    for (side, ranking) in [keyword, semantic].into_iter().enumerate() {
        for (rank, (id, score)) in ranking.iter().enumerate() {
            let index = *position.entry(id.as_str()).or_insert_with(|| {
                fused.push(Fused {
                    id: id.clone(),
                    explanation: Explanation { keyword: None, semantic: None, fused: 0.0 },
                });
                fused.len() - 1
            });
            let side_score = Some(SideScore { rank: rank + 1, score: *score });
            let explanation = &mut fused[index].explanation;
            if side == 0 {
                explanation.keyword = side_score;
            } else {
                explanation.semantic = side_score;
            }
        }
    }
    match fusion.method {
        FusionMethod::Rrf { k } => {
            let term = |side: Option<SideScore>| side.map_or(0.0, |s| 1.0 / (k + s.rank as f64));
            for hit in &mut fused {
                let e = &hit.explanation;
                hit.explanation.fused = (term(e.keyword) + term(e.semantic)) as f32;
            }
        }
        FusionMethod::Convex { alpha, normalization } => {
            let keyword_scale = Scale::of(keyword, normalization, 0.0);
            let semantic_scale = Scale::of(semantic, normalization, -1.0);
            for hit in &mut fused {
                let e = &hit.explanation;
                let keyword = keyword_scale.normalise(e.keyword.map(|s| s.score));
                let semantic = semantic_scale.normalise(e.semantic.map(|s| s.score));
                hit.explanation.fused = (alpha * semantic + (1.0 - alpha) * keyword) as f32;
            }
        }
    }
    // A stable sort: ties keep the order above.
    fused.sort_by(|a, b| b.explanation.fused.total_cmp(&a.explanation.fused));
    fused
}

/// One side's normalisation, fitted to its candidates.
struct Scale {
    normalization: Normalization,
    low: f64,
    high: f64,
    mean: f64,
    deviation: f64,
    /// What a document the side did not retrieve gets.
    missing: f64,
}

impl Scale {
    fn of(ranking: &[(String, f32)], normalization: Normalization, lowest_possible: f64) -> Scale {
        let scores: Vec<f64> = ranking.iter().map(|(_, s)| f64::from(*s)).collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let min = scores.iter().copied().fold(f64::INFINITY, f64::min);
        let n = scores.len().max(1) as f64;
        let mean = scores.iter().sum::<f64>() / n;
        let deviation = (scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n).sqrt();
        let low = match normalization {
            Normalization::Theoretical => lowest_possible,
            _ => min,
        };
        let mut scale = Scale { normalization, low, high: max, mean, deviation, missing: 0.0 };
        scale.missing = if scores.is_empty() { 0.0 } else { scale.normalise(Some(min as f32)) };
        scale
    }

    fn normalise(&self, score: Option<f32>) -> f64 {
        let Some(score) = score.map(f64::from) else {
            return self.missing;
        };
        match self.normalization {
            Normalization::MinMax | Normalization::Theoretical => {
                if self.high > self.low {
                    (score - self.low) / (self.high - self.low)
                } else {
                    1.0
                }
            }
            Normalization::ZScore => {
                if self.deviation > 0.0 {
                    (score - self.mean) / self.deviation
                } else {
                    0.0
                }
            }
        }
    }
}

/// Ranked documents, best first: (id, score).
pub type Ranking = Vec<(String, f32)>;

/// What each side retrieved for one query.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidates {
    pub keyword: Ranking,
    pub semantic: Ranking,
    /// The time each side took (encode, keyword, vector).
    pub timings: Timings,
    /// The query's vector (None for a query with no text), kept so feedback can move it
    /// without embedding the query again.
    query: Option<Vec<f32>>,
    /// The documents the request's filter lets through; None without a filter.
    allowed: Option<HashSet<String>>,
    ef_search: Option<usize>,
}

/// Both sides' rankings for a query, `depth` deep.
pub fn candidates(
    collection: &Collection,
    request: &SearchRequest,
    depth: usize,
) -> Result<Candidates, SearchError> {
    retrieve(collection, request, depth, true)
}

/// The keyword side and the query's vector; the semantic side too if `search_vectors` (a
/// search with feedback searches with the moved vector only, see [`Candidates::with_feedback`]).
fn retrieve(
    collection: &Collection,
    request: &SearchRequest,
    depth: usize,
    search_vectors: bool,
) -> Result<Candidates, SearchError> {
    let mut side_request = request.clone();
    (side_request.limit, side_request.offset, side_request.with_documents) = (depth, 0, false);
    let found = keyword::search(collection, &side_request)?;
    let keyword: Ranking = found.hits.into_iter().map(|hit| (hit.id, hit.score)).collect();
    let mut timings = Timings { keyword: found.timings.keyword, ..Timings::default() };
    let ef_search = request.ef_search;
    let Some(query) = query_vector(collection, request, &mut timings)? else {
        let (semantic, query, allowed) = (Vec::new(), None, None);
        return Ok(Candidates { keyword, semantic, timings, query, allowed, ef_search });
    };
    let started = Instant::now();
    let allowed = semantic::allowed_documents(collection, request)?;
    let semantic = if search_vectors {
        nearest(collection, &query, depth, ef_search, allowed.as_ref())?
    } else {
        Vec::new()
    };
    timings.vector = started.elapsed();
    Ok(Candidates { keyword, semantic, timings, query: Some(query), allowed, ef_search })
}

fn nearest(
    collection: &Collection,
    query: &[f32],
    depth: usize,
    ef_search: Option<usize>,
    allowed: Option<&HashSet<String>>,
) -> Result<Ranking, SearchError> {
    let neighbours = collection.nearest(query, depth, ef_search, allowed)?;
    Ok(neighbours.into_iter().map(|n| (n.id, n.similarity)).collect())
}

impl Candidates {
    /// The semantic side with `feedback`, `depth` deep: the query's vector moved toward the
    /// mean vector of the best `feedback.docs` keyword candidates, then its `depth` nearest
    /// documents and every keyword candidate within `depth` that they miss, all scored against
    /// the moved vector, best first. Where no feedback document has a vector, the same with
    /// the query's own vector.
    pub fn with_feedback(
        &self,
        collection: &Collection,
        feedback: Feedback,
        depth: usize,
    ) -> Result<Ranking, SearchError> {
        let Some(query) = &self.query else {
            return Ok(Vec::new());
        };
        let keyword = &self.keyword[..self.keyword.len().min(depth)];
        let best: Vec<&str> =
            keyword.iter().take(feedback.docs).map(|(id, _)| id.as_str()).collect();
        let moved = match collection.mean_vector(&best)? {
            Some(mean) => moved_toward(query, &mean, feedback.weight as f32),
            None => query.clone(),
        };
        let mut ranking =
            nearest(collection, &moved, depth, self.ef_search, self.allowed.as_ref())?;
        let found: HashSet<&str> = ranking.iter().map(|(id, _)| id.as_str()).collect();
        let missed: Vec<&str> =
            keyword.iter().map(|(id, _)| id.as_str()).filter(|id| !found.contains(id)).collect();
        let scores = collection.similarities(&moved, &missed)?;
        let scored: Vec<(String, f32)> = missed
            .into_iter()
            .zip(scores)
            .filter_map(|(id, score)| Some((id.to_string(), score?)))
            .collect();
        ranking.extend(scored);
        // A stable sort: ties keep the graph's order, then the keyword side's.
        ranking.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(ranking)
    }
}

/// `query + weight x mean`, at unit length; the query itself where the mean cancels it.
fn moved_toward(query: &[f32], mean: &[f32], weight: f32) -> Vec<f32> {
    let mut moved: Vec<f32> = query.iter().zip(mean).map(|(q, m)| q + weight * m).collect();
    let norm = moved.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 {
        return query.to_vec();
    }
    moved.iter_mut().for_each(|x| *x /= norm);
    moved
}

pub(crate) fn search(
    collection: &Collection,
    request: &SearchRequest,
) -> Result<Results, SearchError> {
    let fusion = match request.fusion {
        Some(fusion) => fusion,
        None => Fusion::default_for(collection)?,
    };
    let found = retrieve(collection, request, fusion.depth, fusion.feedback.is_none())?;
    let mut timings = found.timings;
    let semantic = match fusion.feedback {
        Some(feedback) => {
            let started = Instant::now();
            let ranking = found.with_feedback(collection, feedback, fusion.depth)?;
            timings.vector += started.elapsed();
            ranking
        }
        None => found.semantic,
    };
    let started = Instant::now();
    let fused = fuse(&found.keyword, &semantic, &fusion);
    let total = fused.len();
    let mut hits: Vec<Hit> =
        fused.into_iter().skip(request.offset).take(request.limit).map(Hit::from).collect();
    timings.fusion = started.elapsed();
    if request.with_documents {
        let started = Instant::now();
        semantic::fill_documents_by_id(collection, &mut hits, request)?;
        timings.documents = started.elapsed();
    }
    Ok(Results { hits, total, timings })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranking(items: &[(&str, f32)]) -> Vec<(String, f32)> {
        items.iter().map(|(id, s)| (id.to_string(), *s)).collect()
    }

    fn ids(fused: &[Fused]) -> Vec<&str> {
        fused.iter().map(|f| f.id.as_str()).collect()
    }

    #[test]
    fn reciprocal_rank_fusion_sums_one_over_k_plus_rank() {
        let keyword = ranking(&[("a", 9.0), ("b", 5.0), ("c", 1.0)]);
        let semantic = ranking(&[("c", 0.9), ("b", 0.8), ("d", 0.1)]);
        let fusion = Fusion { method: FusionMethod::Rrf { k: 60.0 }, depth: 100, feedback: None };
        let fused = fuse(&keyword, &semantic, &fusion);
        // c: 1/63 + 1/61 = 0.032266; b: 1/62 + 1/62 = 0.032258; a: 1/61; d: 1/63.
        assert_eq!(ids(&fused), ["c", "b", "a", "d"]);
        let b = &fused[1].explanation;
        assert!((b.fused - 2.0 / 62.0).abs() < 1e-7);
        assert_eq!(b.keyword, Some(SideScore { rank: 2, score: 5.0 }));
        assert_eq!(b.semantic, Some(SideScore { rank: 2, score: 0.8 }));
        assert_eq!(fused[3].explanation.keyword, None);
    }

    #[test]
    fn convex_combination_weighs_normalised_scores() {
        let keyword = ranking(&[("a", 10.0), ("b", 6.0), ("c", 2.0)]);
        let semantic = ranking(&[("c", 0.9), ("b", 0.5), ("a", 0.1)]);
        let convex = |alpha, normalization| Fusion {
            method: FusionMethod::Convex { alpha, normalization },
            depth: 100,
            feedback: None,
        };
        // alpha 0 and 1 reproduce each side.
        assert_eq!(
            ids(&fuse(&keyword, &semantic, &convex(0.0, Normalization::MinMax))),
            ["a", "b", "c"]
        );
        assert_eq!(
            ids(&fuse(&keyword, &semantic, &convex(1.0, Normalization::ZScore))),
            ["c", "b", "a"]
        );
        // Min-max: a = 0.3 x 1 + 0.7 x 0 ... c = 0.3 x 0 + 0.7 x 1.
        let fused = fuse(&keyword, &semantic, &convex(0.7, Normalization::MinMax));
        assert_eq!(ids(&fused), ["c", "b", "a"]);
        assert!((fused[0].explanation.fused - 0.7).abs() < 1e-6);
        // Theoretical: keyword over [0, 10], cosine over [-1, 0.9].
        let fused = fuse(&keyword, &semantic, &convex(0.5, Normalization::Theoretical));
        let a = fused.iter().find(|f| f.id == "a").unwrap();
        assert!((a.explanation.fused - (0.5 * 1.0 + 0.5 * 1.1 / 1.9) as f32).abs() < 1e-6);
    }

    #[test]
    fn a_document_one_side_missed_gets_that_sides_lowest_score_and_depth_cuts_both() {
        let keyword = ranking(&[("a", 4.0), ("b", 2.0)]);
        let semantic = ranking(&[("c", 0.8), ("a", 0.4), ("z", 0.2)]);
        let fusion = Fusion {
            method: FusionMethod::Convex { alpha: 0.5, normalization: Normalization::MinMax },
            depth: 2,
            feedback: None,
        };
        let fused = fuse(&keyword, &semantic, &fusion);
        assert_eq!(ids(&fused), ["a", "c", "b"], "z is below the depth");
        // c: keyword missing -> 0; semantic 1. a: keyword 1, semantic 0.
        assert!((fused[1].explanation.fused - 0.5).abs() < 1e-6);
        assert!(fuse(&[], &[], &fusion).is_empty());
    }

    #[test]
    fn feedback_parameters_are_checked_kept_and_shown() {
        let settings = |docs, weight| FusionSettings {
            feedback_docs: docs,
            feedback_weight: weight,
            ..FusionSettings::default()
        };
        let fusion = Fusion::from_settings(&settings(Some(3), None)).unwrap();
        assert_eq!(fusion.feedback, Some(Feedback { docs: 3, weight: Feedback::DEFAULT_WEIGHT }));
        assert_eq!(fusion.method, Fusion::default().method);
        assert!(fusion.to_string().ends_with(" feedback_docs=3 feedback_weight=1"), "{fusion}");
        assert_eq!(Fusion::from_settings(&fusion.to_settings()), Ok(fusion));
        // Without feedback the stored form has no feedback fields, as before they existed.
        let plain = serde_json::to_value(Fusion::default().to_settings()).unwrap();
        assert_eq!(plain.get("feedback_docs"), None);
        assert_eq!(Fusion::requested(&FusionSettings::default()), Ok(None));

        for (docs, weight, param) in [
            (Some(0), None, "feedback_docs"),
            (Some(2), Some(-1.0), "feedback_weight"),
            (Some(2), Some(f64::NAN), "feedback_weight"),
            (None, Some(1.0), "feedback_weight"),
        ] {
            assert_eq!(Fusion::from_settings(&settings(docs, weight)).unwrap_err().param, param);
        }
    }

    #[test]
    fn settings_are_checked_in_one_place_with_the_setting_named() {
        let given = |json: &str| {
            let settings: FusionSettings = serde_json::from_str(json).unwrap();
            Fusion::from_settings(&settings)
        };
        assert_eq!(given("{}"), Ok(Fusion::SCIFACT_TUNED));
        assert_eq!(given(r#"{"k": 10}"#).unwrap().method, FusionMethod::Rrf { k: 10.0 });
        assert_eq!(
            given(r#"{"method": "rrf"}"#).unwrap().method,
            FusionMethod::Rrf { k: Fusion::DEFAULT_RRF_K }
        );
        for (json, param) in [
            (r#"{"method": "sum"}"#, "method"),
            (r#"{"method": "rrf", "alpha": 0.5}"#, "alpha"),
            (r#"{"k": 10, "normalization": "min-max"}"#, "normalization"),
            (r#"{"method": "convex", "k": 10}"#, "k"),
            (r#"{"k": -1}"#, "k"),
            (r#"{"alpha": 1.5}"#, "alpha"),
            (r#"{"normalization": "l2"}"#, "normalization"),
            (r#"{"depth": 0}"#, "depth"),
        ] {
            assert_eq!(given(json).unwrap_err().param, param, "{json}");
        }
        // A manifest written before the settings became optional still reads the same.
        let stored = r#"{"method":"convex","alpha":0.8,"normalization":"theoretical","depth":100}"#;
        assert_eq!(given(stored), Ok(Fusion::SCIFACT_TUNED));
        assert_eq!(serde_json::to_string(&Fusion::SCIFACT_TUNED.to_settings()).unwrap(), stored);
    }

    #[test]
    fn with_feedback_the_semantic_side_is_not_cut_to_the_depth() {
        // It holds the graph's `depth` best and the keyword candidates the graph missed.
        let keyword = ranking(&[("a", 4.0), ("b", 2.0)]);
        let semantic = ranking(&[("c", 0.8), ("a", 0.4), ("b", 0.2)]);
        let feedback = Some(Feedback { docs: 1, weight: 1.0 });
        let method = FusionMethod::Convex { alpha: 1.0, normalization: Normalization::MinMax };
        let fused = fuse(&keyword, &semantic, &Fusion { method, depth: 2, feedback });
        assert_eq!(ids(&fused), ["c", "a", "b"]);
        assert_eq!(fused[2].explanation.semantic, Some(SideScore { rank: 3, score: 0.2 }));
    }
}
