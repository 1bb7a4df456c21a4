//! Collections with a model: vectors beside the keyword index, kept consistent through
//! replacements, deletes, compaction and failures; semantic search over them.

use std::path::PathBuf;

use cloze_corpus::Document;
use cloze_index::{
    AnalyzerSettings, Collection, DataDir, Encoder, HnswSettings, IndexError, SemanticSettings,
};
use cloze_mlm::{HeldOutDocument, HeldOutDocuments};
use cloze_search::{
    candidates, pseudo_queries, search, Feedback, Fusion, FusionMethod, Mode, Normalization,
    PseudoQuerySettings, PseudoQuerySources, SearchRequest,
};
use cloze_tests::small_model;

const WORDS: &[&str] = &[
    "vitamin", "fracture", "protein", "cell", "membrane", "river", "bridge", "engine", "wing",
    "pressure", "library", "catalog", "query", "index", "network", "signal", "noise", "heat",
    "flow", "boundary", "layer", "gene", "mouse", "tumor", "dose",
];

/// Twenty short texts, each a different mix of the words above.
fn texts() -> Vec<String> {
    (0..20)
        .map(|i| (0..6).map(|j| WORDS[(i * 7 + j * j * 3 + j) % WORDS.len()]).collect::<Vec<_>>())
        .map(|words| words.join(" "))
        .collect()
}

fn document(id: &str, text: &str) -> Result<Document, IndexError> {
    Ok(Document {
        id: id.into(),
        title: String::new(),
        text: text.into(),
        metadata: Default::default(),
        vector: None,
    })
}

struct Fixture {
    _dir: tempfile::TempDir,
    data: DataDir,
    model: PathBuf,
}

impl Fixture {
    fn new(max_len: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let corpus = texts();
        let texts: Vec<&str> = corpus.iter().map(String::as_str).collect();
        let model = small_model(&dir.path().join("model"), &texts, max_len, 1);
        Fixture { data: DataDir::new(dir.path().join("data")), model, _dir: dir }
    }

    fn create(&self, name: &str, window_overlap: Option<usize>) -> Collection {
        self.create_windowed(name, window_overlap, None).unwrap()
    }

    fn create_windowed(
        &self,
        name: &str,
        window_overlap: Option<usize>,
        window_length: Option<usize>,
    ) -> Result<Collection, IndexError> {
        let encoder = Encoder::load(&self.model).unwrap();
        let semantic = SemanticSettings {
            model: Some(encoder.record().clone()),
            dimension: None,
            window_overlap,
            window_length,
            hnsw: HnswSettings::default(),
            expansion: None,
        };
        self.data.create(name, AnalyzerSettings::default(), Some(semantic))
    }
}

fn semantic_ids(collection: &Collection, query: &str, limit: usize) -> Vec<String> {
    let hits = search(collection, &SearchRequest::new(query, Mode::Semantic, limit)).unwrap().hits;
    hits.into_iter().map(|hit| hit.id).collect()
}

fn ingest_texts(collection: &mut Collection) {
    let documents: Vec<_> =
        texts().iter().enumerate().map(|(i, text)| document(&format!("d{i}"), text)).collect();
    collection.ingest(documents, |_| {}).unwrap();
}

/// The rule every committed state keeps: a vector for each stored document and none other.
fn assert_consistent(collection: &Collection) {
    assert_eq!(collection.document_ids().unwrap(), collection.vector_document_ids());
}

#[test]
fn each_document_is_found_by_its_own_text_in_both_modes() {
    let fixture = Fixture::new(64);
    let mut collection = fixture.create("docs", None);
    ingest_texts(&mut collection);
    assert_eq!((collection.document_count(), collection.vector_count()), (20, 20));
    for (i, text) in texts().iter().enumerate() {
        let hits = search(&collection, &SearchRequest::new(text, Mode::Semantic, 3)).unwrap().hits;
        assert_eq!(hits[0].id, format!("d{i}"));
        assert!((hits[0].score - 1.0).abs() < 1e-4, "{}", hits[0].score);
        assert_eq!(hits[0].snippet.as_deref().map(|s| !s.is_empty()), Some(true));
    }
    let mut page = SearchRequest::new(&texts()[0], Mode::Semantic, 2);
    page.offset = 1;
    assert_eq!(search(&collection, &page).unwrap().hits.len(), 2);
    assert_eq!(semantic_ids(&collection, &texts()[0], 100).len(), 20);
    assert!(semantic_ids(&collection, "  ", 10).is_empty());
    let keyword = search(&collection, &SearchRequest::new("vitamin", Mode::Keyword, 10)).unwrap();
    assert!(!keyword.hits.is_empty());

    let reopened = fixture.data.open("docs").unwrap();
    assert_eq!(semantic_ids(&reopened, &texts()[5], 1), ["d5"]);
    assert_consistent(&reopened);
}

/// Pseudo-queries are made of the documents the model lists as left out of its training, where
/// it lists any of the collection's; a listed id whose text differs is another document.
#[test]
fn pseudo_queries_come_from_the_documents_the_model_left_out() {
    let fixture = Fixture::new(64);
    let texts = texts();
    let mut listed: Vec<HeldOutDocument> =
        (0..5).map(|i| HeldOutDocument::new(&format!("d{i}"), &texts[i])).collect();
    listed.push(HeldOutDocument::new("d5", "another corpus's d5"));
    HeldOutDocuments::write(&listed, &fixture.model).unwrap();
    let mut collection = fixture.create("docs", None);
    ingest_texts(&mut collection);
    let settings = PseudoQuerySettings { count: 20, words: 3, ..Default::default() };
    let made = pseudo_queries(&collection, &settings).unwrap();
    assert_eq!(made.sources, PseudoQuerySources::HeldOut);
    let mut sources: Vec<&str> = made.replacements.iter().map(|d| d.id.as_str()).collect();
    sources.sort();
    assert_eq!(sources, ["d0", "d1", "d2", "d3", "d4"]);
    assert_eq!(made.queries.len(), 5);

    // A model that lists none of the collection's documents: any document makes a query.
    HeldOutDocuments::write(&[HeldOutDocument::new("d0", "not d0")], &fixture.model).unwrap();
    let made = pseudo_queries(&fixture.data.open("docs").unwrap(), &settings).unwrap();
    assert_eq!((made.sources, made.queries.len()), (PseudoQuerySources::AnyDocument, 20));
}

#[test]
fn reindexing_replaces_vectors_and_delete_removes_from_both_indexes() {
    let fixture = Fixture::new(64);
    let mut collection = fixture.create("docs", None);
    ingest_texts(&mut collection);
    let new_text = "gene mouse tumor dose heat flow";
    collection.ingest([document("d0", new_text)], |_| {}).unwrap();
    assert_eq!((collection.document_count(), collection.vector_count()), (20, 20));
    assert_eq!(semantic_ids(&collection, new_text, 1), ["d0"]);
    assert_ne!(semantic_ids(&collection, &texts()[0], 1), ["d0"]);

    assert_eq!(collection.delete(&["d1", "d2", "d1"]).unwrap(), 2);
    for query in [&texts()[1], &texts()[2]] {
        assert!(!semantic_ids(&collection, query, 20).iter().any(|id| id == "d1" || id == "d2"));
    }
    let keyword = search(&collection, &SearchRequest::new(&texts()[1], Mode::Keyword, 100));
    assert!(!keyword.unwrap().hits.iter().any(|hit| hit.id == "d1"));
    assert_consistent(&collection);

    let error = collection.delete(&["d3", "nope"]).unwrap_err().to_string();
    assert!(error.contains("no document with id nope"), "{error}");
    assert_eq!(collection.document_count(), 18, "a failed delete removed something");
    let reopened = fixture.data.open("docs").unwrap();
    assert_eq!((reopened.document_count(), reopened.vector_count()), (18, 18));
    assert_consistent(&reopened);
}

#[test]
fn replaced_vectors_stay_as_tombstones_until_a_compaction() {
    let fixture = Fixture::new(64);
    let mut collection = fixture.create("docs", None);
    ingest_texts(&mut collection);
    // A write adds a segment and marks the vectors it replaces dead; it rewrites nothing.
    let again: Vec<_> = (0..4).map(|i| document(&format!("d{i}"), &texts()[i])).collect();
    collection.ingest(again, |_| {}).unwrap();
    assert_eq!(collection.segment_count(), 2);
    let summary = collection.compact().unwrap();
    assert_eq!((summary.removed, summary.vector_count), (4, 20));
    assert_eq!(collection.segment_count(), 1);
    let again: Vec<_> = (0..10).map(|i| document(&format!("d{i}"), &texts()[i])).collect();
    collection.ingest(again, |_| {}).unwrap();
    assert_eq!(collection.compact().unwrap().removed, 10);
    assert_eq!(collection.compact().unwrap().removed, 0);
    for (i, text) in texts().iter().enumerate() {
        assert_eq!(semantic_ids(&collection, text, 1), [format!("d{i}")]);
    }
    assert_consistent(&fixture.data.open("docs").unwrap());
}

#[test]
fn a_failed_ingest_changes_neither_index() {
    let fixture = Fixture::new(64);
    let mut collection = fixture.create("docs", None);
    ingest_texts(&mut collection);
    let vector_files = || {
        let mut names: Vec<_> = std::fs::read_dir(collection_dir(&fixture, "docs").join("vectors"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    let before = vector_files();
    let bad: IndexError = cloze_corpus::read_queries("/nonexistent.tsv").unwrap_err().into();
    let documents: Vec<_> =
        (0..700).map(|i| document(&format!("new{i}"), "river bridge")).chain([Err(bad)]).collect();
    assert!(collection.ingest(documents, |_| {}).is_err());
    assert_eq!((collection.document_count(), collection.vector_count()), (20, 20));
    assert!(semantic_ids(&collection, "river bridge", 30).iter().all(|id| id.starts_with('d')));
    assert_eq!(vector_files(), before);
    let reopened = fixture.data.open("docs").unwrap();
    assert_eq!(reopened.vector_count(), 20);
    assert_consistent(&reopened);
}

fn collection_dir(fixture: &Fixture, name: &str) -> PathBuf {
    fixture.data.path().join(name)
}

#[test]
fn another_model_a_wrong_dimension_or_no_model_is_refused() {
    let fixture = Fixture::new(64);
    let collection = fixture.create("docs", None);
    let corpus = texts();
    let texts: Vec<&str> = corpus.iter().map(String::as_str).collect();
    let other_dir = fixture.data.path().parent().unwrap().join("other");
    let other = Encoder::load(&small_model(&other_dir, &texts, 64, 2)).unwrap();
    let error = collection.use_encoder(other).unwrap_err().to_string();
    assert!(error.contains("vectors of different models cannot be compared"), "{error}");

    let error = collection.nearest(&[0.5; 7], 10, None, None).unwrap_err().to_string();
    assert_eq!(error, "a query vector has 7 dimensions; collection \"docs\" holds 32");

    let keyword_only = fixture.data.create("plain", AnalyzerSettings::default(), None).unwrap();
    let error = search(&keyword_only, &SearchRequest::new("x", Mode::Semantic, 10)).unwrap_err();
    assert!(error.to_string().contains("has no vectors"), "{error}");
}

#[test]
fn windows_can_be_shorter_than_the_model() {
    let fixture = Fixture::new(16);
    let mut windowed = fixture.create_windowed("short-windows", Some(4), Some(10)).unwrap();
    let long_text = texts().join(" ");
    windowed.ingest([document("long", &long_text)], |_| {}).unwrap();
    let tokenizer = cloze_mlm::load_tokenizer(&fixture.model).unwrap();
    let tokens = tokenizer.encode(long_text.as_str(), false).unwrap().get_ids().len();
    // 8 tokens a window besides [CLS] and [SEP], each starting 4 after the one before.
    assert_eq!(windowed.vector_count() as usize, 1 + (tokens - 8).div_ceil(4));
    // The window holding the start of the text is the embedding of its first 8 tokens.
    let start = tokenizer
        .decode(&tokenizer.encode(long_text.as_str(), false).unwrap().get_ids()[..8], true)
        .unwrap();
    let hits = search(&windowed, &SearchRequest::new(&start, Mode::Semantic, 1)).unwrap().hits;
    assert!((hits[0].score - 1.0).abs() < 1e-4, "{hits:?}");

    for (overlap, length, field) in [
        (Some(4), Some(2), "window_length is 2"),
        (Some(4), Some(17), "window_length is 17"),
        (Some(8), Some(10), "window_overlap is 8"),
        (None, Some(10), "window_length needs window_overlap"),
    ] {
        let name = format!("bad-{}", field.len());
        let error = fixture.create_windowed(&name, overlap, length).err().unwrap().to_string();
        assert!(error.contains(field), "{error}");
        assert!(!fixture.data.exists(&name).unwrap());
    }
}

#[test]
fn long_documents_get_a_vector_per_window() {
    let fixture = Fixture::new(16);
    let mut windowed = fixture.create("windowed", Some(4));
    let long_text = texts().join(" ");
    let short_text = &texts()[3];
    windowed.ingest([document("long", &long_text), document("short", short_text)], |_| {}).unwrap();
    let tokenizer = cloze_mlm::load_tokenizer(&fixture.model).unwrap();
    let tokens = tokenizer.encode(long_text.as_str(), false).unwrap().get_ids().len();
    // 14 tokens a window besides [CLS] and [SEP], each starting 10 after the one before.
    let windows = 1 + (tokens - 14).div_ceil(10);
    assert_eq!(windowed.vector_count() as usize, windows + 1);
    let hits = search(&windowed, &SearchRequest::new(short_text, Mode::Semantic, 2)).unwrap().hits;
    assert_eq!(hits[0].id, "short");
    assert!((hits[0].score - 1.0).abs() < 1e-4);
    // Every window belongs to the one long document: it appears once.
    assert_eq!(semantic_ids(&windowed, &long_text, 10), ["long", "short"]);

    let mut truncated = fixture.create("truncated", None);
    truncated.ingest([document("long", &long_text)], |_| {}).unwrap();
    assert_eq!(truncated.vector_count(), 1);
}

#[test]
fn broken_model_folders_and_odd_documents() {
    let fixture = Fixture::new(64);
    let broken = fixture.data.path().parent().unwrap().join("broken");
    cloze_tests::copy_dir(&fixture.model, &broken);
    std::fs::remove_file(broken.join("tokenizer.json")).unwrap();
    let error = format!("{:#}", Encoder::load(&broken).err().unwrap());
    assert!(error.contains("tokenizer.json"), "{error}");

    cloze_tests::copy_dir(&fixture.model, &broken);
    std::fs::write(broken.join("model.safetensors"), b"not a safetensors file").unwrap();
    let error = format!("{:#}", Encoder::load(&broken).err().unwrap());
    assert!(error.contains("model.safetensors"), "{error}");

    let mut collection = fixture.create("docs", None);
    let huge = "vitamin ".repeat(50_000);
    collection.ingest([document("empty", ""), document("huge", &huge)], |_| {}).unwrap();
    assert_eq!(collection.vector_count(), 2);
    assert_eq!(semantic_ids(&collection, &huge, 1), ["huge"]);
}

#[test]
fn opening_while_another_writer_commits_sees_one_consistent_state() {
    let fixture = Fixture::new(64);
    let mut writer = fixture.create("docs", None);
    ingest_texts(&mut writer);
    let data = fixture.data.clone();
    let reader = std::thread::spawn(move || {
        let mut opened = 0;
        for _ in 0..40 {
            // Busy (commits kept coming during every attempt) is an honest answer; a mixed
            // state is not.
            match data.open("docs") {
                Ok(collection) => {
                    assert_consistent(&collection);
                    opened += 1;
                }
                Err(IndexError::Busy(_)) => {}
                Err(error) => panic!("{error}"),
            }
        }
        assert!(opened > 0);
    });
    for round in 0..15 {
        let documents: Vec<_> = (0..20)
            .map(|i| document(&format!("r{round}-{i}"), &texts()[i]))
            .chain([document(&format!("d{round}"), "river bridge engine")])
            .collect();
        writer.ingest(documents, |_| {}).unwrap();
    }
    reader.join().unwrap();
    assert_consistent(&fixture.data.open("docs").unwrap());
}

#[test]
fn feedback_moves_the_query_toward_the_best_keyword_hits_and_scores_every_keyword_candidate() {
    let fixture = Fixture::new(64);
    let mut collection = fixture.create("docs", None);
    ingest_texts(&mut collection);
    let depth = 5;
    let request = SearchRequest::new("vitamin pressure", Mode::Hybrid, depth);
    let found = candidates(&collection, &request, depth).unwrap();
    assert!(found.keyword.len() >= 2, "{:?}", found.keyword);
    let best_keyword = found.keyword[0].0.as_str();

    // The moved query, as feedback defines it: query + weight x mean of the best hits' vectors.
    let encoder = collection.encoder().unwrap();
    let query = encoder.encode(&["vitamin pressure"]).unwrap().remove(0);
    let mean = collection.mean_vector(&[best_keyword]).unwrap().unwrap();
    let weight = 4.0;
    let mut moved: Vec<f32> = query.iter().zip(&mean).map(|(q, m)| q + weight * m).collect();
    let norm = moved.iter().map(|x| x * x).sum::<f32>().sqrt();
    moved.iter_mut().for_each(|x| *x /= norm);

    let feedback = Feedback { docs: 1, weight: f64::from(weight) };
    let ranking = found.with_feedback(&collection, feedback, depth).unwrap();
    // Every keyword candidate has a semantic score, the graph's best among them.
    for (id, _) in &found.keyword {
        assert!(ranking.iter().any(|(r, _)| r == id), "{id} missing from {ranking:?}");
    }
    assert!(ranking.len() >= depth && ranking.len() <= 2 * depth);
    assert!(ranking.windows(2).all(|w| w[0].1 >= w[1].1), "best first: {ranking:?}");
    // Each score is the exact cosine of the moved query, which favours the best keyword hit.
    let ids: Vec<&str> = ranking.iter().map(|(id, _)| id.as_str()).collect();
    let exact = collection.similarities(&moved, &ids).unwrap();
    for ((id, score), expected) in ranking.iter().zip(exact) {
        assert!((score - expected.unwrap()).abs() < 1e-5, "{id}: {score} vs {expected:?}");
    }
    assert_eq!(ranking[0].0, best_keyword);
    let plain: Vec<&str> = found.semantic.iter().map(|(id, _)| id.as_str()).collect();
    assert_ne!(plain, ids[..plain.len()], "feedback moved nothing");

    // Through a hybrid search: every keyword candidate's explanation has its semantic score.
    let mut hybrid = SearchRequest::new("vitamin pressure", Mode::Hybrid, 2 * depth);
    let method = FusionMethod::Convex { alpha: 0.5, normalization: Normalization::ZScore };
    hybrid.fusion = Some(Fusion { method, depth, feedback: Some(feedback) });
    let hits = search(&collection, &hybrid).unwrap().hits;
    for hit in &hits {
        let explanation = hit.explanation.as_ref().unwrap();
        assert!(explanation.semantic.is_some(), "{}: {explanation:?}", hit.id);
    }
    let keyword_hits = hits.iter().filter(|h| h.explanation.as_ref().unwrap().keyword.is_some());
    assert_eq!(keyword_hits.count(), found.keyword.len());
}

fn with_vector(id: &str, text: &str, vector: Vec<f32>) -> Result<Document, IndexError> {
    let mut document = document(id, text)?;
    document.vector = Some(vector);
    Ok(document)
}

fn vector_search(collection: &Collection, mode: Mode, query: &str, vector: &[f32]) -> Vec<String> {
    let mut request = SearchRequest::new(query, mode, 3);
    request.vector = Some(vector.to_vec());
    search(collection, &request).unwrap().hits.into_iter().map(|hit| hit.id).collect()
}

#[test]
fn documents_bring_their_own_vectors_to_a_collection_without_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::new(dir.path());
    let semantic = SemanticSettings::with_dimension(3, HnswSettings::default());
    let mut collection = data.create("own", AnalyzerSettings::default(), Some(semantic)).unwrap();
    collection
        .ingest(
            [
                with_vector("x", "river bridge", vec![2.0, 0.0, 0.0]),
                with_vector("y", "heat flow", vec![0.0, 0.5, 0.0]),
                with_vector("z", "gene dose", vec![0.0, 0.6, 0.8]),
            ],
            |_| {},
        )
        .unwrap();
    // Vectors are kept at unit length: scores are cosines.
    let mut request = SearchRequest::new("", Mode::Semantic, 3);
    request.vector = Some(vec![0.0, 1.0, 1.0]);
    let hits = search(&collection, &request).unwrap().hits;
    assert_eq!(hits.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), ["z", "y", "x"]);
    assert!((hits[0].score - 1.4 / 2f32.sqrt()).abs() < 1e-5, "{}", hits[0].score);
    assert!(hits[2].score.abs() < 1e-6);
    // Hybrid: the keyword side from the text, the semantic side from the vector.
    assert_eq!(vector_search(&collection, Mode::Hybrid, "river", &[1.0, 0.1, 0.0])[0], "x");

    // Nothing is applied when a document lacks its vector or brings a wrong one.
    let before = collection.document_ids().unwrap();
    for (bad, expected) in [
        (document("w", "no vector"), "document \"w\" has no vector"),
        (
            with_vector("w", "short", vec![1.0, 2.0]),
            "it has 2 values; the collection's vectors have 3",
        ),
        (with_vector("w", "zero", vec![0.0; 3]), "it has length zero"),
        (with_vector("w", "nan", vec![1.0, f32::NAN, 0.0]), "value 1 is not a finite number"),
    ] {
        let error = collection.ingest([with_vector("v", "fine", vec![1.0; 3]), bad], |_| {});
        let error = error.unwrap_err().to_string();
        assert!(error.contains(expected), "{error}");
        assert_eq!(collection.document_ids().unwrap(), before);
    }
    // A query vector of another length, or text alone, is refused with the reason.
    let mut request = SearchRequest::new("", Mode::Semantic, 3);
    request.vector = Some(vec![1.0, 0.0]);
    let error = search(&collection, &request).unwrap_err().to_string();
    assert!(error.contains("vector: it has 2 values"), "{error}");
    let error = search(&collection, &SearchRequest::new("river", Mode::Semantic, 3));
    assert!(error.unwrap_err().to_string().contains("has no model"));

    // The same after reopening.
    let reopened = data.open("own").unwrap();
    assert_eq!(vector_search(&reopened, Mode::Semantic, "", &[0.0, 1.0, 0.0])[0], "y");
    assert_eq!(reopened.manifest().semantic.as_ref().unwrap().dimension(), 3);
}

#[test]
fn with_a_model_a_documents_own_vector_replaces_embedding_it() {
    let fixture = Fixture::new(64);
    let mut collection = fixture.create("docs", None);
    ingest_texts(&mut collection);
    let third = collection.encoder().unwrap().encode(&[&texts()[3]]).unwrap().remove(0);
    // "copy" has unrelated text but the vector of the fourth text.
    collection.ingest([with_vector("copy", "zzz qqq", third.clone())], |_| {}).unwrap();
    let found = search(&collection, &SearchRequest::new(&texts()[3], Mode::Semantic, 2)).unwrap();
    let mut ids: Vec<String> = found.hits.iter().map(|hit| hit.id.clone()).collect();
    ids.sort();
    assert_eq!(ids, ["copy", "d3"]);
    assert!((found.hits[0].score - found.hits[1].score).abs() < 1e-5);
    assert_consistent(&collection);
}
