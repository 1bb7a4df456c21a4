//! BM25 keyword ranking through tantivy.

use std::collections::BTreeMap;
use std::time::Instant;

use cloze_index::{analyze, Collection, ExpansionSettings, IndexError};
use tantivy::collector::{Count, TopDocs};
use tantivy::query::{BooleanQuery, BoostQuery, ConstScoreQuery, Occur, Query, TermQuery};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::snippet::SnippetGenerator;
use tantivy::{DocAddress, Searcher, Term};

use crate::statistics::GivenStatistics;
use crate::{Explanation, Hit, Results, SearchError, SearchRequest, SideScore, Timings};

/// The longest snippet, in characters.
const SNIPPET_CHARS: usize = 200;

/// The expansion field of `collection` and the weight `request` scores it at; None for a
/// collection that does not expand its documents, which refuses a weight.
fn expansion_weight(
    collection: &Collection,
    request: &SearchRequest,
) -> Result<Option<(Field, f64)>, SearchError> {
    match (collection.expansion(), request.expansion_weight) {
        (Some((field, settings)), asked) => {
            let weight = asked.unwrap_or(settings.weight);
            ExpansionSettings::check_weight(weight).map_err(SearchError::InvalidExpansionWeight)?;
            Ok(Some((field, weight)))
        }
        (None, Some(_)) => Err(IndexError::NotExpanding(collection.name().to_string()).into()),
        (None, None) => Ok(None),
    }
}

pub(crate) fn search(
    collection: &Collection,
    request: &SearchRequest,
) -> Result<Results, SearchError> {
    let tantivy_error =
        |source| SearchError::Tantivy { collection: collection.name().to_string(), source };
    let started = Instant::now();
    // Checked first, so that a weight that cannot be used is refused whatever the query.
    let expansion = expansion_weight(collection, request)?;
    let terms = analyze(&mut collection.analyzer(), &request.query);
    if terms.is_empty() {
        return Ok(Results { hits: Vec::new(), total: 0, timings: Timings::default() });
    }
    let body = collection.fields().body;
    let term_query = |field, term: &str| -> Box<dyn Query> {
        Box::new(TermQuery::new(Term::from_field_text(field, term), IndexRecordOption::WithFreqs))
    };
    // Every query term is an optional clause, repeats included, so a term said twice weighs
    // twice: Elasticsearch's `match` query.
    let mut clauses: Vec<(Occur, Box<dyn Query>)> =
        terms.iter().map(|term| (Occur::Should, term_query(body, term))).collect();
    // In an expanding collection, a term also matches the text of a document's neighbours, at
    // its lower weight: the scores add up as BM25F-like fields do in Elasticsearch's
    // `multi_match` of type `most_fields`. At weight 0 the field is left out, so that a
    // document its neighbours alone match is no hit at all.
    if let Some((expansion, weight)) = expansion {
        if weight > 0.0 {
            clauses.extend(terms.iter().map(|term| {
                let boosted = BoostQuery::new(term_query(expansion, term), weight as f32);
                (Occur::Should, Box::new(boosted) as Box<dyn Query>)
            }));
        }
    }
    let mut query: Box<dyn Query> = Box::new(BooleanQuery::new(clauses));
    if let Some(filter) = &request.filter {
        // The filter decides which documents count, not how they rank.
        let filter = Box::new(ConstScoreQuery::new(filter.query(collection), 0.0));
        query = Box::new(BooleanQuery::new(vec![(Occur::Must, query), (Occur::Must, filter)]));
    }
    let searcher = collection.searcher();
    let top = TopDocs::with_limit(request.limit.max(1)).and_offset(request.offset).order_by_score();
    let collector = (top, Count);
    let (top, total) = match &request.statistics {
        Some(statistics) => {
            let given = GivenStatistics::new(statistics, collection, &request.query, &searcher)?;
            searcher.search_with_statistics_provider(query.as_ref(), &collector, &given)
        }
        None => searcher.search(query.as_ref(), &collector),
    }
    .map_err(tantivy_error)?;
    let top = &top[..top.len().min(request.limit)];
    let addresses: Vec<_> = top.iter().map(|(_, address)| *address).collect();
    let ids = collection.ids(&searcher, &addresses)?;
    let mut hits: Vec<Hit> = top
        .iter()
        .zip(ids)
        .enumerate()
        .map(|(i, ((score, _), id))| {
            let mut hit = Hit::ranked(id, *score);
            let side = SideScore { rank: request.offset + i + 1, score: *score };
            hit.explanation =
                Some(Explanation { keyword: Some(side), semantic: None, fused: *score });
            hit
        })
        .collect();
    let mut timings = Timings { keyword: started.elapsed(), ..Timings::default() };
    if request.with_documents {
        let started = Instant::now();
        fill_documents(collection, &searcher, &mut hits, &addresses, &terms, request.highlight)?;
        timings.documents = started.elapsed();
    }
    Ok(Results { hits, total, timings })
}

/// Gives each hit its title, metadata and the passage of its text that best matches the query
/// terms (the text's start if none does), and with `highlight` that passage as HTML with the
/// terms marked.
pub(crate) fn fill_documents(
    collection: &Collection,
    searcher: &Searcher,
    hits: &mut [Hit],
    addresses: &[DocAddress],
    terms: &[String],
    highlight: bool,
) -> Result<(), SearchError> {
    let snippets = snippet_generator(collection, searcher, terms).map_err(|source| {
        SearchError::Tantivy { collection: collection.name().to_string(), source }
    })?;
    for (hit, address) in hits.iter_mut().zip(addresses) {
        let document = collection.stored_document(searcher, *address)?;
        let mut snippet = snippets.snippet(&document.text);
        let (plain, html) = if snippet.is_empty() {
            let start: String = document.text.chars().take(SNIPPET_CHARS).collect();
            let html = escape_html(&start);
            (start, html)
        } else {
            snippet.set_snippet_prefix_postfix("<em>", "</em>");
            (snippet.fragment().to_string(), snippet.to_html())
        };
        hit.title = Some(document.title);
        hit.snippet = Some(plain);
        hit.highlight = highlight.then_some(html);
        hit.metadata = (!document.metadata.is_empty()).then_some(document.metadata);
    }
    Ok(())
}

/// Text made safe to place in HTML, as tantivy escapes the text around highlighted terms.
fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#x27;"),
            c => escaped.push(c),
        }
    }
    escaped
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
pub(crate) mod tests {
    use cloze_corpus::Document;
    use cloze_index::{AnalyzerSettings, DataDir, ExpansionSettings, IndexError, SemanticSettings};

    use serde_json::json;

    use crate::{search, Filter, Mode, SearchRequest};

    /// A keyword-only collection `test` of (id, title, text) documents.
    pub(crate) fn collection(
        dir: &std::path::Path,
        docs: &[(&str, &str, &str)],
    ) -> cloze_index::Collection {
        let mut collection =
            DataDir::new(dir).create("test", AnalyzerSettings::default(), None).unwrap();
        let documents = docs
            .iter()
            .map(|(id, title, text)| Ok::<_, IndexError>(document(id, title, text, None)));
        collection.ingest(documents, |_| {}).unwrap();
        collection
    }

    /// A document with no metadata.
    pub(crate) fn document(id: &str, title: &str, text: &str, vector: Option<&[f32]>) -> Document {
        Document {
            id: id.to_string(),
            title: title.to_string(),
            text: text.to_string(),
            metadata: Default::default(),
            vector: vector.map(<[f32]>::to_vec),
        }
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
        let hits = search(&collection, &SearchRequest::new("running dog", Mode::Keyword, 10))
            .unwrap()
            .hits;
        let ids: Vec<&str> = hits.iter().map(|hit| hit.id.as_str()).collect();
        assert_eq!(ids, ["2", "1"]);
        assert!(hits[0].score > hits[1].score);
        assert_eq!(hits[0].title.as_deref(), Some("Dogs running"));
        assert_eq!(hits[0].snippet.as_deref(), Some("Dogs run in the park"));

        let mut second_page = SearchRequest::new("running dog", Mode::Keyword, 1);
        second_page.offset = 1;
        second_page.with_documents = false;
        let hits = search(&collection, &second_page).unwrap().hits;
        assert_eq!((hits.len(), hits[0].id.as_str(), hits[0].title.as_ref()), (1, "1", None));
    }

    #[test]
    fn filters_count_and_highlight() {
        let dir = tempfile::tempdir().unwrap();
        let mut collection =
            DataDir::new(dir.path()).create("test", AnalyzerSettings::default(), None).unwrap();
        let metadata = [
            json!({"year": 1999, "lang": "en", "tags": ["bio", "med"], "open": true}),
            json!({"year": 2005, "lang": "en", "tags": ["med"], "open": false}),
            json!({"year": 2012.5, "lang": "fr", "nested": {"score": -3}}),
            json!({}),
        ];
        let documents = metadata.iter().enumerate().map(|(i, metadata)| {
            Ok::<_, IndexError>(Document {
                id: format!("d{i}"),
                title: String::new(),
                text: format!("dogs & cats <{i}> dogs"),
                metadata: metadata.as_object().unwrap().clone(),
                vector: None,
            })
        });
        collection.ingest(documents, |_| {}).unwrap();
        let found = |filter: serde_json::Value| {
            let mut request = SearchRequest::new("dogs", Mode::Keyword, 10);
            request.filter = Some(Filter::from_json(&filter).unwrap());
            let results = search(&collection, &request).unwrap();
            let mut ids: Vec<String> = results.hits.into_iter().map(|hit| hit.id).collect();
            ids.sort();
            assert_eq!(ids.len(), results.total);
            ids
        };
        assert_eq!(found(json!({"lang": "en"})), ["d0", "d1"]);
        assert_eq!(found(json!({"lang": ["fr", "de"]})), ["d2"]);
        assert_eq!(found(json!({"tags": "med"})), ["d0", "d1"]);
        assert_eq!(found(json!({"year": 2005})), ["d1"]);
        assert_eq!(found(json!({"year": {"gt": 1999, "lte": 2012.5}})), ["d1", "d2"]);
        assert_eq!(found(json!({"year": {"lt": 2005}, "lang": "en"})), ["d0"]);
        assert_eq!(found(json!({"open": false})), ["d1"]);
        assert_eq!(found(json!({"nested.score": {"lt": 0}})), ["d2"]);
        assert!(found(json!({"missing": "x"})).is_empty());

        let mut request = SearchRequest::new("dogs", Mode::Keyword, 1);
        request.highlight = true;
        let results = search(&collection, &request).unwrap();
        assert_eq!(results.total, 4);
        let hit = &results.hits[0];
        assert_eq!(
            hit.highlight.as_deref(),
            Some("<em>dogs</em> &amp; cats &lt;0&gt; <em>dogs</em>")
        );
        assert_eq!(hit.snippet.as_deref(), Some("dogs & cats <0> dogs"));
        assert_eq!(hit.metadata.as_ref().unwrap()["lang"], "en");
        let explanation = hit.explanation.as_ref().unwrap();
        assert_eq!(explanation.keyword.unwrap().rank, 1);
        request.limit = 0;
        let counted = search(&collection, &request).unwrap();
        assert_eq!((counted.hits.len(), counted.total), (0, 4));
    }

    /// A collection `test` of (id, text, 2-dimensional vector) documents, each also indexed
    /// with the text of its nearest neighbour at weight 0.5.
    pub(crate) fn expanding_collection(
        dir: &std::path::Path,
        docs: &[(&str, &str, [f32; 2])],
    ) -> cloze_index::Collection {
        let semantic = SemanticSettings {
            expansion: Some(ExpansionSettings { neighbours: 1, weight: 0.5 }),
            ..SemanticSettings::with_dimension(2, Default::default())
        };
        let mut collection =
            DataDir::new(dir).create("test", AnalyzerSettings::default(), Some(semantic)).unwrap();
        let documents = docs
            .iter()
            .map(|(id, text, vector)| Ok::<_, IndexError>(document(id, "", text, Some(vector))));
        collection.ingest(documents, |_| {}).unwrap();
        collection
    }

    #[test]
    fn an_expanding_collection_also_matches_the_words_of_a_documents_neighbours() {
        let dir = tempfile::tempdir().unwrap();
        let collection = expanding_collection(
            dir.path(),
            &[
                ("heart", "myocardial infarction outcomes", [1.0, 0.0]),
                ("attack", "heart attack survival and heart attack care", [0.9, 0.1]),
                ("boats", "sailing boats", [0.0, 1.0]),
                ("ships", "ships in the harbour", [0.1, 0.99]),
            ],
        );
        let hits =
            search(&collection, &SearchRequest::new("heart attack", Mode::Keyword, 10)).unwrap();
        let ids: Vec<&str> = hits.hits.iter().map(|hit| hit.id.as_str()).collect();
        // The paper that never says "heart attack" is found through its neighbour, below it.
        assert_eq!(ids, ["attack", "heart"]);
        assert_eq!(hits.total, 2);
    }

    #[test]
    fn a_search_or_the_collection_can_weigh_the_neighbours_text_anew() {
        let dir = tempfile::tempdir().unwrap();
        let mut collection = expanding_collection(
            dir.path(),
            &[
                ("heart", "myocardial infarction outcomes", [1.0, 0.0]),
                ("attack", "heart attack survival and heart attack care", [0.9, 0.1]),
                ("boats", "sailing boats", [0.0, 1.0]),
            ],
        );
        let scores = |collection: &cloze_index::Collection, weight: Option<f64>| {
            let mut request = SearchRequest::new("heart attack", Mode::Keyword, 10);
            request.expansion_weight = weight;
            let found = search(collection, &request).unwrap();
            let scores: std::collections::BTreeMap<String, f32> =
                found.hits.into_iter().map(|hit| (hit.id, hit.score)).collect();
            assert_eq!(scores.len(), found.total);
            scores
        };
        // The collection's weight, 0.5, unless a search asks for another; "heart" (and "boats",
        // whose nearest is "attack" too) match through the neighbour alone, so their scores
        // follow the weight.
        let own = scores(&collection, None);
        assert_eq!(own, scores(&collection, Some(0.5)));
        let doubled = scores(&collection, Some(1.0));
        assert!((doubled["heart"] - 2.0 * own["heart"]).abs() < 1e-5, "{own:?} {doubled:?}");
        // "attack" lends its words but borrows none that match.
        assert_eq!(doubled["attack"], own["attack"]);
        // At 0 the neighbours' text is left out: no hit from it alone.
        assert_eq!(scores(&collection, Some(0.0)).keys().collect::<Vec<_>>(), ["attack"]);
        assert!((doubled["boats"] - 2.0 * own["boats"]).abs() < 1e-5, "{own:?} {doubled:?}");
        let mut request = SearchRequest::new("heart attack", Mode::Keyword, 10);
        for weight in [-1.0, f64::NAN, 1000.0] {
            request.expansion_weight = Some(weight);
            let error = search(&collection, &request).unwrap_err().to_string();
            assert!(error.starts_with("expansion_weight is "), "{error}");
            // Whatever the query.
            let empty = SearchRequest { query: "the".into(), ..request.clone() };
            assert!(search(&collection, &empty).is_err());
        }

        // A new default is saved with the collection, and only that changes.
        collection.set_expansion_weight(0.0).unwrap();
        let reopened = DataDir::new(dir.path()).open("test").unwrap();
        assert_eq!(
            reopened.expansion().unwrap().1,
            ExpansionSettings { neighbours: 1, weight: 0.0 }
        );
        assert_eq!(scores(&reopened, None), scores(&reopened, Some(0.0)));
        assert_eq!(scores(&reopened, Some(0.5)), own);
        assert!(collection.set_expansion_weight(-2.0).is_err());

        // A collection that does not expand has no weight to change.
        let plain_dir = tempfile::tempdir().unwrap();
        let mut plain = self::collection(plain_dir.path(), &[("1", "", "heart attack")]);
        request.expansion_weight = Some(0.5);
        let error = search(&plain, &request).unwrap_err().to_string();
        assert!(error.contains("does not expand its documents"), "{error}");
        let error = plain.set_expansion_weight(0.5).unwrap_err().to_string();
        assert!(error.contains("does not expand its documents"), "{error}");
    }

    #[test]
    fn a_query_without_terms_has_no_hits() {
        let dir = tempfile::tempdir().unwrap();
        let collection = collection(dir.path(), &[("1", "The", "the a an")]);
        for query in ["", "   ", "the of and", "?!"] {
            assert!(search(&collection, &SearchRequest::new(query, Mode::Keyword, 10))
                .unwrap()
                .hits
                .is_empty());
        }
        let empty =
            DataDir::new(dir.path()).create("empty", AnalyzerSettings::default(), None).unwrap();
        assert!(search(&empty, &SearchRequest::new("dog", Mode::Keyword, 10))
            .unwrap()
            .hits
            .is_empty());
    }

    #[test]
    fn query_syntax_characters_are_plain_text() {
        let dir = tempfile::tempdir().unwrap();
        let collection = collection(dir.path(), &[("1", "", "vitamin d deficiency")]);
        let hits = search(
            &collection,
            &SearchRequest::new("\"vitamin:(d) -deficiency\" AND [", Mode::Keyword, 10),
        )
        .unwrap()
        .hits;
        assert_eq!(hits.len(), 1);
    }
}
