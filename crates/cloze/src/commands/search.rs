use anyhow::{Context, Result};
use clap::Args;
use cloze_index::DataDir;
use cloze_search::{search, Filter, Mode, SearchRequest};

/// Search a collection and print the best hits.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// The collection to search.
    #[arg(long, value_name = "NAME")]
    collection: String,

    /// How to rank: keyword (BM25 over title and text), semantic (the collection's model and
    /// vector index; the collection must have been indexed with --model), or hybrid (both,
    /// fused; --json shows each hit's rank and score on each side).
    #[arg(long, default_value = "keyword", value_parser = parse_mode)]
    mode: Mode,

    /// Semantic mode: HNSW candidates to consider [default: the collection's ef_search].
    #[arg(long, value_name = "N")]
    ef_search: Option<usize>,

    /// Keyword side, in a collection indexed with --expand: the weight of a match in the
    /// neighbours' text, against 1 for the document's own (0: the document's own text alone)
    /// [default: the collection's].
    #[arg(long, value_name = "WEIGHT", value_parser = crate::commands::fusion::parse_expansion_weight)]
    expansion_weight: Option<f64>,

    #[command(flatten)]
    fusion: cloze_search::FusionSettings,

    /// How many hits to show.
    #[arg(short = 'k', long = "limit", default_value_t = 10)]
    limit: usize,

    /// Skip this many of the best hits first (the next page).
    #[arg(long, default_value_t = 0)]
    offset: usize,

    /// Only documents whose stored metadata pass this JSON filter, e.g.
    /// '{"lang": "en", "year": {"gte": 2000, "lt": 2010}}' (a value, a list of values, or a
    /// numeric range of gt/gte/lt/lte per field; every field must match).
    #[arg(long, value_name = "JSON")]
    filter: Option<String>,

    /// Print JSON: `{"hits": [{"id", "score", "title", "snippet", "metadata", "explanation"}],
    /// "total"}`.
    #[arg(long)]
    json: bool,

    /// What to look for, as plain words (no query syntax).
    query: String,
}

pub(crate) fn parse_mode(name: &str) -> Result<Mode, String> {
    name.parse().map_err(|e: cloze_search::SearchError| e.to_string())
}

pub fn run(data_dir: &DataDir, args: SearchArgs) -> Result<()> {
    let collection = data_dir.open(&args.collection)?;
    let mut request = SearchRequest::new(args.query, args.mode, args.limit);
    request.offset = args.offset;
    request.ef_search = args.ef_search;
    request.expansion_weight = args.expansion_weight;
    request.fusion = crate::commands::fusion::requested(&args.fusion)?;
    if let Some(filter) = &args.filter {
        let value = serde_json::from_str(filter).context("--filter is not valid JSON")?;
        request.filter = Some(Filter::from_json(&value).context("--filter")?);
    }
    let results = search(&collection, &request)?;
    if args.json {
        println!("{}", serde_json::to_string(&results)?);
        return Ok(());
    }
    let hits = results.hits;
    if hits.is_empty() {
        println!("no hits");
        return Ok(());
    }
    let id_width = hits.iter().map(|hit| hit.id.chars().count()).max().unwrap_or(0).clamp(2, 24);
    println!("{:>4}  {:>8}  {:<id_width$}  title", "rank", "score", "id");
    for (rank, hit) in hits.iter().enumerate() {
        let title = hit.title.as_deref().filter(|t| !t.is_empty()).unwrap_or("(no title)");
        println!(
            "{:>4}  {:>8.3}  {:<id_width$}  {}",
            args.offset + rank + 1,
            hit.score,
            shorten(&hit.id, 24),
            shorten(title, 80)
        );
        if let Some(snippet) = hit.snippet.as_deref().filter(|s| !s.is_empty()) {
            println!(
                "{:>4}  {:>8}  {:<id_width$}  {}",
                "",
                "",
                "",
                shorten(&snippet.replace('\n', " "), 80)
            );
        }
    }
    Ok(())
}

/// `text` cut to `max` characters, with an ellipsis when cut.
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut short: String = text.chars().take(max - 1).collect();
    short.push('…');
    short
}
