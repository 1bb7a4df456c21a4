//! Embedding and indexing throughput against sentence-transformers on the same documents.
//!
//! `CLOZE_PEER_PYTHON=PYTHON cargo bench -p cloze-benches --bench embed_reference -- MODEL_DIR
//! COLLECTION [LIMIT]` takes the first LIMIT documents (default all) of a shared collection,
//! and, in one run on this machine:
//! - embeds them with Cloze's encoder and has sentence-transformers (PyTorch,
//!   `embed_reference.py`) embed the same texts with the same model, batch 32, 2 threads,
//!   taking turns, [`REPETITIONS`] times each (documents/s: the median), and compares the
//!   vectors;
//! - indexes them into a fresh collection with that model, as `cloze index --model` does
//!   (documents/s end to end: read, embed, tantivy, HNSW, commit).
//!
//! The Python side needs `torch` and `sentence-transformers`: set `CLOZE_PEER_PYTHON` to an
//! interpreter that has them (default `python3`).

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use cloze_corpus::{DocumentReader, FieldMapping};
use cloze_index::{AnalyzerSettings, DataDir, Encoder, HnswSettings, SemanticSettings};
use cloze_tests::{beir_collection, median};

/// Passes each side makes over the texts. The two take turns, so a slow spell of the machine
/// (runs of the same code vary by a third here) falls on both.
const REPETITIONS: usize = 3;

fn main() {
    cloze_mlm::allocator::reuse_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let (model_dir, name) = match &args[..] {
        [model, name, ..] => (Path::new(model), name.clone()),
        _ => panic!("usage: embed_reference MODEL_DIR COLLECTION [LIMIT]"),
    };
    let limit: usize = args.get(2).map_or(usize::MAX, |n| n.parse().expect("LIMIT is a number"));
    let name: &'static str = Box::leak(name.into_boxed_str());
    let corpus = beir_collection(name).corpus;
    let documents: Vec<_> = DocumentReader::open(&corpus, FieldMapping::default())
        .unwrap()
        .take(limit)
        .collect::<Result<_, _>>()
        .unwrap();
    let texts: Vec<String> = documents.iter().map(|d| d.searchable_text()).collect();
    let encoder = Encoder::load(model_dir).unwrap();
    let max_len = encoder.record().max_len;
    // Tokens the model reads: the text's own, up to the model's length (tokenizer.json's own
    // truncation, e.g. all-MiniLM-L6-v2's 128, is not what the embedders use).
    let tokens: usize = {
        let mut tokenizer = cloze_mlm::load_tokenizer(model_dir).unwrap();
        tokenizer.with_truncation(None).unwrap();
        texts.iter().map(|t| tokenizer.encode(t.as_str(), true).unwrap().len().min(max_len)).sum()
    };

    let dir = tempfile::tempdir().unwrap();
    let texts_file = dir.path().join("texts.jsonl");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&texts_file).unwrap());
    for text in &texts {
        writeln!(out, "{}", serde_json::json!({ "text": text })).unwrap();
    }
    drop(out);
    let vectors_file = dir.path().join("reference.f32");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("embed_reference.py");
    let mut peer = cloze_tests::Peer::spawn(
        &script,
        &[model_dir.as_os_str(), texts_file.as_os_str(), vectors_file.as_os_str()],
    );
    // Loaded and warmed up (on the first 64 texts, as here).
    let reference = peer.read();

    let text_refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    encoder.encode(&text_refs[..text_refs.len().min(64)]).unwrap();
    let (mut our_seconds, mut peer_seconds) = (Vec::new(), Vec::new());
    let mut ours: Vec<Vec<f32>> = Vec::new();
    for _ in 0..REPETITIONS {
        let started = Instant::now();
        ours = text_refs.chunks(512).flat_map(|chunk| encoder.encode(chunk).unwrap()).collect();
        our_seconds.push(started.elapsed().as_secs_f64());
        peer_seconds.push(peer.ask("pass")["seconds"].as_f64().unwrap());
    }
    peer.finish();
    let embed_rate = texts.len() as f64 / median(&mut our_seconds.clone());
    let reference_rate = texts.len() as f64 / median(&mut peer_seconds.clone());

    let semantic = SemanticSettings {
        model: Some(encoder.record().clone()),
        dimension: None,
        window_overlap: None,
        window_length: None,
        hnsw: HnswSettings::default(),
        expansion: None,
    };
    let mut collection =
        DataDir::new(dir.path()).create(name, AnalyzerSettings::default(), Some(semantic)).unwrap();
    collection.use_encoder(encoder).unwrap();
    let started = Instant::now();
    collection.ingest(documents.into_iter().map(Ok::<_, cloze_index::IndexError>), |_| {}).unwrap();
    let index_rate = texts.len() as f64 / started.elapsed().as_secs_f64();

    let theirs: Vec<f32> = std::fs::read(&vectors_file)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let dimension = ours[0].len();
    let cosines: Vec<f32> = ours
        .iter()
        .zip(theirs.chunks_exact(dimension))
        .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x * y).sum())
        .collect();
    let lowest = cosines.iter().copied().fold(f32::INFINITY, f32::min);

    println!(
        "{name}: {} documents, {:.0} tokens each on average (max_len {max_len}; \
         sentence-transformers {})",
        texts.len(),
        tokens as f64 / texts.len() as f64,
        reference["max_seq_length"]
    );
    println!("{:<44}  documents/s", "");
    println!("{:<44}  {embed_rate:>11.1}", "Cloze, embedding only");
    println!("{:<44}  {index_rate:>11.1}", "Cloze, cloze index --model (end to end)");
    println!("{:<44}  {reference_rate:>11.1}", "sentence-transformers, embedding only");
    println!(
        "ratio (Cloze / sentence-transformers, embedding): {:.2}",
        embed_rate / reference_rate
    );
    println!("lowest cosine between the two embeddings of a document: {lowest:.6}");
    // Named by its folder, or the folder above a folder called `model` (as pip packages it).
    let named = if model_dir.ends_with("model") { model_dir.parent() } else { Some(model_dir) };
    let model = named
        .and_then(|d| d.file_name())
        .map_or("model".into(), |n| n.to_string_lossy().into_owned());
    cloze_tests::save_bench_result(
        &format!("embed-reference-{model}"),
        &serde_json::json!({"bench": "embed_reference", "collection": name,
            "documents": texts.len(), "model": model, "model_dir": model_dir,
            "cloze_embed_per_s": embed_rate, "cloze_index_per_s": index_rate,
            "reference": reference, "reference_per_s": reference_rate,
            "cloze_seconds": our_seconds, "reference_seconds": peer_seconds,
            "repetitions": REPETITIONS, "ratio": embed_rate / reference_rate,
            "lowest_cosine": lowest}),
    );
}
