use anyhow::{bail, Context, Result};
use clap::Args;
use cloze_corpus::{sample_documents, SAMPLE_COLLECTION};
use cloze_index::{AnalyzerSettings, DataDir};

/// Load a small sample collection to try Cloze with: 36 short articles on the solar system
/// (public domain), keyword search only, no model needed. Then `cloze search --collection
/// sample "an ocean under the ice"`, or `cloze serve` and the page at http://127.0.0.1:7700.
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// The collection to create; it must not exist yet.
    #[arg(long, value_name = "NAME", default_value = SAMPLE_COLLECTION)]
    collection: String,
}

pub fn run(data_dir: &DataDir, args: SampleArgs) -> Result<()> {
    if data_dir.exists(&args.collection)? {
        bail!(
            "--collection {}: a collection of that name exists already; name another one with \
             --collection",
            args.collection
        );
    }
    let mut collection = data_dir.create(&args.collection, AnalyzerSettings::default(), None)?;
    let summary = match collection.ingest(sample_documents()?, |_| {}) {
        Ok(summary) => summary,
        Err(error) => {
            drop(collection);
            data_dir.delete(&args.collection)?;
            return Err(error).context(format!("loading the sample into \"{}\"", args.collection));
        }
    };
    println!(
        "indexed {} documents into \"{}\"; try: cloze search --collection {} \"an ocean under \
         the ice\"",
        summary.ingested, args.collection, args.collection
    );
    Ok(())
}
