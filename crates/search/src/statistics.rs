//! BM25's collection statistics, gathered from several partitions and summed.
//!
//! BM25 weighs a term by how many documents hold it among how many there are, and normalises by
//! the average document length. A partition that ranks with its own figures ranks differently
//! from one index holding every document; given the sums over all partitions, it ranks exactly
//! as that index would (Elasticsearch's `dfs_query_then_fetch`).

use std::collections::BTreeMap;

use cloze_index::{analyze, Collection};
use serde::{Deserialize, Serialize};
use tantivy::query::Bm25StatisticsProvider;
use tantivy::schema::Field;
use tantivy::{Searcher, Term};

use crate::SearchError;

/// What BM25 needs to know about a collection to score one query's terms, counting its live
/// documents only (see [`Collection::live_body_tokens`]): replicas holding the same documents
/// give the same figures, whatever their history of commits and merges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeywordStatistics {
    /// Live documents.
    pub documents: u64,
    /// Tokens of the searched body field, over the live documents.
    pub tokens: u64,
    /// For each analysed query term, how many live documents hold it.
    pub document_frequencies: BTreeMap<String, u64>,
}

impl KeywordStatistics {
    /// The figures of `collection` for the terms of `query`, as its analyzer produces them.
    pub fn of(collection: &Collection, query: &str) -> Result<KeywordStatistics, SearchError> {
        let searcher = collection.searcher();
        let body = collection.fields().body;
        let mut statistics = KeywordStatistics {
            documents: searcher.num_docs(),
            tokens: collection.live_body_tokens(&searcher)?,
            document_frequencies: BTreeMap::new(),
        };
        for term in analyze(&mut collection.analyzer(), query) {
            let frequency =
                collection.live_doc_freq(&searcher, &Term::from_field_text(body, &term))?;
            statistics.document_frequencies.insert(term, frequency);
        }
        Ok(statistics)
    }

    /// Adds another partition's figures to these.
    pub fn add(&mut self, other: &KeywordStatistics) {
        self.documents += other.documents;
        self.tokens += other.tokens;
        for (term, frequency) in &other.document_frequencies {
            *self.document_frequencies.entry(term.clone()).or_default() += frequency;
        }
    }

    /// Each figure the larger of these and `other`'s.
    fn at_least(&self, other: &KeywordStatistics) -> KeywordStatistics {
        let mut larger = self.clone();
        larger.documents = larger.documents.max(other.documents);
        larger.tokens = larger.tokens.max(other.tokens);
        for (term, frequency) in &other.document_frequencies {
            let mine = larger.document_frequencies.entry(term.clone()).or_default();
            *mine = (*mine).max(*frequency);
        }
        larger
    }
}

/// Scores with given statistics for the body field and the searcher's own for anything else.
///
/// The given figures were gathered a moment before this partition ranks, and writes applied
/// since may have added documents here: each figure is therefore never taken below this
/// partition's own, which keeps BM25 defined (tantivy divides by the document count and requires
/// a term's document frequency not to exceed it). Once writes settle, the sums over every
/// partition are at least any one partition's figures, and the given ones are used as they are.
pub(crate) struct GivenStatistics<'a> {
    statistics: KeywordStatistics,
    body: Field,
    searcher: &'a Searcher,
}

impl<'a> GivenStatistics<'a> {
    pub fn new(
        given: &KeywordStatistics,
        collection: &Collection,
        query: &str,
        searcher: &'a Searcher,
    ) -> Result<GivenStatistics<'a>, SearchError> {
        let own = KeywordStatistics::of(collection, query)?;
        Ok(GivenStatistics {
            statistics: given.at_least(&own),
            body: collection.fields().body,
            searcher,
        })
    }
}

impl Bm25StatisticsProvider for GivenStatistics<'_> {
    fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
        if field == self.body {
            Ok(self.statistics.tokens)
        } else {
            self.searcher.total_num_tokens(field)
        }
    }

    fn total_num_docs(&self) -> tantivy::Result<u64> {
        Ok(self.statistics.documents)
    }

    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        let given = match term.value().as_str() {
            Some(text) if term.field() == self.body => {
                self.statistics.document_frequencies.get(text).copied()
            }
            _ => None,
        };
        let frequency = match given {
            Some(frequency) => frequency,
            None => self.searcher.doc_freq(term)?,
        };
        Ok(frequency.min(self.statistics.documents))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use cloze_corpus::Document;
    use cloze_index::{AnalyzerSettings, Change, Collection, DataDir, IndexError};
    use tantivy::query::Bm25StatisticsProvider;
    use tantivy::Term;

    use super::KeywordStatistics;
    use crate::{search, Mode, SearchRequest};

    const TEXTS: [&str; 8] = [
        "Proteins fold inside cells.",
        "Cells divide, and their proteins with them, many times a day.",
        "A study of membrane proteins.",
        "Nothing about the topic at all.",
        "Cells, cells and more cells in one long sentence about tissue.",
        "Protein structure prediction.",
        "Short.",
        "The cell wall of plants holds no protein worth the name.",
    ];

    fn collection(dir: &Path, name: &str, keep: impl Fn(usize) -> bool) -> Collection {
        let mut collection =
            DataDir::new(dir).create(name, AnalyzerSettings::default(), None).unwrap();
        let documents = TEXTS.iter().enumerate().filter(|(i, _)| keep(*i)).map(|(i, text)| {
            Ok::<_, IndexError>(Document {
                id: i.to_string(),
                title: String::new(),
                text: text.to_string(),
                metadata: Default::default(),
                vector: None,
            })
        });
        collection.ingest(documents, |_| {}).unwrap();
        collection
    }

    fn scores(
        collection: &Collection,
        statistics: Option<KeywordStatistics>,
    ) -> Vec<(String, f32)> {
        let mut request = SearchRequest::new("protein cells", Mode::Keyword, 10);
        request.statistics = statistics.map(Arc::new);
        search(collection, &request).unwrap().hits.into_iter().map(|h| (h.id, h.score)).collect()
    }

    #[test]
    fn partitions_given_the_summed_statistics_score_as_one_collection() {
        let dir = tempfile::tempdir().unwrap();
        let whole = collection(dir.path(), "whole", |_| true);
        let even = collection(dir.path(), "even", |i| i % 2 == 0);
        let odd = collection(dir.path(), "odd", |i| i % 2 == 1);
        let mut summed = KeywordStatistics::of(&even, "protein cells").unwrap();
        summed.add(&KeywordStatistics::of(&odd, "protein cells").unwrap());
        assert_eq!(summed, KeywordStatistics::of(&whole, "protein cells").unwrap());

        let expected = scores(&whole, None);
        let mut merged = scores(&even, Some(summed.clone()));
        merged.extend(scores(&odd, Some(summed)));
        merged.sort_by(|a, b| b.1.total_cmp(&a.1));
        assert_eq!(merged.len(), expected.len());
        for ((id, score), (expected_id, expected_score)) in merged.iter().zip(&expected) {
            assert_eq!(id, expected_id);
            assert!((score - expected_score).abs() < 1e-6, "{merged:?} vs {expected:?}");
        }
        // On its own, a partition scores differently: the sums are what make them agree.
        assert_ne!(
            scores(&even, None),
            merged
                .iter()
                .filter(|(id, _)| id.parse::<usize>().unwrap() % 2 == 0)
                .cloned()
                .collect::<Vec<_>>()
        );
    }

    fn document(id: usize, text: &str) -> Result<Change, IndexError> {
        Ok(Change::Upsert(Document {
            id: id.to_string(),
            title: String::new(),
            text: text.to_string(),
            metadata: Default::default(),
            vector: None,
        }))
    }

    #[test]
    fn statistics_depend_on_the_live_documents_not_on_the_history() {
        // One collection rewritten in many commits (deleted versions linger, segments merge),
        // one written once with what the first holds in the end.
        let dir = tempfile::tempdir().unwrap();
        let mut rewritten = collection(dir.path(), "rewritten", |_| true);
        let mut last: Vec<Option<String>> = TEXTS.iter().map(|t| Some(t.to_string())).collect();
        for round in 0..12 {
            let (id, text) = (
                round % TEXTS.len(),
                format!("{} again, round {round}", TEXTS[(round + 3) % TEXTS.len()]),
            );
            rewritten.apply([document(id, &text)], |_| {}).unwrap();
            last[id] = Some(text);
        }
        rewritten.apply([Ok::<_, IndexError>(Change::Delete("3".into()))], |_| {}).unwrap();
        last[3] = None;
        assert!(rewritten.searcher().segment_readers().iter().any(|s| s.num_deleted_docs() > 0));
        let mut once =
            DataDir::new(dir.path()).create("once", AnalyzerSettings::default(), None).unwrap();
        let live: Vec<_> = last
            .iter()
            .enumerate()
            .filter_map(|(id, text)| Some(document(id, text.as_ref()?)))
            .collect();
        once.ingest(
            live.into_iter().map(|c| match c.unwrap() {
                Change::Upsert(d) => Ok::<_, IndexError>(d),
                Change::Delete(_) => unreachable!(),
            }),
            |_| {},
        )
        .unwrap();

        let query = "protein cells again";
        let figures = KeywordStatistics::of(&rewritten, query).unwrap();
        assert_eq!(figures, KeywordStatistics::of(&once, query).unwrap());
        // Written once, the figures are tantivy's own.
        let searcher = once.searcher();
        let body = once.fields().body;
        assert_eq!(figures.documents, searcher.total_num_docs().unwrap());
        assert_eq!(figures.tokens, searcher.total_num_tokens(body).unwrap());
        for (term, frequency) in &figures.document_frequencies {
            assert_eq!(
                *frequency,
                searcher.doc_freq(&Term::from_field_text(body, term)).unwrap(),
                "{term}"
            );
        }
        // And a partition given them ranks as if it had never been rewritten.
        let mut request = SearchRequest::new(query, Mode::Keyword, 10);
        request.statistics = Some(Arc::new(figures));
        // Tied documents come in the order of their segments, which differs: ties by id.
        let by_score_then_id = |mut hits: Vec<(String, f32)>| {
            hits.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            hits
        };
        let ranked = |c: &Collection| -> Vec<(String, f32)> {
            by_score_then_id(
                search(c, &request).unwrap().hits.into_iter().map(|h| (h.id, h.score)).collect(),
            )
        };
        assert_eq!(ranked(&rewritten), ranked(&once));
        let unaided = SearchRequest::new(query, Mode::Keyword, 10);
        let own = by_score_then_id(
            search(&once, &unaided).unwrap().hits.into_iter().map(|h| (h.id, h.score)).collect(),
        );
        assert_eq!(ranked(&once), own);
    }

    #[test]
    fn statistics_older_than_the_partitions_writes_still_score() {
        // Gathered while the collection was empty, used once documents arrived.
        let dir = tempfile::tempdir().unwrap();
        let partition = collection(dir.path(), "p", |_| true);
        let stale = KeywordStatistics::default();
        let scored = scores(&partition, Some(stale));
        assert!(!scored.is_empty());
        assert!(scored.iter().all(|(_, score)| score.is_finite() && *score > 0.0), "{scored:?}");
        assert_eq!(scored, scores(&partition, None));
    }
}
