use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use cloze_index::DataDir;

/// Make a consistent copy of a collection, also while `cloze serve` is serving it.
///
/// The copy is taken between two writes (a write in progress is waited for), so it holds the
/// documents and vectors of one commit. Load it back with `cloze restore`, or over HTTP with
/// `POST /collections/NAME/_restore`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The collection to copy.
    #[arg(long, value_name = "NAME")]
    collection: String,

    /// A new folder to write the snapshot to [default: DATA_DIR/.snapshots/NAME-TIME, where the
    /// server's /snapshots lists it].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

pub fn run(data_dir: &DataDir, args: SnapshotArgs) -> Result<()> {
    let (info, path) = match &args.out {
        Some(out) => (data_dir.snapshot_into(&args.collection, out)?, out.clone()),
        None => {
            let info = data_dir.snapshot(&args.collection)?;
            let path = data_dir.snapshot_path(&info.name)?;
            (info, path)
        }
    };
    println!(
        "snapshot of \"{}\" ({} documents, {} bytes) in {}",
        info.collection,
        info.documents,
        info.bytes,
        path.display()
    );
    Ok(())
}

/// Load a snapshot (from `cloze snapshot` or the server) as a collection.
///
/// The collection appears whole or not at all. To replace a collection a server is serving,
/// restore through the server (`POST /collections/NAME/_restore`), so it switches over.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The collection to create (or replace, with --replace).
    #[arg(long, value_name = "NAME")]
    collection: String,

    /// The snapshot: its folder, or its name in DATA_DIR/.snapshots.
    #[arg(long, value_name = "SNAPSHOT")]
    from: String,

    /// Replace the collection if it exists.
    #[arg(long)]
    replace: bool,
}

pub fn restore(data_dir: &DataDir, args: RestoreArgs) -> Result<()> {
    let from = PathBuf::from(&args.from);
    let folder = if from.is_dir() { from } else { data_dir.snapshot_path(&args.from)? };
    let collection = data_dir
        .restore(&args.collection, &folder, args.replace)
        .with_context(|| format!("restoring {} as \"{}\"", folder.display(), args.collection))?;
    println!(
        "restored \"{}\" from {}: {} documents",
        args.collection,
        folder.display(),
        collection.document_count()
    );
    Ok(())
}
