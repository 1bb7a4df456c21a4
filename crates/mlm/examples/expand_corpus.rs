//! Writes the cloze head's expansion of every document of a corpus as JSONL
//! (`{"_id": .., "terms": [[term, weight], ..]}`), for `benches/expansion.sh` to measure
//! expansion in the keyword index:
//!   cargo run --release -p cloze-mlm --example expand_corpus -- MODEL CORPUS OUT TERMS WINDOW
use std::io::Write;

use cloze_corpus::{DocumentReader, FieldMapping};

/// Documents per call: enough windows to fill the expander's batches.
const CHUNK: usize = 256;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, corpus, out, terms, window] = &args[..] else {
        return Err("usage: expand_corpus MODEL CORPUS OUT TERMS WINDOW".into());
    };
    let expander = cloze_mlm::Expander::load(model.as_ref(), &candle_core::Device::Cpu)?;
    let (terms, window): (usize, usize) = (terms.parse()?, window.parse()?);
    let documents = DocumentReader::open(corpus, FieldMapping::default())?
        .map(|document| document.map(|d| (d.searchable_text(), d.id)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(out)?);
    let started = std::time::Instant::now();
    for (done, chunk) in documents.chunks(CHUNK).enumerate() {
        let texts: Vec<&str> = chunk.iter().map(|(text, _)| text.as_str()).collect();
        for ((_, id), expansion) in chunk.iter().zip(expander.expand(&texts, terms, window)?) {
            let terms: Vec<(String, f32)> =
                expansion.into_iter().map(|t| (t.term, t.weight)).collect();
            writeln!(out, "{}", serde_json::json!({"_id": id, "terms": terms}))?;
        }
        let done = done * CHUNK + chunk.len();
        eprintln!("{done} of {} documents in {:.0?}", documents.len(), started.elapsed());
    }
    Ok(())
}
