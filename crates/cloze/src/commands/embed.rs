use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::{Args, ValueEnum};
use cloze_corpus::DocumentReader;
use cloze_mlm::{Embedder, Pooling};

use crate::commands::fields::DocumentFields;
use crate::progress;

/// Embed documents with a model: JSONL in, one `{"id", "vector"}` line per document out.
///
/// The model folder is read as sentence-transformers reads it (max_seq_length, pooling); the
/// text of each document is its title and text. Vectors have unit length.
#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// The model folder (config.json, model.safetensors, tokenizer.json), from `cloze train` or
    /// Hugging Face.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,

    /// The documents: JSONL, plain or .gz; `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    input: PathBuf,

    /// Where to write the vectors [default: standard output].
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,

    #[command(flatten)]
    fields: DocumentFields,

    /// Documents embedded together; they are grouped by length to waste less on padding.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,

    /// How token vectors become one [default: the model folder's, else mean; idf-mean when
    /// the folder has token weights, as the retrieval preset writes].
    #[arg(long, value_enum)]
    pooling: Option<PoolingArg>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PoolingArg {
    Mean,
    Cls,
    /// The mean weighted by each token's inverse document frequency (token_weights.json).
    IdfMean,
}

pub fn run(args: EmbedArgs) -> Result<()> {
    let mut embedder = Embedder::load(&args.model, &Device::Cpu)?.with_batch_size(args.batch_size);
    if let Some(pooling) = args.pooling {
        embedder = embedder.with_pooling(match pooling {
            PoolingArg::Mean => Pooling::Mean,
            PoolingArg::Cls => Pooling::Cls,
            PoolingArg::IdfMean => Pooling::IdfMean,
        })?;
    }
    let mapping = args.fields.mapping()?;
    let documents = match args.input.to_str() {
        Some("-") => DocumentReader::from_reader("standard input", std::io::stdin(), mapping)?,
        _ => DocumentReader::open(&args.input, mapping)?,
    };
    let documents = documents.collect::<Result<Vec<_>, _>>()?;
    let texts: Vec<String> = documents.iter().map(|d| d.searchable_text()).collect();
    let progress = progress::bar(texts.len() as u64, "documents");
    let text_refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let vectors = embedder.embed_reporting(&text_refs, &|n| progress.inc(n as u64))?;
    progress.finish_and_clear();

    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(BufWriter::new(
            File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    for (document, vector) in documents.iter().zip(&vectors) {
        writeln!(out, "{}", serde_json::json!({ "id": document.id, "vector": vector }))?;
    }
    out.flush()?;
    Ok(())
}
