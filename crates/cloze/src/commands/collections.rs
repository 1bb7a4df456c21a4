use anyhow::Result;
use clap::Args;
use cloze_index::DataDir;

/// List the collections in the data folder, with their document and vector counts and model.
#[derive(Debug, Args)]
pub struct CollectionsArgs {
    /// Print JSON: `{"collections": [{"name", "documents", "vectors", "model"}]}` (`model` is
    /// the model folder, or null for a keyword-only collection; for one whose documents bring
    /// their own vectors, their dimension in words).
    #[arg(long)]
    json: bool,
}

pub fn run(data_dir: &DataDir, args: CollectionsArgs) -> Result<()> {
    let mut rows = Vec::new();
    for name in data_dir.collection_names()? {
        let collection = data_dir.open(&name)?;
        let model = collection.manifest().semantic.as_ref().map(|semantic| match &semantic.model {
            Some(model) => model.path.display().to_string(),
            None => format!("(own vectors, {} dimensions)", semantic.dimension()),
        });
        rows.push((name, collection.document_count(), collection.vector_count(), model));
    }
    if args.json {
        let collections: Vec<_> = rows
            .iter()
            .map(|(name, documents, vectors, model)| {
                serde_json::json!({"name": name, "documents": documents, "vectors": vectors,
                    "model": model})
            })
            .collect();
        println!("{}", serde_json::json!({ "collections": collections }));
    } else if rows.is_empty() {
        println!("no collections in {}", data_dir.path().display());
    } else {
        let width = rows.iter().map(|(name, ..)| name.len()).max().unwrap_or(0).max(10);
        println!("{:<width$}  documents    vectors  model", "collection");
        for (name, documents, vectors, model) in rows {
            let model = model.unwrap_or_else(|| "(keyword only)".to_string());
            println!("{name:<width$}  {documents:>9}  {vectors:>9}  {model}");
        }
    }
    Ok(())
}
