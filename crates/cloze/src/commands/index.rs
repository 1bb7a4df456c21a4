use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use cloze_corpus::DocumentReader;
use cloze_index::{AnalyzerSettings, DataDir};

use crate::commands::fields::DocumentFields;
use crate::progress;

/// Add the documents of a JSONL file to a collection, creating the collection if it is new.
///
/// Each line is a JSON object; BEIR's `corpus.jsonl` (`{"_id", "title", "text"}`) works as it is,
/// other layouts name their fields with the flags below. Files may be gzip-compressed. A
/// document whose id is already in the collection replaces it. The ingest is all or nothing:
/// if any line is bad, the error names it and the collection is left as it was.
#[derive(Debug, Args)]
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
}

pub fn run(data_dir: &DataDir, args: IndexArgs) -> Result<()> {
    let mapping = args.fields.mapping()?;
    let analyzer = args.analyzer.as_deref().map(AnalyzerSettings::from_name_or_file).transpose()?;
    // Open the corpus first: an unreadable file should not leave a new, empty collection behind.
    let documents = DocumentReader::open(&args.corpus, mapping)?;

    let created = !data_dir.exists(&args.collection)?;
    let mut collection = if created {
        data_dir.create(&args.collection, analyzer.unwrap_or_default())?
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
        collection
    };

    let started = Instant::now();
    let progress = progress::counter("documents");
    let result = collection.ingest(documents, || progress.inc(1));
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
    println!(
        "indexed {} documents into \"{}\" in {:.1}s ({:.0} documents/s); it now holds {} documents",
        summary.ingested,
        args.collection,
        seconds,
        summary.ingested as f64 / seconds.max(1e-9),
        summary.document_count
    );
    Ok(())
}
