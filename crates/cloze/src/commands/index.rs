use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use cloze_corpus::DocumentReader;
use cloze_index::{
    AnalyzerSettings, DataDir, Encoder, ExpansionSettings, HnswSettings, SemanticSettings,
    WriteProgress,
};

use crate::commands::fields::DocumentFields;
use crate::progress;

/// Add the documents of a JSONL file to a collection, creating the collection if it is new.
///
/// Each line is a JSON object; BEIR's `corpus.jsonl` (`{"_id", "title", "text"}`) works as it is,
/// other layouts name their fields with the flags below. Files may be gzip-compressed. A
/// document whose id is already in the collection replaces it. The ingest is all or nothing:
/// if any line is bad, the error names it and the collection is left as it was.
///
/// With --model, a new collection also embeds every document with that encoder (a Hugging
/// Face BERT folder: one trained by `cloze train`, or e.g. all-MiniLM-L6-v2) into an HNSW
/// vector index, and answers `--mode semantic` searches. The model is fixed for the
/// collection's life: later ingests embed with it, and a different model is refused.
///
/// With --vector-field, documents bring their own vectors (computed elsewhere) in that field;
/// a new collection without --model takes their length from the first one, and then every
/// document needs one. With a model too, a document's own vector replaces embedding it.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("vectors").multiple(true).args(["model", "vector_field"]))]
pub struct IndexArgs {
    /// The collection to add to (created if it does not exist).
    #[arg(long, value_name = "NAME")]
    collection: String,

    /// The JSONL file of documents, plain or .gz.
    #[arg(long, value_name = "FILE")]
    corpus: PathBuf,

    #[command(flatten)]
    fields: DocumentFields,

    /// For a new collection, how text becomes terms: a preset (english, standard) or a TOML
    /// file like those in configs/analyzers/ [default: english].
    #[arg(long, value_name = "NAME|FILE")]
    analyzer: Option<String>,

    /// Embed documents with this model folder (config.json, model.safetensors,
    /// tokenizer.json) for semantic search. A collection created with a model embeds later
    /// ingests with it without this flag; given anyway, it must be that model (the weights are
    /// compared).
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,

    /// The field that holds each document's own vector, an array of numbers (like
    /// Elasticsearch's dense_vector): indexed as it is, instead of embedding the document.
    #[arg(long, value_name = "FIELD")]
    vector_field: Option<String>,

    /// For a new collection with --model: cut documents longer than the model's length into
    /// overlapping windows, a vector each, and rank a document by its best window [default:
    /// truncate them].
    #[arg(long, requires = "model")]
    windows: bool,

    /// Tokens each window shares with the one before [default: 32, or half a window when
    /// windows are shorter than 66 tokens].
    #[arg(long, value_name = "TOKENS", requires = "windows")]
    window_overlap: Option<usize>,

    /// Tokens per window, [CLS] and [SEP] included, when shorter than the model's length
    /// [default: the model's length]. An encoder trained on short crops, such as the
    /// retrieval preset's 64 tokens, ranks best with windows of that length.
    #[arg(long, value_name = "TOKENS", requires = "windows")]
    window_length: Option<usize>,

    /// For a new collection with vectors: HNSW links per point [default: 16].
    #[arg(long, value_name = "M", requires = "vectors")]
    hnsw_m: Option<usize>,

    /// For a new collection with vectors: HNSW candidates when linking a point [default: 200].
    #[arg(long, value_name = "N", requires = "vectors")]
    ef_construction: Option<usize>,

    /// For a new collection with vectors: HNSW candidates per search, which a search can
    /// override [default: 400].
    #[arg(long, value_name = "N", requires = "vectors")]
    ef_search: Option<usize>,

    /// For a new collection with vectors: also index each document with the text of its
    /// nearest documents by vector, which keyword search scores at a lower weight, so that a
    /// document matches the words its neighbours use for the same thing. Neighbours are those
    /// present when a document is written; later writes expand again the documents whose
    /// neighbours they add, rewrite or delete. [default: off]
    #[arg(long, requires = "vectors")]
    expand: bool,

    /// With --expand: how many nearest documents lend their text [default: 5].
    #[arg(long, value_name = "N", requires = "expand")]
    expansion_neighbours: Option<usize>,

    /// With --expand: the weight of a match in the neighbours' text, against 1 for a match in
    /// the document's own [default: 0.4]. Unlike the other settings, it may change on an
    /// existing collection: it only scales scores.
    #[arg(long, value_name = "WEIGHT", requires = "expand")]
    expansion_weight: Option<f64>,

    /// Documents per forward pass of the model.
    #[arg(long, value_name = "N", default_value_t = cloze_mlm::DEFAULT_BATCH_SIZE, requires = "model")]
    batch_size: usize,
}

impl IndexArgs {
    /// The expansion these flags ask for.
    fn expansion(&self) -> Option<ExpansionSettings> {
        let defaults = ExpansionSettings::default();
        self.expand.then(|| ExpansionSettings {
            neighbours: self.expansion_neighbours.unwrap_or(defaults.neighbours),
            weight: self.expansion_weight.unwrap_or(defaults.weight),
        })
    }
}

pub fn run(data_dir: &DataDir, args: IndexArgs) -> Result<()> {
    let mut mapping = args.fields.mapping()?;
    mapping.vector_field = args.vector_field.clone();
    let analyzer = args.analyzer.as_deref().map(AnalyzerSettings::from_name_or_file).transpose()?;
    // Open the corpus and the model first: neither should fail after a new, empty collection
    // exists. (The corpus is read again once the collection's vector length is known.)
    DocumentReader::open(&args.corpus, mapping.clone())?;
    let encoder = match &args.model {
        Some(dir) => Some(
            Encoder::load(dir)
                .with_context(|| format!("--model {}", dir.display()))?
                .with_batch_size(args.batch_size),
        ),
        None => None,
    };

    let created = !data_dir.exists(&args.collection)?;
    let collection = if created {
        let defaults = HnswSettings::default();
        let hnsw = HnswSettings {
            m: args.hnsw_m.unwrap_or(defaults.m),
            ef_construction: args.ef_construction.unwrap_or(defaults.ef_construction),
            ef_search: args.ef_search.unwrap_or(defaults.ef_search),
        };
        let own_vectors = match (&encoder, &args.vector_field) {
            (None, Some(field)) => {
                let dimension =
                    first_vector_length(&args.corpus, &mapping)?.with_context(|| {
                        format!(
                            "--vector-field {field}: no document of {} has one, so the \
                         collection's vector length is unknown",
                            args.corpus.display()
                        )
                    })?;
                Some(SemanticSettings {
                    expansion: args.expansion(),
                    ..SemanticSettings::with_dimension(dimension, hnsw)
                })
            }
            _ => None,
        };
        let semantic = encoder.as_ref().map(|encoder| SemanticSettings {
            model: Some(encoder.record().clone()),
            dimension: None,
            window_overlap: args.windows.then(|| {
                // Half a window when windows are short, so each adds as many tokens as it shares.
                let length = args.window_length.unwrap_or(encoder.record().max_len);
                args.window_overlap.unwrap_or(32.min(length.saturating_sub(2) / 2))
            }),
            window_length: args.window_length,
            hnsw,
            expansion: args.expansion(),
        });
        data_dir.create(&args.collection, analyzer.unwrap_or_default(), semantic.or(own_vectors))?
    } else {
        let collection = data_dir.open(&args.collection)?;
        if let Some(analyzer) = analyzer {
            if analyzer != collection.manifest().analyzer {
                bail!(
                    "--analyzer {}: collection \"{}\" was created with other analyzer settings, \
                     and they cannot change (see {}); index into a new collection instead",
                    args.analyzer.as_deref().unwrap_or_default(),
                    args.collection,
                    collection.path().join("manifest.json").display()
                );
            }
        }
        if let Some(semantic) = &collection.manifest().semantic {
            let hnsw = &semantic.hnsw;
            let changed = [
                ("--windows", args.windows.then_some(1), semantic.window_overlap.map(|_| 1)),
                ("--window-overlap", args.window_overlap, semantic.window_overlap),
                ("--window-length", args.window_length, Some(semantic.window_length())),
                ("--hnsw-m", args.hnsw_m, Some(hnsw.m)),
                ("--ef-construction", args.ef_construction, Some(hnsw.ef_construction)),
                ("--ef-search", args.ef_search, Some(hnsw.ef_search)),
                ("--expand", args.expand.then_some(1), semantic.expansion.map(|_| 1)),
                (
                    "--expansion-neighbours",
                    args.expansion_neighbours,
                    semantic.expansion.map(|expansion| expansion.neighbours),
                ),
            ]
            .into_iter()
            .find(|(_, asked, kept)| asked.is_some() && asked != kept)
            .map(|(flag, ..)| flag);
            if let Some(flag) = changed {
                bail!(
                    "{flag}: collection \"{}\" was created with other vector settings, and \
                     they cannot change (see {}); index into a new collection instead",
                    args.collection,
                    collection.path().join("manifest.json").display()
                );
            }
        }
        collection
    };
    let mut collection = collection;
    if let Some(encoder) = encoder {
        if let Err(error) = collection.use_encoder(encoder) {
            if created {
                drop(collection);
                data_dir.delete(&args.collection)?;
            }
            return Err(error).context(format!(
                "--model {}",
                args.model.as_deref().unwrap_or(Path::new("")).display()
            ));
        }
    }

    mapping.vector_dimension =
        collection.manifest().semantic.as_ref().map(SemanticSettings::dimension);
    let documents = DocumentReader::open(&args.corpus, mapping.clone())?;
    let started = Instant::now();
    let progress = if collection.manifest().semantic.is_some() {
        // Embedding is slow enough to be worth a count first, for a bar with an ETA.
        let total = DocumentReader::open(&args.corpus, mapping)?.filter(Result::is_ok).count();
        progress::bar(total as u64, "documents")
    } else {
        progress::counter("documents")
    };
    // An expanding collection writes its documents to the keyword index only once every vector
    // is in, to find their neighbours among: the bar moves on to each step of that, and a
    // spinner says what is going on between them, or the bar would sit full and silent.
    let expands = collection.expansion().is_some();
    let wait_for = |doing: &str| {
        progress.set_style(progress::spinner(doing));
        // Nothing else ticks it until the next step reports.
        progress.enable_steady_tick(std::time::Duration::from_millis(200));
    };
    let mut step_shown = None;
    let result = collection.ingest(documents, |step| {
        let (what, done, of) = match step {
            WriteProgress::Change => {
                progress.inc(1);
                if expands && progress.length() == Some(progress.position()) {
                    wait_for("getting ready to find each document's nearest documents");
                }
                return;
            }
            WriteProgress::NeighboursFound { done, of } => {
                ("documents' nearest documents found", done, of)
            }
            WriteProgress::EarlierChecked { done, of } => {
                ("earlier documents checked for new neighbours", done, of)
            }
        };
        if step_shown != Some(what) {
            step_shown = Some(what);
            progress.disable_steady_tick();
            progress.reset();
            progress.set_style(progress::bar_style(what));
            progress.set_length(of as u64);
        }
        progress.set_position(done as u64);
        if done == of {
            wait_for("writing each document with its nearest documents' text");
        }
    });
    progress.finish_and_clear();
    let summary = match result {
        Ok(summary) => summary,
        Err(error) => {
            if created {
                drop(collection);
                data_dir
                    .delete(&args.collection)
                    .context("removing the collection this command created")?;
            }
            return Err(error).context(format!("nothing was added to \"{}\"", args.collection));
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    // The weight only scales scores, so unlike the other settings it may change; only once
    // the documents are in, so that a failed ingest leaves the collection as it was.
    if let (Some(weight), Some((_, kept))) = (args.expansion_weight, collection.expansion()) {
        if weight != kept.weight {
            collection.set_expansion_weight(weight).context("--expansion-weight")?;
            println!("\"{}\" now weighs its neighbours' text at {weight}", args.collection);
        }
    }
    if collection.manifest().semantic.is_some() {
        // The documents are committed; what is left is building the graphs searches walk,
        // as the server's background merges would.
        let merging = progress::counter("vector segment merges");
        collection
            .merge_segments(false, |_| merging.inc(1))
            .context("the documents are committed, but merging their vector segments failed")?;
        merging.finish_and_clear();
    }
    let vectors = if collection.manifest().semantic.is_some() {
        format!(" and {} vectors", summary.vector_count)
    } else {
        String::new()
    };
    println!(
        "indexed {} documents into \"{}\" in {:.1}s ({:.0} documents/s); it now holds {} \
         documents{vectors}",
        summary.ingested,
        args.collection,
        seconds,
        summary.ingested as f64 / seconds.max(1e-9),
        summary.document_count
    );
    Ok(())
}

/// The length of the first vector in `corpus`, if any document has one.
fn first_vector_length(
    corpus: &Path,
    mapping: &cloze_corpus::FieldMapping,
) -> Result<Option<usize>> {
    for document in DocumentReader::open(corpus, mapping.clone())? {
        if let Some(vector) = document?.vector {
            return Ok(Some(vector.len()));
        }
    }
    Ok(None)
}
