use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use cloze_eval::{
    compare, format_p, write_report, CompareOptions, Comparison, Metric, Qrels, Run, Versus,
};
use cloze_index::{Collection, DataDir};
use cloze_search::{search_judged, JudgedQuery, Mode, SearchRequest};
use serde_json::{json, Map, Value};

use crate::commands::search::parse_mode;
use crate::progress;

/// Measure ranking quality against relevance judgments, and compare rankings.
///
/// Either run every judged query against a collection (--collection with --queries), in one
/// mode or several (--mode keyword,semantic,hybrid), or score TREC run files (--run A --run B)
/// from Cloze or any other system. Metrics follow trec_eval: every judged query counts (one
/// with no results scores 0), grades >= 1 are relevant, nDCG uses graded gains, and tied scores
/// are ordered by document id, descending.
///
/// With several modes or runs the first is the baseline: each other one gets its difference,
/// the queries it wins, ties and loses, and the p-values of a paired t-test and a paired
/// randomization test (is the difference more than chance?). --per-query lists where they
/// differ most; --report DIR writes a report with charts.
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

    /// The queries: BEIR queries.jsonl (`{"_id", "text"}`) or TSV (`id<TAB>text`). With --run,
    /// optional: their text shows in --per-query and --report.
    #[arg(long, value_name = "FILE")]
    queries: Option<PathBuf>,

    /// Score this TREC run file (`query Q0 doc rank score tag`) instead of searching; repeat to
    /// compare several (the first is the baseline). Each is named by its file name.
    #[arg(long, value_name = "FILE")]
    run: Vec<PathBuf>,

    /// The judgments: BEIR TSV (`query-id corpus-id score`) or TREC qrels (`query 0 doc grade`).
    #[arg(long, value_name = "FILE")]
    qrels: PathBuf,

    /// How to rank, when searching a collection: keyword, semantic or hybrid; several,
    /// comma-separated, to compare them (the first is the baseline).
    #[arg(long, value_delimiter = ',', default_value = "keyword", value_parser = parse_mode, conflicts_with = "run")]
    mode: Vec<Mode>,

    /// Semantic mode: HNSW candidates per query [default: the collection's ef_search].
    #[arg(long, value_name = "N", conflicts_with = "run")]
    ef_search: Option<usize>,

    /// Keyword side, in a collection indexed with --expand: the weight of a match in the
    /// neighbours' text, against 1 for the document's own (0: the document's own text alone)
    /// [default: the collection's].
    #[arg(long, value_name = "WEIGHT", value_parser = crate::commands::fusion::parse_expansion_weight, conflicts_with = "run")]
    expansion_weight: Option<f64>,

    #[command(flatten)]
    fusion: cloze_search::FusionSettings,

    /// How many hits to retrieve per query (the deepest cutoff any metric can see).
    #[arg(long, default_value_t = 1000, conflicts_with = "run")]
    depth: usize,

    /// Write the run to this file in TREC format, to score or compare elsewhere (one --mode).
    #[arg(long, value_name = "FILE", conflicts_with = "run")]
    run_out: Option<PathBuf>,

    /// The tag (last column) of the run written by --run-out [default: cloze-MODE].
    #[arg(long, value_name = "TAG", requires = "run_out")]
    run_tag: Option<String>,

    /// Metrics to report, comma-separated: ndcg@K, recall@K, p@K, mrr, mrr@K, map, map@K, ndcg,
    /// judged@K (the share of the top K that has a judgment at all).
    #[arg(long, value_delimiter = ',', default_value = "ndcg@10,recall@100,mrr@10,map", value_parser = parse_metric)]
    metrics: Vec<Metric>,

    /// Print every judged query's score on the first metric in each run, with its text, the
    /// queries where the runs differ most first.
    #[arg(long)]
    per_query: bool,

    /// Write report.md, results.json, per_query.csv and PNG charts (each metric per run with
    /// 95% confidence intervals; each run's per-query difference from the baseline) into DIR.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,

    /// Correct the p-values for comparing several runs with one baseline (Holm-Bonferroni).
    #[arg(long)]
    holm: bool,

    /// Random swaps in each paired randomization test.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    trials: usize,

    /// Seed of the randomization tests: the same seed gives the same p-values.
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,

    /// Print JSON: for one run, each metric's mean, `queries` and `settings`; for several, the
    /// comparison (`runs`, each metric's `mean`, `ci95` and `versus_baseline`) and `settings`.
    #[arg(long)]
    json: bool,
}

pub(crate) fn parse_metric(name: &str) -> Result<Metric, String> {
    name.parse().map_err(|e: cloze_eval::ParseMetricError| e.to_string())
}

/// One ranking to score: a mode of the collection or a run file.
struct System {
    name: String,
    run: Run,
    settings: Map<String, Value>,
}

pub fn run(data_dir: &DataDir, args: EvalArgs) -> Result<()> {
    let qrels = Qrels::read(&args.qrels)?;
    let mut settings = Map::new();
    settings.insert("qrels_file".into(), json!(args.qrels));
    let texts: HashMap<String, String> = match &args.queries {
        Some(path) => {
            cloze_corpus::read_queries(path)?.into_iter().map(|q| (q.id, q.text)).collect()
        }
        None => HashMap::new(),
    };
    let systems = if args.run.is_empty() {
        let collection = args.collection.as_deref().expect("clap requires --collection or --run");
        settings.insert("collection".into(), json!(collection));
        settings.insert("queries_file".into(), json!(args.queries));
        settings.insert("depth".into(), json!(args.depth));
        if args.run_out.is_some() && args.mode.len() > 1 {
            bail!("--run-out writes one run: name one --mode");
        }
        let queries = JudgedQuery::from_judgments(&qrels, &texts).map_err(|missing| {
            anyhow!(
                "query \"{}\" is judged in {} but has no text in {}",
                missing.id,
                args.qrels.display(),
                args.queries.as_deref().unwrap_or(Path::new("")).display()
            )
        })?;
        let collection = data_dir.open(collection)?;
        settings.insert("analyzer".into(), serde_json::to_value(&collection.manifest().analyzer)?);
        let mut systems = Vec::new();
        for (i, &mode) in args.mode.iter().enumerate() {
            if args.mode[..i].contains(&mode) {
                bail!("--mode {mode} is named twice");
            }
            systems.push(search_judged_queries(&collection, mode, &queries, &args)?);
        }
        if let (Some(path), [system]) = (&args.run_out, &systems[..]) {
            let tag = args.run_tag.clone().unwrap_or_else(|| format!("cloze-{}", system.name));
            write_run(&system.run, path, &tag)?;
        }
        systems
    } else {
        let mut systems: Vec<System> = Vec::new();
        for path in &args.run {
            let name = path
                .file_name()
                .map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
            if systems.iter().any(|s| s.name == name) {
                bail!("--run {}: another run has the file name {name}; rename one", path.display());
            }
            let mut run_settings = Map::new();
            run_settings.insert("run_file".into(), json!(path));
            systems.push(System { name, run: Run::read(path)?, settings: run_settings });
        }
        systems
    };

    let named: Vec<(String, &Run)> = systems.iter().map(|s| (s.name.clone(), &s.run)).collect();
    let options = CompareOptions { trials: args.trials, seed: args.seed, holm: args.holm };
    let comparison = compare(&qrels, &named, &args.metrics, options);
    let run_settings: Map<String, Value> =
        systems.iter().map(|s| (s.name.clone(), Value::Object(s.settings.clone()))).collect();
    settings.insert("runs".into(), Value::Object(run_settings));
    let settings = Value::Object(settings);

    if args.json {
        let report = if systems.len() == 1 {
            let mut report = Map::new();
            for result in &comparison.runs[0].metrics {
                report.insert(result.metric.clone(), json!(result.mean));
            }
            report.insert("queries".into(), json!(comparison.queries));
            let mut single = settings.clone();
            // One run: its settings at the top level, as before comparisons existed.
            if let Some(Value::Object(runs)) = single.as_object_mut().and_then(|s| s.remove("runs"))
            {
                let own = runs.into_values().next();
                if let (Some(Value::Object(own)), Some(top)) = (own, single.as_object_mut()) {
                    top.extend(own);
                }
            }
            report.insert("settings".into(), single);
            Value::Object(report)
        } else {
            let mut report = serde_json::to_value(&comparison)?;
            report["settings"] = settings.clone();
            report
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if systems.len() == 1 {
        println!("{:<12}  value", "metric");
        for result in &comparison.runs[0].metrics {
            println!("{:<12}  {:.4}", result.metric, result.mean);
        }
        println!("{:<12}  {}", "queries", comparison.queries);
    } else {
        print_comparison(&comparison);
    }
    if args.per_query {
        print_per_query(&comparison, &texts);
    }
    if let Some(dir) = &args.report {
        let written = write_report(&comparison, &texts, &settings, dir)?;
        eprintln!("wrote {} files; open {}", written.len(), dir.join("report.md").display());
    }
    Ok(())
}

/// The comparison as a table: a row of means per run, and under each run after the baseline
/// its difference, wins/ties/losses and p-values.
fn print_comparison(comparison: &Comparison) {
    let name_width =
        comparison.runs.iter().map(|r| r.name.chars().count() + 2).max().unwrap_or(0).max(14);
    let width = comparison.metrics.iter().map(String::len).max().unwrap_or(0).max(12);
    let holm = if comparison.options.holm { " (Holm)" } else { "" };
    println!(
        "{} judged queries; baseline {}; p-values two-sided{holm}, randomization with {} trials",
        comparison.queries, comparison.baseline, comparison.options.trials
    );
    print!("{:<name_width$}", "run");
    for metric in &comparison.metrics {
        print!("  {metric:>width$}");
    }
    println!();
    for run in &comparison.runs {
        print!("{:<name_width$}", run.name);
        for result in &run.metrics {
            print!("  {:>width$.4}", result.mean);
        }
        println!();
        type Cell = fn(&Versus) -> String;
        let rows: [(&str, Cell); 4] = [
            ("  difference", |v| format!("{:+.4}", v.difference)),
            ("  won/tied/lost", |v| format!("{}/{}/{}", v.wins, v.ties, v.losses)),
            ("  p t-test", |v| format_p(v.t_test_p_holm.unwrap_or(v.t_test_p))),
            ("  p randomized", |v| format_p(v.randomization_p_holm.unwrap_or(v.randomization_p))),
        ];
        for (label, cell) in rows {
            if run.metrics.iter().all(|m| m.versus_baseline.is_none()) {
                break;
            }
            print!("{label:<name_width$}");
            for result in &run.metrics {
                print!(
                    "  {:>width$}",
                    result.versus_baseline.as_ref().map(cell).unwrap_or_default()
                );
            }
            println!();
        }
    }
}

/// Every query's score on the first metric per run, largest difference from the baseline first.
fn print_per_query(comparison: &Comparison, texts: &HashMap<String, String>) {
    let id_width =
        comparison.query_ids().iter().map(|q| q.chars().count()).max().unwrap_or(0).max(5);
    let width = comparison.runs.iter().map(|r| r.name.chars().count()).max().unwrap_or(0).max(8);
    println!("\n{} per query, where the runs differ most first:", comparison.metrics[0]);
    print!("{:<id_width$}", "query");
    for run in &comparison.runs {
        print!("  {:>width$}", run.name);
    }
    println!("  text");
    for q in comparison.queries_by_difference(0) {
        let id = &comparison.query_ids()[q];
        print!("{id:<id_width$}");
        for r in 0..comparison.runs.len() {
            print!("  {:>width$.4}", comparison.scores(r, 0)[q]);
        }
        let text = texts.get(id).map(String::as_str).unwrap_or("");
        println!("  {}", text.chars().take(90).collect::<String>());
    }
}

/// Searches every judged query in `mode` and returns the ranked ids as a run, with the
/// settings that produced it.
fn search_judged_queries(
    collection: &Collection,
    mode: Mode,
    queries: &[JudgedQuery],
    args: &EvalArgs,
) -> Result<System> {
    let mut settings = Map::new();
    settings.insert("mode".into(), json!(mode.name()));
    // Resolved once, so every query uses, and the report names, the same fusion.
    let mut fusion = crate::commands::fusion::requested(&args.fusion)?;
    if mode == Mode::Hybrid {
        let used = match fusion {
            Some(fusion) => fusion,
            None => cloze_search::Fusion::default_for(collection)?,
        };
        settings.insert("fusion".into(), json!(used.to_string()));
        fusion = Some(used);
    }
    if mode != Mode::Keyword {
        if let Some(semantic) = &collection.manifest().semantic {
            settings.insert("semantic".into(), serde_json::to_value(semantic)?);
            let ef_search = args.ef_search.unwrap_or(semantic.hnsw.ef_search);
            settings.insert("ef_search".into(), json!(ef_search));
        }
    }
    if mode != Mode::Semantic {
        if let Some((_, expansion)) = collection.expansion() {
            let weight = args.expansion_weight.unwrap_or(expansion.weight);
            settings.insert("expansion_weight".into(), json!(weight));
        }
    }
    let mut template = SearchRequest::new("", mode, args.depth);
    template.with_documents = false;
    template.ef_search = args.ef_search;
    template.expansion_weight = args.expansion_weight;
    template.fusion = fusion;
    let progress = progress::bar(queries.len() as u64, &format!("{mode} queries"));
    let run = search_judged(collection, &template, queries, || progress.inc(1));
    progress.finish_and_clear();
    let run = run?;
    Ok(System { name: mode.name().to_string(), run, settings })
}

fn write_run(run: &Run, path: &PathBuf, tag: &str) -> Result<()> {
    let context = || format!("writing the run to {}", path.display());
    let mut out = BufWriter::new(File::create(path).with_context(context)?);
    run.write_trec(&mut out, tag).with_context(context)?;
    out.flush().with_context(context)
}
