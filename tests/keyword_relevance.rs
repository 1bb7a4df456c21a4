//! Keyword ranking on the shared collections reaches the BM25 reference quality.
//!
//! The floors sit just under what a Python peer (bm25s, same analyzer, k1=1.2, b=0.75) gets:
//! 0.679 / 0.370 / 0.396 / 0.499 / 0.436 nDCG@10.

use cloze_eval::{evaluate, Metric, Qrels, Run};
use cloze_index::DataDir;
use cloze_search::{search, Mode, SearchRequest};
use cloze_tests::{beir_collection, index_beir};

fn keyword_ndcg_at_10(name: &'static str) -> f64 {
    let collection = beir_collection(name);
    let dir = tempfile::tempdir().unwrap();
    let index = index_beir(&DataDir::new(dir.path()), &collection);
    let qrels = Qrels::read(&collection.test_qrels).unwrap();
    let mut run = Run::new();
    for query in cloze_corpus::read_queries(&collection.queries).unwrap() {
        if qrels.judgments(&query.id).is_none() {
            continue;
        }
        let mut request = SearchRequest::new(query.text, Mode::Keyword, 1000);
        request.with_documents = false;
        let found = search(&index, &request).unwrap();
        run.insert(
            &query.id,
            found.hits.into_iter().map(|hit| (hit.id, f64::from(hit.score))).collect(),
        );
    }
    let evaluation = evaluate(&qrels, &run, &[Metric::Ndcg(Some(10))]);
    assert_eq!(run.queries().count(), qrels.num_queries(), "every judged query has text and hits");
    evaluation.means()[0].1
}

#[test]
fn keyword_ndcg_reaches_the_bm25_reference_on_every_collection() {
    let floors = [
        ("scifact", 0.670),
        ("cranfield", 0.360),
        ("cisi", 0.380),
        ("cacm", 0.480),
        ("npl", 0.430),
    ];
    let mut failures = Vec::new();
    for (name, floor) in floors {
        let ndcg = keyword_ndcg_at_10(name);
        eprintln!("{name}: nDCG@10 {ndcg:.4} (floor {floor})");
        if ndcg < floor {
            failures.push(format!("{name}: {ndcg:.4} < {floor}"));
        }
    }
    assert!(failures.is_empty(), "below the floor: {}", failures.join("; "));
}
