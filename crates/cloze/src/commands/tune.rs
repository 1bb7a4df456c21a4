use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{anyhow, Result};
use clap::Args;
use cloze_eval::{Metric, Qrels};
use cloze_index::DataDir;
use cloze_search::{
    tune, tune_without_judgments, JudgedQuery, PseudoQuerySettings, PseudoQuerySources,
    SearchError, TuneOptions,
};

use crate::progress;

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
///
/// Without --queries and --qrels, tunes on pseudo-queries made from the collection's own
/// documents (--pseudo-queries): for a collection no one has judged queries on. Where the model
/// lists documents it left out of its training (cloze train with training.held_out_documents),
/// they are made of those alone, so a model is not rated on text it was trained on.
#[derive(Debug, Args)]
pub struct TuneArgs {
    /// The collection (it must have a model).
    #[arg(long, value_name = "NAME")]
    collection: String,

    /// The queries: BEIR queries.jsonl or `id<TAB>text` TSV [default: pseudo-queries].
    #[arg(long, value_name = "FILE", requires = "qrels")]
    queries: Option<PathBuf>,

    /// The judgments to tune on: BEIR TSV or TREC qrels [default: pseudo-queries].
    #[arg(long, value_name = "FILE", requires = "queries")]
    qrels: Option<PathBuf>,

    /// Without judgments: how many pseudo-queries to make from the collection's own documents.
    /// Each is a run of words from one sentence of a sampled document; that document, with the
    /// sentence taken out, is the one relevant to it (tuning runs on a copy of the collection
    /// with those documents replaced).
    #[arg(long, value_name = "N", default_value_t = PseudoQuerySettings::default().count, conflicts_with = "qrels")]
    pseudo_queries: usize,

    /// Without judgments: words per pseudo-query.
    #[arg(long, value_name = "N", default_value_t = PseudoQuerySettings::default().words, conflicts_with = "qrels")]
    pseudo_query_words: usize,

    /// Without judgments: leave each pseudo-query's sentence in its document.
    #[arg(long, conflicts_with = "qrels")]
    keep_sentences: bool,

    /// Without judgments: the seed that samples the documents and words.
    #[arg(long, value_name = "N", default_value_t = 0, conflicts_with = "qrels")]
    seed: u64,

    /// What to maximise.
    #[arg(long, default_value_t = TuneOptions::default().metric, value_parser = crate::commands::eval::parse_metric)]
    metric: Metric,

    /// Convex weights of the semantic side to try.
    #[arg(long, value_delimiter = ',', default_values_t = TuneOptions::default().alphas)]
    alphas: Vec<f64>,

    /// Reciprocal rank fusion constants to try.
    #[arg(long, value_delimiter = ',', default_values_t = TuneOptions::default().rrf_ks)]
    rrf_ks: Vec<f64>,

    /// Candidates per side to try.
    #[arg(long, value_delimiter = ',', default_values_t = TuneOptions::default().depths)]
    depths: Vec<usize>,

    /// Pseudo-relevance feedback to try: how many of the best keyword hits move the semantic
    /// query toward their mean vector (0: none).
    #[arg(long, value_delimiter = ',', default_values_t = TuneOptions::default().feedback_docs)]
    feedback_docs: Vec<usize>,

    /// Pseudo-relevance feedback to try: the weights of that mean vector.
    #[arg(long, value_delimiter = ',', default_values_t = TuneOptions::default().feedback_weights)]
    feedback_weights: Vec<f64>,

    /// In a collection that expands its documents (cloze index --expand): the weights of the
    /// neighbours' text to try on keyword search alone, beside the collection's own, before
    /// any fusion; the best is kept only if it beats the collection's own beyond chance
    /// (--significance) [default: 0,0.2,0.4,0.7,1 with judged queries; with pseudo-queries
    /// none, as they undervalue expansion: the collection's weight stays].
    #[arg(long, value_delimiter = ',', value_name = "WEIGHTS")]
    expansion_weights: Option<Vec<f64>>,

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
    #[arg(long, value_name = "P", default_value_t = TuneOptions::default().significance)]
    significance: f64,

    /// Save the chosen setting as the collection's default hybrid fusion (and the chosen
    /// expansion weight as its default for every search).
    #[arg(long)]
    save: bool,

    /// Print JSON on one line: every setting with its score, best first, and the choice (what
    /// the service's `_tune` answers, but its `took_ms`).
    #[arg(long)]
    json: bool,
}

pub fn run(data_dir: &DataDir, args: TuneArgs) -> Result<()> {
    let options = TuneOptions {
        metric: args.metric,
        alphas: args.alphas,
        rrf_ks: args.rrf_ks,
        depths: args.depths,
        feedback_docs: args.feedback_docs,
        feedback_weights: args.feedback_weights,
        expansion_weights: args.expansion_weights,
        ef_search: args.ef_search,
        significance: args.significance,
    };
    let mut collection = data_dir.open(&args.collection)?;
    let progress = progress::bar(0, "queries");
    let tuned = match (&args.queries, &args.qrels) {
        (Some(queries_path), Some(qrels_path)) => {
            let qrels = Qrels::read(qrels_path)?;
            let texts: HashMap<String, String> = cloze_corpus::read_queries(queries_path)?
                .into_iter()
                .map(|q| (q.id, q.text))
                .collect();
            let queries = JudgedQuery::from_judgments(&qrels, &texts).map_err(|missing| {
                anyhow!(
                    "query \"{}\" is judged in {} but has no text in {}",
                    missing.id,
                    qrels_path.display(),
                    queries_path.display()
                )
            })?;
            progress.set_length(queries.len() as u64);
            tune(&collection, &queries, &qrels, &options, || progress.inc(1))
        }
        _ => {
            let settings = PseudoQuerySettings {
                count: args.pseudo_queries,
                words: args.pseudo_query_words,
                keep_sentence: args.keep_sentences,
                seed: args.seed,
            };
            progress.set_length(settings.count as u64);
            tune_without_judgments(data_dir, &collection, &settings, &options, || progress.inc(1))
        }
    };
    progress.finish_and_clear();
    let mut tuning = tuned.map_err(|error| match error {
        // The options are flags here.
        SearchError::InvalidTuning { param, message } => {
            anyhow!("--{}: {message}", param.replace('_', "-"))
        }
        error => error.into(),
    })?;
    if args.save {
        tuning.save(&mut collection)?;
    }

    if args.json {
        println!("{}", serde_json::to_string(&tuning)?);
        return Ok(());
    }
    let metric = tuning.metric.to_string();
    let deepest = options.depths.iter().max().expect("tuned: not empty");
    let queries = match tuning.pseudo_query_sources {
        None => "judged queries",
        Some(PseudoQuerySources::HeldOut) => {
            "pseudo-queries, of documents the model was not trained on"
        }
        Some(PseudoQuerySources::AnyDocument) => "pseudo-queries",
    };
    println!("{} {queries}; {metric} of each side alone (top {deepest}):", tuning.queries);
    if let Some(expansion) = &tuning.expansion {
        println!("  keyword with each expansion weight (the collection's: {}):", expansion.current);
        for scored in &expansion.weights {
            println!("    {:.4}  weight {}", scored.value, scored.weight);
        }
        if expansion.chosen == expansion.current {
            println!(
                "  keeping weight {} (no other is better beyond chance at p < {})",
                expansion.current, options.significance
            );
        } else {
            println!(
                "  chosen: weight {} (p = {:.4} against {}); the fusions below use it",
                expansion.chosen, expansion.p_value, expansion.current
            );
        }
    }
    println!("  keyword   {:.4}", tuning.keyword);
    println!("  semantic  {:.4}", tuning.semantic);
    println!("best fusion settings by {metric}:");
    for scored in tuning.settings.iter().take(args.top) {
        println!("  {:.4}  {}", scored.value, scored.fusion);
    }
    let (best, side) = (tuning.best(), tuning.best_side);
    let margin = best.value - tuning.side_value();
    println!(
        "the best, {}, against {side} alone: {margin:+.4}, p = {:.4} (paired randomization \
         test, {} trials)",
        best.fusion,
        tuning.p_value,
        cloze_search::SIGNIFICANCE_TRIALS
    );
    if tuning.fusion_wins {
        println!(
            "chosen: {} (better beyond chance at p < {})",
            tuning.chosen, options.significance
        );
    } else {
        println!(
            "chosen: {side} alone, as {} (the fusion is not better beyond chance at p < {})",
            tuning.chosen, options.significance
        );
    }
    if let Some(saved) = tuning.saved {
        println!("saved as the default fusion of \"{}\": {saved}", args.collection);
        if let Some(expansion) = &tuning.expansion {
            println!("saved expansion weight: {}", expansion.chosen);
        }
    }
    Ok(())
}
