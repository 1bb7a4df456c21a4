//! Judged queries made from a collection itself, for tuning hybrid fusion where no one has
//! judged any.
//!
//! The inverse cloze task (Lee, Chang and Toutanova, 2019): a run of words from one sentence
//! of a sampled document is the query, and that document, with the sentence taken out, is its
//! one relevant document (a document of one sentence loses only the query's words; one that
//! would keep fewer words than the query makes none). Taken out, the sentence's words no longer match themselves: the
//! document must be found by what the rest of it says, as a real query's words differ from
//! the text that answers it. Tuning runs on a copy of the collection in which each sampled
//! document is replaced by its version without the sentence; the collection itself is not
//! changed.
//!
//! An encoder trained on a document, with the very task of finding it from a piece of it, finds
//! it from a pseudo-query better than it will from a real one, and tuning then trusts it too
//! much. When the collection's model lists documents it left out of training (`cloze train`
//! with `training.held_out_documents`), queries are made of those alone.

use cloze_corpus::Document;
use cloze_eval::Qrels;
use cloze_index::{Collection, DataDir};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{tune, JudgedQuery, PseudoQuerySources, SearchError, TuneOptions, Tuning};

/// How pseudo-queries are made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PseudoQuerySettings {
    /// How many queries (fewer where the collection has fewer documents with a long enough
    /// sentence).
    pub count: usize,
    /// Words per query: a run of this many from a sentence at least as long.
    pub words: usize,
    /// Keep the sentence in its document (the query then matches its document word for word).
    pub keep_sentence: bool,
    /// The same seed samples the same documents and words.
    pub seed: u64,
}

impl Default for PseudoQuerySettings {
    fn default() -> PseudoQuerySettings {
        PseudoQuerySettings { count: 300, words: 12, keep_sentence: false, seed: 0 }
    }
}

/// Pseudo-queries with their judgments, and the documents to index in place of their sources.
#[derive(Debug, Clone)]
pub struct PseudoQueries {
    pub queries: Vec<JudgedQuery>,
    pub qrels: Qrels,
    /// Each source document without its query's sentence (none when the sentence is kept).
    pub replacements: Vec<Document>,
    pub sources: PseudoQuerySources,
}

/// Samples documents of `collection` (those its model left out of training, if it lists any)
/// and makes one query of each that has a sentence of at least `settings.words` words and
/// keeps as many words without the query.
pub fn pseudo_queries(
    collection: &Collection,
    settings: &PseudoQuerySettings,
) -> Result<PseudoQueries, SearchError> {
    let searcher = collection.searcher();
    let (mut ids, sources) = source_documents(collection, &searcher)?;
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    ids.shuffle(&mut rng);
    let words = settings.words.max(1);
    let (mut queries, mut qrels, mut replacements) = (Vec::new(), Qrels::default(), Vec::new());
    for id in ids {
        if queries.len() == settings.count {
            break;
        }
        let Some(address) = collection.address(&searcher, &id)? else {
            continue;
        };
        let document = collection.stored_document(&searcher, address)?;
        let sentences: Vec<&str> = document
            .text
            .split_inclusive(['.', '?', '!', '\n'])
            .filter(|sentence| sentence.split_whitespace().count() >= words)
            .collect();
        if sentences.is_empty() {
            continue;
        }
        let sentence = sentences[rng.random_range(0..sentences.len())];
        let sentence_words: Vec<&str> = sentence.split_whitespace().collect();
        let start = rng.random_range(0..=sentence_words.len() - words);
        if !settings.keep_sentence {
            // Without its sentence, or where that leaves too little (a one-sentence abstract),
            // without the query's words.
            let mut text = document.text.replacen(sentence, " ", 1);
            if text.split_whitespace().count() < words {
                let rest = [&sentence_words[..start], &sentence_words[start + words..]].concat();
                text = document.text.replacen(sentence, &format!("{} ", rest.join(" ")), 1);
            }
            if text.split_whitespace().count() < words {
                continue;
            }
            replacements.push(Document { text, ..document });
        }
        let query_id = format!("pseudo-{}", queries.len() + 1);
        let text = sentence_words[start..start + words].join(" ");
        queries.push(JudgedQuery { id: query_id.clone(), text, vector: None });
        qrels.insert(&query_id, &id, 1);
    }
    Ok(PseudoQueries { queries, qrels, replacements, sources })
}

/// The ids of the documents to make queries of: those the collection's model lists as left out
/// of its training, or, where it lists none of them, all.
fn source_documents(
    collection: &Collection,
    searcher: &tantivy::Searcher,
) -> Result<(Vec<String>, PseudoQuerySources), SearchError> {
    let ids = collection.document_ids()?;
    let encoder = if collection.has_model() { Some(collection.encoder()?) } else { None };
    let Some(held_out) = encoder.and_then(|encoder| encoder.held_out()) else {
        return Ok((ids, PseudoQuerySources::AnyDocument));
    };
    let mut unseen = Vec::new();
    for id in &ids {
        if !held_out.lists(id) {
            continue;
        }
        if let Some(address) = collection.address(searcher, id)? {
            let text = collection.stored_document(searcher, address)?.searchable_text();
            if held_out.contains(id, &text) {
                unseen.push(id.clone());
            }
        }
    }
    if unseen.is_empty() {
        Ok((ids, PseudoQuerySources::AnyDocument))
    } else {
        Ok((unseen, PseudoQuerySources::HeldOut))
    }
}

/// [`tune`] on pseudo-queries of `collection` (in `data_dir`), on a passing copy of it where
/// each source document is replaced by its version without the query's sentence. Returns the
/// tuning (its `queries` says how many it made). `on_query` is called as [`tune`] calls it.
pub fn tune_without_judgments(
    data_dir: &DataDir,
    collection: &Collection,
    settings: &PseudoQuerySettings,
    options: &TuneOptions,
    on_query: impl FnMut(),
) -> Result<Tuning, SearchError> {
    for (param, value) in
        [("pseudo_queries", settings.count), ("pseudo_query_words", settings.words)]
    {
        if value == 0 {
            return Err(SearchError::InvalidTuning { param, message: "must be at least 1".into() });
        }
    }
    // Queries are embedded, and replaced documents too: only a model can.
    collection.encoder()?;
    let made = pseudo_queries(collection, settings)?;
    if made.queries.is_empty() {
        return Err(SearchError::InvalidTuning {
            param: "pseudo_queries",
            message: format!(
                "no document of \"{}\" has a sentence of {} words, and as many besides, to make \
                 a query of",
                collection.name(),
                settings.words
            ),
        });
    }
    let sources = made.sources;
    // Unless asked, pseudo-queries leave the expansion weight alone (see
    // `TuneOptions::expansion_weights`).
    let options = &TuneOptions {
        expansion_weights: Some(options.expansion_weights.clone().unwrap_or_default()),
        ..options.clone()
    };
    let tuned = if made.replacements.is_empty() {
        tune(collection, &made.queries, &made.qrels, options, on_query)?
    } else {
        let scratch = data_dir.scratch(collection.name())?;
        let snapshot = scratch.path().join("snapshot");
        data_dir.snapshot_into(collection.name(), &snapshot)?;
        let mut copy = DataDir::new(scratch.path().join("data")).restore(
            collection.name(),
            &snapshot,
            false,
        )?;
        if collection.has_model() {
            copy.use_encoder(collection.shared_encoder()?)?;
        }
        // In a collection that expands its documents, this also expands again the documents the
        // replaced ones lend their text to, which would otherwise still hold the query's
        // sentence and lead keyword search to them instead.
        copy.ingest(made.replacements.into_iter().map(Ok::<_, cloze_index::IndexError>), |_| {})?;
        tune(&copy, &made.queries, &made.qrels, options, on_query)?
    };
    Ok(Tuning { pseudo_query_sources: Some(sources), ..tuned })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXTS: [&str; 4] = [
        "Proteins fold inside cells. Cells divide many times a day and their proteins with them.",
        "Short.",
        "A study of membrane proteins in plant cells under stress. It found little.",
        "The cell wall of plants holds no protein worth the name, said the author.",
    ];

    fn collection(dir: &std::path::Path) -> Collection {
        let documents: Vec<(String, String)> =
            (0..TEXTS.len()).map(|i| (format!("d{i}"), format!("Title {i}"))).collect();
        let documents: Vec<(&str, &str, &str)> = documents
            .iter()
            .zip(TEXTS)
            .map(|((id, title), text)| (id.as_str(), title.as_str(), text))
            .collect();
        crate::keyword::tests::collection(dir, &documents)
    }

    #[test]
    fn each_query_is_a_run_of_one_sentence_and_its_document_loses_it() {
        let dir = tempfile::tempdir().unwrap();
        let collection = collection(dir.path());
        let settings = PseudoQuerySettings { count: 10, words: 6, ..Default::default() };
        let made = pseudo_queries(&collection, &settings).unwrap();
        // "Short." and the 5-word sentences make no query; every other document makes one.
        assert_eq!(made.queries.len(), 3);
        assert_eq!(made.qrels.num_queries(), 3);
        for (query, replaced) in made.queries.iter().zip(&made.replacements) {
            let judged = made.qrels.judgments(&query.id).unwrap();
            assert_eq!(judged.keys().collect::<Vec<_>>(), [&replaced.id]);
            let source = TEXTS[replaced.id[1..].parse::<usize>().unwrap()];
            assert_eq!(query.text.split_whitespace().count(), 6);
            assert!(source.contains(&query.text), "{query:?}");
            assert!(!replaced.text.contains(&query.text), "{replaced:?}");
            assert!(replaced.text.len() < source.len() && replaced.title.starts_with("Title"));
            // A document of one sentence keeps the rest of it.
            assert!(replaced.text.split_whitespace().count() >= 6, "{replaced:?}");
        }
        // The same seed, the same queries; another seed samples differently.
        let again = pseudo_queries(&collection, &settings).unwrap();
        assert_eq!(again.queries, made.queries);
        let other = pseudo_queries(&collection, &PseudoQuerySettings { seed: 9, ..settings });
        assert_ne!(other.unwrap().queries, made.queries);
        // A count caps them; kept sentences replace no document.
        let kept = PseudoQuerySettings { count: 2, keep_sentence: true, ..settings };
        let made = pseudo_queries(&collection, &kept).unwrap();
        assert_eq!((made.queries.len(), made.replacements.len()), (2, 0));
    }
}
