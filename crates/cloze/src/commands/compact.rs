use anyhow::Result;
use clap::Args;
use cloze_index::DataDir;

/// Rebuild a collection's HNSW graph without the vectors of replaced and deleted documents.
///
/// The graph cannot drop a vector in place, so those vectors stay in it, skipped by every
/// search, until a compaction. Writes compact by themselves once a quarter of the vectors are
/// dead; this does it now.
#[derive(Debug, Args)]
pub struct CompactArgs {
    /// The collection to compact (it must have a model).
    #[arg(long, value_name = "NAME")]
    collection: String,
}

pub fn run(data_dir: &DataDir, args: CompactArgs) -> Result<()> {
    let mut collection = data_dir.open(&args.collection)?;
    let summary = collection.compact()?;
    println!(
        "compacted \"{}\": dropped {} dead vectors, {} remain",
        args.collection, summary.removed, summary.vector_count
    );
    Ok(())
}
