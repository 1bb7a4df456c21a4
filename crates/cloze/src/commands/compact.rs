use anyhow::Result;
use clap::Args;
use cloze_index::DataDir;

/// Merge a collection's vector segments into one, without the vectors of replaced and deleted
/// documents.
///
/// Each write adds a small segment and marks the vectors it replaces as dead; merges (in the
/// server's background, and at the end of `cloze index`) combine segments and drop dead
/// vectors once they pass a quarter of a segment. This merges everything now: one graph
/// searches fastest.
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
        "compacted \"{}\": dropped {} dead vectors, {} remain in one segment",
        args.collection, summary.removed, summary.vector_count
    );
    Ok(())
}
