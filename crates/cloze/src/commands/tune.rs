use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use cloze_eval::{evaluate, Metric, Qrels, Run};
use cloze_index::DataDir;
use cloze_search::{
    candidates, fuse, Candidates, Fusion, FusionMethod, Mode, Normalization, SearchRequest,
};
use serde_json::json;

use crate::progress;

/// Find the hybrid fusion that ranks best on judged (training) queries.
///
/// Retrieves each judged query's keyword and semantic candidates once, as deep as the deepest
/// setting tried, then scores every combination of fusion method (reciprocal rank fusion with
/// each --rrf-k; a convex combination with each --alpha and normalisation) and depth per side
/// by --metric, and prints them best first. Tune on training queries and report on others:
/// SciFact's qrels/train.tsv, not test.tsv. --save makes the best the collection's default
/// for hybrid searches that name no fusion.
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

    /// How many of the best settings to print.
    #[arg(long, default_value_t = 10)]
    top: usize,

    /// Semantic side: HNSW candidates per query [default: the collection's ef_search].
    #[arg(long, value_name = "N")]
    ef_search: Option<usize>,

    /// Save the best setting as the collection's default hybrid fusion.
    #[arg(long)]
    save: bool,

    /// Print JSON: every setting with its score, best first.
    #[arg(long)]
    json: bool,
}

pub fn run(data_dir: &DataDir, args: TuneArgs) -> Result<()> {
    let deepest = args.depths.iter().copied().max().unwrap_or(0);
    if deepest == 0 || args.depths.contains(&0) {
        bail!("--depths: each must be at least 1");
    }
    if let Some(alpha) = args.alphas.iter().find(|a| !(0.0..=1.0).contains(*a)) {
        bail!("--alphas: {alpha} is not between 0 and 1");
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
        sides.push((id.to_string(), found));
        progress.inc(1);
    }
    progress.finish_and_clear();

    let mut settings = Vec::new();
    for &depth in &args.depths {
        for &k in &args.rrf_ks {
            settings.push(Fusion { method: FusionMethod::Rrf { k }, depth });
        }
        for &alpha in &args.alphas {
            for normalization in Normalization::ALL {
                settings
                    .push(Fusion { method: FusionMethod::Convex { alpha, normalization }, depth });
            }
        }
    }
    let score = |ranking: &dyn Fn(&Candidates) -> Vec<(String, f64)>| {
        let mut run = Run::new();
        for (id, found) in &sides {
            run.insert(id, ranking(found));
        }
        evaluate(&qrels, &run, &[args.metric]).means()[0].1
    };
    let as_run = |side: &[(String, f32)]| -> Vec<(String, f64)> {
        side.iter().map(|(id, s)| (id.clone(), f64::from(*s))).collect()
    };
    let keyword = score(&|found| as_run(&found.keyword));
    let semantic = score(&|found| as_run(&found.semantic));
    let mut results: Vec<(Fusion, f64)> = settings
        .into_iter()
        .map(|fusion| {
            let value = score(&|found| {
                fuse(&found.keyword, &found.semantic, &fusion)
                    .into_iter()
                    .map(|f| (f.id, f64::from(f.explanation.fused)))
                    .collect()
            });
            (fusion, value)
        })
        .collect();
    // Best first; among equals, the earlier (smaller, simpler) setting.
    results.sort_by(|a, b| b.1.total_cmp(&a.1));
    let saved = match (args.save, results.first()) {
        (true, Some((best, _))) => {
            collection.set_default_fusion(Some(best.to_settings()))?;
            Some(best.to_string())
        }
        _ => None,
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
                "keyword": keyword, "semantic": semantic, "settings": rows, "saved": saved,
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
    if let Some(saved) = saved {
        println!("saved as the default fusion of \"{}\": {saved}", args.collection);
    }
    Ok(())
}
