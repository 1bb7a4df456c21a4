use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use cloze_eval::{evaluate, paired_randomization_test, Metric, Qrels, Run};
use cloze_index::DataDir;
use cloze_search::{
    candidates, fuse, Candidates, Feedback, Fusion, FusionMethod, Mode, Normalization, Ranking,
    SearchRequest,
};
use serde_json::json;

use crate::progress;

/// Random swaps in the significance test: p-values resolve to about 0.0001.
const SIGNIFICANCE_TRIALS: usize = 10_000;
/// Fixed, so the same judgments always choose the same setting.
const SIGNIFICANCE_SEED: u64 = 0x5eed;

/// Find the hybrid fusion that ranks best on judged (training) queries.
///
/// Retrieves each judged query's keyword and semantic candidates once, as deep as the deepest
/// setting tried, then scores every combination of fusion method (reciprocal rank fusion with
/// each --rrf-k; a convex combination with each --alpha and normalisation), depth per side and
/// pseudo-relevance feedback (--feedback-docs, --feedback-weights) by --metric, and prints them
/// best first. The best is chosen only if it beats the better
/// side alone beyond chance (--significance); otherwise that side alone is. Tune on training
/// queries and report on others: SciFact's qrels/train.tsv, not test.tsv. --save makes the
/// choice the collection's default for hybrid searches that name no fusion.
#[derive(Debug, Args)]
pub struct TuneArgs {
    /// The collection (it must have a model).
    #[arg(long, value_name = "NAME")]
    collection: String,

    /// The queries: BEIR queries.jsonl or `id<TAB>text` TSV.
    #[arg(long, value_name = "FILE")]
    queries: PathBuf,

    /// The judgments to tune on: BEIR TSV or TREC qrels.
    #[arg(long, value_name = "FILE")]
    qrels: PathBuf,

    /// What to maximise.
    #[arg(long, default_value = "ndcg@10", value_parser = crate::commands::eval::parse_metric)]
    metric: Metric,

    /// Convex weights of the semantic side to try.
    #[arg(long, value_delimiter = ',', default_value = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1")]
    alphas: Vec<f64>,

    /// Reciprocal rank fusion constants to try.
    #[arg(long, value_delimiter = ',', default_value = "10,20,40,60,100")]
    rrf_ks: Vec<f64>,

    /// Candidates per side to try.
    #[arg(long, value_delimiter = ',', default_value = "50,100,200")]
    depths: Vec<usize>,

    /// Pseudo-relevance feedback to try: how many of the best keyword hits move the semantic
    /// query toward their mean vector (0: none).
    #[arg(long, value_delimiter = ',', default_value = "0,3,5,10")]
    feedback_docs: Vec<usize>,

    /// Pseudo-relevance feedback to try: the weights of that mean vector.
    #[arg(long, value_delimiter = ',', default_value = "0.5,1,2")]
    feedback_weights: Vec<f64>,

    /// How many of the best settings to print.
    #[arg(long, default_value_t = 10)]
    top: usize,

    /// Semantic side: HNSW candidates per query [default: the collection's ef_search].
    #[arg(long, value_name = "N")]
    ef_search: Option<usize>,

    /// Keep the best fusion only if it beats the better side alone with a p-value under this
    /// (a paired randomization test over the tuning queries); otherwise choose that side alone
    /// (convex alpha 0 for keyword, 1 for semantic), since a gain that chance explains will not
    /// carry over to new queries. 1 keeps the best fusion whatever its margin.
    #[arg(long, value_name = "P", default_value_t = 0.05)]
    significance: f64,

    /// Save the chosen setting as the collection's default hybrid fusion.
    #[arg(long)]
    save: bool,

    /// Print JSON: every setting with its score, best first.
    #[arg(long)]
    json: bool,
}

/// One judged query's candidates: both sides as retrieved, and the semantic side of each
/// feedback setting at each depth (feedback moves the query by the keyword side's best hits,
/// so its semantic side differs with both).
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
        // Every setting tried was retrieved above.
        let (_, ranking) = self.moved.iter().find(|(k, _)| *k == key).expect("retrieved");
        ranking
    }
}

pub fn run(data_dir: &DataDir, args: TuneArgs) -> Result<()> {
    let deepest = args.depths.iter().copied().max().unwrap_or(0);
    if deepest == 0 || args.depths.contains(&0) {
        bail!("--depths: each must be at least 1");
    }
    if let Some(alpha) = args.alphas.iter().find(|a| !(0.0..=1.0).contains(*a)) {
        bail!("--alphas: {alpha} is not between 0 and 1");
    }
    // Each weight is checked once, whatever --feedback-docs holds (one document is always valid).
    for &weight in &args.feedback_weights {
        Feedback::new(1, weight)
            .map_err(|error| anyhow!("--feedback-weights: {}", error.message))?;
    }
    let mut feedbacks: Vec<Option<Feedback>> = Vec::new();
    for &docs in &args.feedback_docs {
        if docs == 0 {
            feedbacks.push(None);
            continue;
        }
        feedbacks
            .extend(args.feedback_weights.iter().map(|&weight| Some(Feedback { docs, weight })));
    }
    if feedbacks.is_empty() {
        bail!("--feedback-docs: give at least one (0 for none)");
    }
    let mut collection = data_dir.open(&args.collection)?;
    let qrels = Qrels::read(&args.qrels)?;
    let texts: HashMap<String, String> =
        cloze_corpus::read_queries(&args.queries)?.into_iter().map(|q| (q.id, q.text)).collect();
    if let Some(missing) = qrels.queries().find(|id| !texts.contains_key(*id)) {
        bail!(
            "query \"{missing}\" is judged in {} but has no text in {}",
            args.qrels.display(),
            args.queries.display()
        );
    }

    let progress = progress::bar(qrels.num_queries() as u64, "queries");
    let mut sides = Vec::new();
    for id in qrels.queries() {
        let mut request = SearchRequest::new(texts[id].as_str(), Mode::Hybrid, deepest);
        request.ef_search = args.ef_search;
        let found = candidates(&collection, &request, deepest)
            .with_context(|| format!("query \"{id}\""))?;
        let mut moved: Vec<((usize, Feedback), Ranking)> = Vec::new();
        for &depth in &args.depths {
            for feedback in feedbacks.iter().flatten() {
                let ranking = found
                    .with_feedback(&collection, *feedback, depth)
                    .with_context(|| format!("query \"{id}\""))?;
                moved.push(((depth, *feedback), ranking));
            }
        }
        sides.push(Retrieved { id: id.to_string(), found, moved });
        progress.inc(1);
    }
    progress.finish_and_clear();

    let mut settings = Vec::new();
    for &depth in &args.depths {
        for &feedback in &feedbacks {
            for &k in &args.rrf_ks {
                settings.push(Fusion { method: FusionMethod::Rrf { k }, depth, feedback });
            }
            for &alpha in &args.alphas {
                for normalization in Normalization::ALL {
                    let method = FusionMethod::Convex { alpha, normalization };
                    settings.push(Fusion { method, depth, feedback });
                }
            }
        }
    }
    // Per-query scores, in the qrels' query order.
    let per_query = |ranking: &dyn Fn(&Retrieved) -> Vec<(String, f64)>| -> Vec<f64> {
        let mut run = Run::new();
        for retrieved in &sides {
            run.insert(&retrieved.id, ranking(retrieved));
        }
        evaluate(&qrels, &run, &[args.metric])
            .per_query()
            .values()
            .map(|scores| scores[0])
            .collect()
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
    let mut results: Vec<(Fusion, f64)> = settings
        .into_iter()
        .map(|fusion| {
            let value = mean(&per_query(&fused_run(fusion)));
            (fusion, value)
        })
        .collect();
    // Best first; among equals, the earlier (smaller, simpler) setting.
    results.sort_by(|a, b| b.1.total_cmp(&a.1));
    let (best, best_value) = results.first().copied().context("no fusion setting to try")?;

    // The best fusion against the better side alone, on the same queries.
    let (side, side_value, side_scores, side_alpha) = if keyword >= semantic {
        ("keyword", keyword, &keyword_scores, 0.0)
    } else {
        ("semantic", semantic, &semantic_scores, 1.0)
    };
    let p_value = paired_randomization_test(
        &per_query(&fused_run(best)),
        side_scores,
        SIGNIFICANCE_TRIALS,
        SIGNIFICANCE_SEED,
    );
    let fusion_wins =
        args.significance >= 1.0 || (best_value > side_value && p_value < args.significance);
    let chosen = if fusion_wins {
        best
    } else {
        // As deep as was tried: the fused ranking is then that side's own, all the way down.
        let normalization = Fusion::DEFAULT_NORMALIZATION;
        let method = FusionMethod::Convex { alpha: side_alpha, normalization };
        Fusion { method, depth: deepest, feedback: None }
    };
    let saved = if args.save {
        collection.set_default_fusion(Some(chosen.to_settings()))?;
        Some(chosen.to_string())
    } else {
        None
    };

    if args.json {
        let rows: Vec<_> = results
            .iter()
            .map(|(fusion, value)| json!({"fusion": fusion.to_string(), "value": value}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "metric": args.metric.to_string(), "queries": sides.len(),
                "keyword": keyword, "semantic": semantic, "settings": rows,
                "best_side": side, "p_value": p_value, "chosen": chosen.to_string(), "saved": saved,
            }))?
        );
        return Ok(());
    }
    let metric = args.metric.to_string();
    println!("{} judged queries; {metric} of each side alone (top {deepest}):", sides.len());
    println!("  keyword   {keyword:.4}");
    println!("  semantic  {semantic:.4}");
    println!("best fusion settings by {metric}:");
    for (fusion, value) in results.iter().take(args.top) {
        println!("  {value:.4}  {fusion}");
    }
    let margin = best_value - side_value;
    println!(
        "the best, {best}, against {side} alone: {margin:+.4}, p = {p_value:.4} (paired \
         randomization test, {SIGNIFICANCE_TRIALS} trials)"
    );
    if fusion_wins {
        println!("chosen: {chosen} (better beyond chance at p < {})", args.significance);
    } else {
        println!(
            "chosen: {side} alone, as {chosen} (the fusion is not better beyond chance at p < {})",
            args.significance
        );
    }
    if let Some(saved) = saved {
        println!("saved as the default fusion of \"{}\": {saved}", args.collection);
    }
    Ok(())
}
