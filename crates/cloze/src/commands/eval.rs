use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use cloze_eval::{evaluate, Metric, Qrels, Run};
use cloze_index::DataDir;
use cloze_search::{search, Mode, SearchRequest};
use serde_json::{json, Map, Value};

use crate::commands::search::parse_mode;
use crate::progress;

/// Measure ranking quality against relevance judgments.
///
/// Either run every judged query against a collection (--collection with --queries), or score
/// an existing TREC run file (--run) from Cloze or any other system. Metrics follow trec_eval:
/// every judged query counts (one with no results scores 0), grades >= 1 are relevant, nDCG uses
/// graded gains, and tied scores are ordered by document id, descending.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The collection to search.
    #[arg(
        long,
        value_name = "NAME",
        required_unless_present = "run",
        conflicts_with = "run",
        requires = "queries"
    )]
    collection: Option<String>,

    /// The queries: BEIR queries.jsonl (`{"_id", "text"}`) or TSV (`id<TAB>text`).
    #[arg(long, value_name = "FILE", requires = "collection")]
    queries: Option<PathBuf>,

    /// Score this TREC run file (`query Q0 doc rank score tag`) instead of searching.
    #[arg(long, value_name = "FILE")]
    run: Option<PathBuf>,

    /// The judgments: BEIR TSV (`query-id corpus-id score`) or TREC qrels (`query 0 doc grade`).
    #[arg(long, value_name = "FILE")]
    qrels: PathBuf,

    /// How to rank, when searching a collection: keyword, semantic or hybrid.
    #[arg(long, default_value = "keyword", value_parser = parse_mode, conflicts_with = "run")]
    mode: Mode,

    /// Semantic mode: HNSW candidates per query [default: the collection's ef_search].
    #[arg(long, value_name = "N", conflicts_with = "run")]
    ef_search: Option<usize>,

    #[command(flatten)]
    fusion: crate::commands::fusion::FusionFlags,

    /// How many hits to retrieve per query (the deepest cutoff any metric can see).
    #[arg(long, default_value_t = 1000, conflicts_with = "run")]
    depth: usize,

    /// Write the run to this file in TREC format, to score or compare elsewhere.
    #[arg(long, value_name = "FILE", conflicts_with = "run")]
    run_out: Option<PathBuf>,

    /// The tag (last column) of the run written by --run-out [default: cloze-MODE].
    #[arg(long, value_name = "TAG", requires = "run_out")]
    run_tag: Option<String>,

    /// Metrics to report, comma-separated: ndcg@K, recall@K, p@K, mrr, mrr@K, map, map@K, ndcg.
    #[arg(long, value_delimiter = ',', default_value = "ndcg@10,recall@100,mrr@10,map", value_parser = parse_metric)]
    metrics: Vec<Metric>,

    /// Print JSON: each metric's mean, `queries` (how many were scored) and `settings`.
    #[arg(long)]
    json: bool,
}

pub(crate) fn parse_metric(name: &str) -> Result<Metric, String> {
    name.parse().map_err(|e: cloze_eval::ParseMetricError| e.to_string())
}

pub fn run(data_dir: &DataDir, args: EvalArgs) -> Result<()> {
    let qrels = Qrels::read(&args.qrels)?;
    let mut settings = Map::new();
    settings.insert("qrels_file".into(), json!(args.qrels));
    let run = match (&args.run, &args.collection, &args.queries) {
        (Some(path), _, _) => {
            settings.insert("run_file".into(), json!(path));
            Run::read(path)?
        }
        (None, Some(collection), Some(queries)) => {
            settings.insert("collection".into(), json!(collection));
            settings.insert("queries_file".into(), json!(queries));
            settings.insert("mode".into(), json!(args.mode.name()));
            settings.insert("depth".into(), json!(args.depth));
            let run =
                search_judged_queries(data_dir, collection, queries, &qrels, &args, &mut settings)?;
            if let Some(path) = &args.run_out {
                let tag = args.run_tag.clone().unwrap_or_else(|| format!("cloze-{}", args.mode));
                write_run(&run, path, &tag)?;
            }
            run
        }
        _ => unreachable!("clap requires --run, or --collection with --queries"),
    };

    let evaluation = evaluate(&qrels, &run, &args.metrics);
    if args.json {
        let mut report = Map::new();
        for (metric, mean) in evaluation.means() {
            report.insert(metric.to_string(), json!(mean));
        }
        report.insert("queries".into(), json!(evaluation.num_queries()));
        report.insert("settings".into(), Value::Object(settings));
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{:<12}  value", "metric");
        for (metric, mean) in evaluation.means() {
            println!("{:<12}  {mean:.4}", metric.to_string());
        }
        println!("{:<12}  {}", "queries", evaluation.num_queries());
    }
    Ok(())
}

/// Searches every judged query and returns the ranked ids as a run.
fn search_judged_queries(
    data_dir: &DataDir,
    collection: &str,
    queries_file: &PathBuf,
    qrels: &Qrels,
    args: &EvalArgs,
    settings: &mut Map<String, Value>,
) -> Result<Run> {
    let collection = data_dir.open(collection)?;
    settings.insert("analyzer".into(), serde_json::to_value(&collection.manifest().analyzer)?);
    // Resolved once, so every query uses, and the report names, the same fusion.
    let mut fusion = args.fusion.fusion()?;
    if args.mode == Mode::Hybrid {
        let used = match fusion {
            Some(fusion) => fusion,
            None => cloze_search::Fusion::default_for(&collection)?,
        };
        settings.insert("fusion".into(), json!(used.to_string()));
        fusion = Some(used);
    }
    if args.mode != Mode::Keyword {
        if let Some(semantic) = &collection.manifest().semantic {
            settings.insert("semantic".into(), serde_json::to_value(semantic)?);
            let ef_search = args.ef_search.unwrap_or(semantic.hnsw.ef_search);
            settings.insert("ef_search".into(), json!(ef_search));
        }
    }
    let texts: HashMap<String, String> =
        cloze_corpus::read_queries(queries_file)?.into_iter().map(|q| (q.id, q.text)).collect();
    if let Some(missing) = qrels.queries().find(|id| !texts.contains_key(*id)) {
        bail!(
            "query \"{missing}\" is judged in {} but has no text in {}",
            args.qrels.display(),
            queries_file.display()
        );
    }
    let progress = progress::bar(qrels.num_queries() as u64, "queries");
    let mut run = Run::new();
    for id in qrels.queries() {
        let mut request = SearchRequest::new(texts[id].as_str(), args.mode, args.depth);
        request.with_documents = false;
        request.ef_search = args.ef_search;
        request.fusion = fusion;
        let found = search(&collection, &request).with_context(|| format!("query \"{id}\""))?;
        run.insert(id, found.hits.into_iter().map(|hit| (hit.id, f64::from(hit.score))).collect());
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok(run)
}

fn write_run(run: &Run, path: &PathBuf, tag: &str) -> Result<()> {
    let context = || format!("writing the run to {}", path.display());
    let mut out = BufWriter::new(File::create(path).with_context(context)?);
    run.write_trec(&mut out, tag).with_context(context)?;
    out.flush().with_context(context)
}
