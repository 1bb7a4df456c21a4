use anyhow::{Context, Result};
use clap::Args;
use cloze_index::DataDir;

/// Remove documents from a collection: from the keyword index and from the vectors, together.
///
/// All or nothing: if any id is not in the collection, nothing is removed.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The collection to remove from.
    #[arg(long, value_name = "NAME")]
    collection: String,

    /// The id of a document to remove (repeatable).
    #[arg(long = "id", value_name = "ID", required = true)]
    ids: Vec<String>,
}

pub fn run(data_dir: &DataDir, args: DeleteArgs) -> Result<()> {
    let mut collection = data_dir.open(&args.collection)?;
    let removed = collection
        .delete(&args.ids)
        .with_context(|| format!("nothing was removed from \"{}\"", args.collection))?;
    println!(
        "removed {removed} documents from \"{}\"; it now holds {} documents",
        args.collection,
        collection.document_count()
    );
    Ok(())
}
