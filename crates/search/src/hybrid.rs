//! Hybrid ranking: the keyword and the semantic ranking of the same query, fused.
//!
//! Each side retrieves its best `depth` documents; [`fuse`] combines the two lists by
//! reciprocal rank fusion or by a convex combination of normalised scores (Bruch, Gai and
//! Ingber, "An Analysis of Fusion Functions for Hybrid Retrieval", 2023).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use cloze_index::{Collection, FusionSettings};
use serde::{Deserialize, Serialize};

use crate::{keyword, semantic, Hit, Results, SearchError, SearchRequest, Timings};

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

/// Fusion settings of a hybrid search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fusion {
    pub method: FusionMethod,
    /// Candidates each side retrieves.
    pub depth: usize,
}

impl Default for Fusion {
    /// What measured best at 100 candidates a side when tuned by `cloze tune` on SciFact's
    /// 809 training queries with all-MiniLM-L6-v2 (nDCG@10 0.738; keyword 0.698, semantic
    /// 0.660), and within 0.001 of the best with our `tiny` encoder; reciprocal rank fusion at
    /// k = 60 scored 0.38 with `tiny`, far below keyword alone.
    fn default() -> Fusion {
        let method = FusionMethod::Convex {
            alpha: Fusion::DEFAULT_ALPHA,
            normalization: Fusion::DEFAULT_NORMALIZATION,
        };
        Fusion { method, depth: Fusion::DEFAULT_DEPTH }
    }
}

impl Fusion {
    /// The convex combination used when none is named (see [`Fusion::default`]).
    pub const DEFAULT_ALPHA: f64 = 0.8;
    pub const DEFAULT_NORMALIZATION: Normalization = Normalization::Theoretical;
    /// Reciprocal rank fusion's usual constant (Cormack et al., 2009).
    pub const DEFAULT_RRF_K: f64 = 60.0;
    pub const DEFAULT_DEPTH: usize = 100;

    /// The fusion a hybrid search of `collection` uses when it asks for none: the collection's
    /// saved default (`cloze tune --save`), else [`Fusion::default`].
    pub fn default_for(collection: &Collection) -> Result<Fusion, SearchError> {
        match &collection.manifest().fusion {
            Some(settings) => {
                Fusion::from_settings(settings).map_err(|message| SearchError::InvalidFusion {
                    origin: format!("the manifest of \"{}\"", collection.name()),
                    message,
                })
            }
            None => Ok(Fusion::default()),
        }
    }

    /// The form a collection's manifest keeps.
    pub fn to_settings(&self) -> FusionSettings {
        let (method, k, alpha, normalization) = match self.method {
            FusionMethod::Rrf { k } => ("rrf", Some(k), None, None),
            FusionMethod::Convex { alpha, normalization } => {
                ("convex", None, Some(alpha), Some(normalization.name().to_string()))
            }
        };
        FusionSettings { method: method.to_string(), k, alpha, normalization, depth: self.depth }
    }

    pub fn from_settings(settings: &FusionSettings) -> Result<Fusion, String> {
        let method = match settings.method.as_str() {
            "rrf" => FusionMethod::Rrf { k: settings.k.ok_or("rrf needs k")? },
            "convex" => FusionMethod::Convex {
                alpha: settings.alpha.ok_or("convex needs alpha")?,
                normalization: settings
                    .normalization
                    .as_deref()
                    .ok_or("convex needs normalization")?
                    .parse()?,
            },
            other => return Err(format!("unknown fusion method \"{other}\"")),
        };
        if settings.depth == 0 {
            return Err("depth must be at least 1".to_string());
        }
        Ok(Fusion { method, depth: settings.depth })
    }
}

/// Fusion settings as a person gives them (flags, a JSON request): any may be missing, and
/// the missing ones take the defaults of the method.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FusionParams {
    /// `rrf` or `convex` [default: rrf if `k` is given, else convex].
    pub method: Option<String>,
    /// Convex: the semantic side's weight, 0 to 1.
    pub alpha: Option<f64>,
    /// Convex: `min-max`, `z-score` or `theoretical`.
    pub normalization: Option<String>,
    /// Reciprocal rank fusion's constant.
    pub k: Option<f64>,
    /// Candidates per side.
    pub depth: Option<usize>,
}

/// A fusion parameter that cannot be used: which one, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct FusionParamError {
    /// The parameter's name in [`FusionParams`].
    pub param: &'static str,
    pub message: String,
}

impl FusionParams {
    /// The fusion asked for, the defaults filling in what was not given; None if nothing was.
    pub fn fusion(&self) -> Result<Option<Fusion>, FusionParamError> {
        if *self == FusionParams::default() {
            return Ok(None);
        }
        let error = |param, message: String| FusionParamError { param, message };
        let rrf = match self.method.as_deref() {
            Some("rrf") => true,
            Some("convex") => false,
            Some(other) => {
                let message = format!("unknown method \"{other}\": expected rrf or convex");
                return Err(error("method", message));
            }
            None => self.k.is_some(),
        };
        let method = if rrf {
            for (param, given) in
                [("alpha", self.alpha.is_some()), ("normalization", self.normalization.is_some())]
            {
                if given {
                    return Err(error(param, "is for the convex method, not rrf".to_string()));
                }
            }
            let k = self.k.unwrap_or(Fusion::DEFAULT_RRF_K);
            if !(k >= 0.0 && k.is_finite()) {
                return Err(error("k", format!("must be a number of 0 or more (found {k})")));
            }
            FusionMethod::Rrf { k }
        } else {
            if self.k.is_some() {
                return Err(error("k", "is for the rrf method, not convex".to_string()));
            }
            let alpha = self.alpha.unwrap_or(Fusion::DEFAULT_ALPHA);
            if !(0.0..=1.0).contains(&alpha) {
                return Err(error("alpha", format!("must be between 0 and 1 (found {alpha})")));
            }
            let normalization = match self.normalization.as_deref() {
                Some(name) => name.parse().map_err(|message| error("normalization", message))?,
                None => Fusion::DEFAULT_NORMALIZATION,
            };
            FusionMethod::Convex { alpha, normalization }
        };
        let depth = self.depth.unwrap_or(Fusion::DEFAULT_DEPTH);
        if depth == 0 {
            return Err(error("depth", "must be at least 1".to_string()));
        }
        Ok(Some(Fusion { method, depth }))
    }
}

impl fmt::Display for Fusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.method {
            FusionMethod::Rrf { k } => write!(f, "rrf k={k} depth={}", self.depth),
            FusionMethod::Convex { alpha, normalization } => write!(
                f,
                "convex alpha={alpha} normalization={} depth={}",
                normalization.name(),
                self.depth
            ),
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

/// Fuses two rankings (best first) into one, best first; equal fused scores keep the order in
/// which documents were first met, keyword side first.
pub fn fuse(keyword: &[(String, f32)], semantic: &[(String, f32)], fusion: &Fusion) -> Vec<Fused> {
    let keyword = &keyword[..keyword.len().min(fusion.depth)];
    let semantic = &semantic[..semantic.len().min(fusion.depth)];
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
}

/// Both sides' rankings for a query, `depth` deep.
pub fn candidates(
    collection: &Collection,
    request: &SearchRequest,
    depth: usize,
) -> Result<Candidates, SearchError> {
    let side = |mode_search: fn(&Collection, &SearchRequest) -> Result<Results, SearchError>| {
        let mut side_request = request.clone();
        (side_request.limit, side_request.offset, side_request.with_documents) = (depth, 0, false);
        mode_search(collection, &side_request).map(|found| {
            let ranking =
                found.hits.into_iter().map(|hit| (hit.id, hit.score)).collect::<Ranking>();
            (ranking, found.timings)
        })
    };
    let (keyword, keyword_timings) = side(keyword::search)?;
    let (semantic, semantic_timings) = side(semantic::search)?;
    let timings = Timings {
        keyword: keyword_timings.keyword,
        encode: semantic_timings.encode,
        vector: semantic_timings.vector,
        ..Timings::default()
    };
    Ok(Candidates { keyword, semantic, timings })
}

pub(crate) fn search(
    collection: &Collection,
    request: &SearchRequest,
) -> Result<Results, SearchError> {
    let fusion = match request.fusion {
        Some(fusion) => fusion,
        None => Fusion::default_for(collection)?,
    };
    let found = candidates(collection, request, fusion.depth)?;
    let mut timings = found.timings;
    let started = Instant::now();
    let fused = fuse(&found.keyword, &found.semantic, &fusion);
    let total = fused.len();
    let mut hits: Vec<Hit> = fused
        .into_iter()
        .skip(request.offset)
        .take(request.limit)
        .map(|fused| {
            let mut hit = Hit::ranked(fused.id, fused.explanation.fused);
            hit.explanation = Some(fused.explanation);
            hit
        })
        .collect();
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
        let fusion = Fusion { method: FusionMethod::Rrf { k: 60.0 }, depth: 100 };
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
        };
        let fused = fuse(&keyword, &semantic, &fusion);
        assert_eq!(ids(&fused), ["a", "c", "b"], "z is below the depth");
        // c: keyword missing -> 0; semantic 1. a: keyword 1, semantic 0.
        assert!((fused[1].explanation.fused - 0.5).abs() < 1e-6);
        assert!(fuse(&[], &[], &fusion).is_empty());
    }
}
