use anyhow::Result;
use clap::Args;
use cloze_index::DataDir;

/// List the collections in the data folder, with their document counts.
#[derive(Debug, Args)]
pub struct CollectionsArgs {
    /// Print JSON: `{"collections": [{"name", "documents"}]}`.
    #[arg(long)]
    json: bool,
}

pub fn run(data_dir: &DataDir, args: CollectionsArgs) -> Result<()> {
    let mut rows = Vec::new();
    for name in data_dir.collection_names()? {
        let collection = data_dir.open(&name)?;
        rows.push((name, collection.document_count()));
    }
    if args.json {
        let collections: Vec<_> = rows
            .iter()
            .map(|(name, count)| serde_json::json!({"name": name, "documents": count}))
            .collect();
        println!("{}", serde_json::json!({ "collections": collections }));
    } else if rows.is_empty() {
        println!("no collections in {}", data_dir.path().display());
    } else {
        let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0).max(10);
        println!("{:<width$}  documents", "collection");
        for (name, count) in rows {
            println!("{name:<width$}  {count:>9}");
        }
    }
    Ok(())
}
