//! Training text: read it, tokenize it, and cut it into the sequences the model sees.

use std::path::{Path, PathBuf};

use cloze_corpus::{CorpusError, DocumentReader, FieldMapping, TextLines};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::held_out::HeldOutDocument;
use crate::tokenizer::SpecialIds;

/// How tokenized texts become sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Packing {
    /// Concatenate every text (separated by `[SEP]`) and cut the stream into full blocks of
    /// `max_len` tokens, as Hugging Face's `run_mlm.py` `group_texts` does: no padding wasted.
    #[default]
    Blocks,
    /// One text a sequence, truncated to `max_len` tokens.
    Lines,
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Corpus(#[from] CorpusError),
    #[error("tokenizing: {0}")]
    Tokenize(String),
}

/// Reads the texts of every file: JSONL corpora (`.jsonl`, `.jsonl.gz`: title and text of each
/// document, BEIR's layout) or plain text (anything else: one document or paragraph a line).
pub fn read_texts(paths: &[PathBuf]) -> Result<Vec<String>, DataError> {
    Ok(read_texts_holding_out(paths, 0, 0)?.0)
}

/// [`read_texts`], less `per_corpus` documents of each JSONL corpus (at most a quarter of it),
/// drawn by `seed`: the texts to train on, and the documents left out.
pub fn read_texts_holding_out(
    paths: &[PathBuf],
    per_corpus: usize,
    seed: u64,
) -> Result<(Vec<String>, Vec<HeldOutDocument>), DataError> {
    let (mut texts, mut held_out) = (Vec::new(), Vec::new());
    for (file_index, path) in paths.iter().enumerate() {
        if is_jsonl(path) {
            let mut documents = Vec::new();
            for document in DocumentReader::open(path, FieldMapping::default())? {
                let document = document?;
                let text = document.searchable_text();
                if !text.trim().is_empty() {
                    documents.push((document.id, text));
                }
            }
            let mut order: Vec<usize> = (0..documents.len()).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed.wrapping_add(file_index as u64)));
            let mut is_held_out = vec![false; documents.len()];
            for &index in &order[..per_corpus.min(documents.len() / 4)] {
                is_held_out[index] = true;
            }
            for ((id, text), held) in documents.into_iter().zip(is_held_out) {
                if held {
                    held_out.push(HeldOutDocument::new(&id, &text));
                } else {
                    texts.push(text);
                }
            }
        } else {
            for line in TextLines::open(path)? {
                texts.push(line?);
            }
        }
    }
    Ok((texts, held_out))
}

fn is_jsonl(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    name.ends_with(".jsonl") || name.ends_with(".jsonl.gz")
}

/// The token ids of each text, without special tokens.
pub fn tokenize(tokenizer: &Tokenizer, texts: &[String]) -> Result<Vec<Vec<u32>>, DataError> {
    let mut ids = Vec::with_capacity(texts.len());
    // In chunks: full encodings (offsets, strings) of a whole corpus would not fit in memory.
    for chunk in texts.chunks(4096) {
        let encodings = tokenizer
            .encode_batch(chunk.to_vec(), false)
            .map_err(|e| DataError::Tokenize(e.to_string()))?;
        ids.extend(encodings.into_iter().map(|encoding| encoding.get_ids().to_vec()));
    }
    Ok(ids)
}

/// Cuts tokenized texts into sequences of at most `max_len` tokens, each `[CLS] ... [SEP]`.
pub fn pack(
    texts: &[Vec<u32>],
    packing: Packing,
    max_len: usize,
    special: SpecialIds,
) -> Vec<Vec<u32>> {
    let body = max_len.saturating_sub(2).max(1);
    let wrap = |tokens: &[u32]| {
        let mut sequence = Vec::with_capacity(tokens.len() + 2);
        sequence.push(special.cls);
        sequence.extend_from_slice(tokens);
        sequence.push(special.sep);
        sequence
    };
    match packing {
        Packing::Lines => {
            texts.iter().filter(|t| !t.is_empty()).map(|t| wrap(&t[..t.len().min(body)])).collect()
        }
        Packing::Blocks => {
            let mut stream = Vec::new();
            for text in texts.iter().filter(|t| !t.is_empty()) {
                if !stream.is_empty() {
                    stream.push(special.sep);
                }
                stream.extend_from_slice(text);
            }
            // The last, partial block is dropped, as group_texts does, unless it is all there is.
            let full = stream.len() / body;
            if full == 0 && !stream.is_empty() {
                return vec![wrap(&stream)];
            }
            stream.chunks_exact(body).map(wrap).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECIAL: SpecialIds = SpecialIds { pad: 0, unk: 1, cls: 2, sep: 3, mask: 4 };

    #[test]
    fn blocks_fill_max_len_and_lines_truncate() {
        let texts = vec![vec![10, 11, 12], vec![], vec![20, 21, 22, 23, 24]];
        let blocks = pack(&texts, Packing::Blocks, 5, SPECIAL);
        assert_eq!(blocks, [vec![2, 10, 11, 12, 3], vec![2, 3, 20, 21, 3], vec![2, 22, 23, 24, 3]]);
        let lines = pack(&texts, Packing::Lines, 5, SPECIAL);
        assert_eq!(lines, [vec![2, 10, 11, 12, 3], vec![2, 20, 21, 22, 3]]);
        assert_eq!(pack(&[vec![7]], Packing::Blocks, 8, SPECIAL), [vec![2, 7, 3]]);
    }

    #[test]
    fn reads_plain_text_and_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("a.txt");
        std::fs::write(&text, "first paragraph\n\nsecond\n").unwrap();
        let jsonl = dir.path().join("b.jsonl");
        std::fs::write(&jsonl, "{\"_id\": \"1\", \"title\": \"T\", \"text\": \"body\"}\n").unwrap();
        assert_eq!(read_texts(&[text, jsonl]).unwrap(), ["first paragraph", "second", "T\nbody"]);
    }

    #[test]
    fn holds_out_documents_of_each_corpus_never_of_plain_text() {
        let dir = tempfile::tempdir().unwrap();
        let corpus = |name: &str, count: usize| {
            let path = dir.path().join(name);
            let lines: String = (0..count)
                .map(|i| format!("{{\"_id\": \"{i}\", \"title\": \"\", \"text\": \"{name} document {i}\"}}\n"))
                .collect();
            std::fs::write(&path, lines).unwrap();
            path
        };
        let text = dir.path().join("a.txt");
        std::fs::write(&text, "one\ntwo\nthree\nfour\n").unwrap();
        let paths = [corpus("a.jsonl", 20), corpus("b.jsonl", 8), text];
        let (texts, held_out) = read_texts_holding_out(&paths, 4, 7).unwrap();
        // Four of a.jsonl, two of b.jsonl (at most a quarter), none of the plain text.
        assert_eq!(held_out.len(), 6);
        assert_eq!(texts.len(), 32 - 6);
        let listed = crate::HeldOutDocuments::new(held_out.clone());
        for i in 0..20 {
            let text = format!("a.jsonl document {i}");
            assert_ne!(texts.contains(&text), listed.contains(&i.to_string(), &text), "{i}");
        }
        assert_eq!(texts.iter().filter(|t| t.starts_with("b.jsonl")).count(), 6);
        assert!(["one", "two", "three", "four"]
            .iter()
            .all(|line| texts.contains(&line.to_string())));
        // The same seed holds out the same documents; nothing held out is what read_texts reads.
        assert_eq!(read_texts_holding_out(&paths, 4, 7).unwrap().1, held_out);
        assert_ne!(read_texts_holding_out(&paths, 4, 8).unwrap().1, held_out);
        assert_eq!(read_texts_holding_out(&paths, 0, 7).unwrap().0, read_texts(&paths).unwrap());
    }
}
