//! BM25 keyword ranking through tantivy.

use std::collections::BTreeMap;

use cloze_index::{analyze, Collection};
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::IndexRecordOption;
use tantivy::snippet::SnippetGenerator;
use tantivy::{DocAddress, Searcher, Term};

use crate::{Hit, SearchError, SearchRequest};

/// The longest snippet, in characters.
const SNIPPET_CHARS: usize = 200;

pub(crate) fn search(
    collection: &Collection,
    request: &SearchRequest,
) -> Result<Vec<Hit>, SearchError> {
    let tantivy_error =
        |source| SearchError::Tantivy { collection: collection.name().to_string(), source };
    let terms = analyze(&mut collection.analyzer(), &request.query);
    if terms.is_empty() || request.limit == 0 {
        return Ok(Vec::new());
    }
    let body = collection.fields().body;
    // Every query term is an optional clause, repeats included, so a term said twice weighs
    // twice: Elasticsearch's `match` query.
    let clauses: Vec<(Occur, Box<dyn Query>)> = terms
        .iter()
        .map(|term| {
            let query =
                TermQuery::new(Term::from_field_text(body, term), IndexRecordOption::WithFreqs);
            (Occur::Should, Box::new(query) as Box<dyn Query>)
        })
        .collect();
    let searcher = collection.searcher();
    let collector = TopDocs::with_limit(request.limit).and_offset(request.offset).order_by_score();
    let top = searcher.search(&BooleanQuery::new(clauses), &collector).map_err(tantivy_error)?;
    let addresses: Vec<_> = top.iter().map(|(_, address)| *address).collect();
    let ids = collection.ids(&searcher, &addresses)?;
    let mut hits: Vec<Hit> = top
        .iter()
        .zip(ids)
        .map(|((score, _), id)| Hit {
            id,
            score: *score,
            title: None,
            snippet: None,
            explanation: None,
        })
        .collect();
    if request.with_documents {
        fill_documents(collection, &searcher, &mut hits, &addresses, &terms)?;
    }
    Ok(hits)
}

/// Gives each hit its title and the passage of its text that best matches the query terms
/// (the text's start if none does).
pub(crate) fn fill_documents(
    collection: &Collection,
    searcher: &Searcher,
    hits: &mut [Hit],
    addresses: &[DocAddress],
    terms: &[String],
) -> Result<(), SearchError> {
    let snippets = snippet_generator(collection, searcher, terms).map_err(|source| {
        SearchError::Tantivy { collection: collection.name().to_string(), source }
    })?;
    for (hit, address) in hits.iter_mut().zip(addresses) {
        let document = collection.stored_document(searcher, *address)?;
        let snippet = snippets.snippet(&document.text);
        let snippet = if snippet.is_empty() {
            document.text.chars().take(SNIPPET_CHARS).collect()
        } else {
            snippet.fragment().to_string()
        };
        hit.title = Some(document.title);
        hit.snippet = Some(snippet);
    }
    Ok(())
}

/// Picks the passage with the most (and rarest) query terms, analysing the stored text with the
/// collection's analyzer so the terms meet.
fn snippet_generator(
    collection: &Collection,
    searcher: &Searcher,
    terms: &[String],
) -> tantivy::Result<SnippetGenerator> {
    let body = collection.fields().body;
    let mut weights = BTreeMap::new();
    for term in terms {
        let doc_freq = searcher.doc_freq(&Term::from_field_text(body, term))?;
        if doc_freq > 0 {
            weights.insert(term.clone(), 1.0 / (1.0 + doc_freq as f32));
        }
    }
    Ok(SnippetGenerator::new(
        weights,
        collection.analyzer(),
        collection.fields().text,
        SNIPPET_CHARS,
    ))
}

#[cfg(test)]
mod tests {
    use cloze_corpus::Document;
    use cloze_index::{AnalyzerSettings, DataDir, IndexError};

    use crate::{search, Mode, SearchRequest};

    fn collection(dir: &std::path::Path, docs: &[(&str, &str, &str)]) -> cloze_index::Collection {
        let mut collection =
            DataDir::new(dir).create("test", AnalyzerSettings::default(), None).unwrap();
        let documents = docs.iter().map(|(id, title, text)| {
            Ok::<_, IndexError>(Document {
                id: id.to_string(),
                title: title.to_string(),
                text: text.to_string(),
                metadata: Default::default(),
            })
        });
        collection.ingest(documents, || {}).unwrap();
        collection
    }

    #[test]
    fn ranks_by_bm25_over_title_and_text_with_stemming() {
        let dir = tempfile::tempdir().unwrap();
        let collection = collection(
            dir.path(),
            &[
                ("1", "Cats", "A long story about many different animals, dogs among them."),
                ("2", "Dogs running", "Dogs run in the park."),
                ("3", "Birds", "Nothing relevant here."),
            ],
        );
        let hits =
            search(&collection, &SearchRequest::new("running dog", Mode::Keyword, 10)).unwrap();
        let ids: Vec<&str> = hits.iter().map(|hit| hit.id.as_str()).collect();
        assert_eq!(ids, ["2", "1"]);
        assert!(hits[0].score > hits[1].score);
        assert_eq!(hits[0].title.as_deref(), Some("Dogs running"));
        assert_eq!(hits[0].snippet.as_deref(), Some("Dogs run in the park"));

        let mut second_page = SearchRequest::new("running dog", Mode::Keyword, 1);
        second_page.offset = 1;
        second_page.with_documents = false;
        let hits = search(&collection, &second_page).unwrap();
        assert_eq!((hits.len(), hits[0].id.as_str(), hits[0].title.as_ref()), (1, "1", None));
    }

    #[test]
    fn a_query_without_terms_has_no_hits() {
        let dir = tempfile::tempdir().unwrap();
        let collection = collection(dir.path(), &[("1", "The", "the a an")]);
        for query in ["", "   ", "the of and", "?!"] {
            assert!(search(&collection, &SearchRequest::new(query, Mode::Keyword, 10))
                .unwrap()
                .is_empty());
        }
        let empty =
            DataDir::new(dir.path()).create("empty", AnalyzerSettings::default(), None).unwrap();
        assert!(search(&empty, &SearchRequest::new("dog", Mode::Keyword, 10)).unwrap().is_empty());
    }

    #[test]
    fn query_syntax_characters_are_plain_text() {
        let dir = tempfile::tempdir().unwrap();
        let collection = collection(dir.path(), &[("1", "", "vitamin d deficiency")]);
        let hits = search(
            &collection,
            &SearchRequest::new("\"vitamin:(d) -deficiency\" AND [", Mode::Keyword, 10),
        )
        .unwrap();
        assert_eq!(hits.len(), 1);
    }
}
