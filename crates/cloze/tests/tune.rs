//! Tuning hybrid fusion, from the command line and over HTTP: one library function behind
//! both, so the same judged queries (or the same pseudo-queries, without judgments) get the
//! same answer, byte for byte but the time taken.

use std::collections::{BTreeMap, HashSet};
use std::process::Command;

use cloze_tests::beir_collection;
use serde_json::{json, Value};

mod common;
use common::{model, Server};

fn cloze(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_cloze")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "cloze {args:?}: {stderr}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn cloze_tune_and_the_tune_route_answer_the_same_and_save_the_choice() {
    let work = tempfile::tempdir().unwrap();
    let model = model(work.path());
    let data = work.path().join("index");
    let scifact = beir_collection("scifact");

    // SciFact's first 40 training queries, the documents judged for them and 300 others.
    let train = std::fs::read_to_string(scifact.queries.with_file_name("qrels/train.tsv")).unwrap();
    let mut judgments: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    for line in train.lines().skip(1) {
        let fields: Vec<&str> = line.split('\t').collect();
        if judgments.len() == 40 && !judgments.contains_key(fields[0]) {
            continue;
        }
        let entry = judgments.entry(fields[0].to_string()).or_default();
        entry.push((fields[1].to_string(), fields[2].parse().unwrap()));
    }
    let judged: HashSet<&str> =
        judgments.values().flatten().map(|(document, _)| document.as_str()).collect();
    let corpus = std::fs::read_to_string(&scifact.corpus).unwrap();
    let documents: Vec<&str> = corpus
        .lines()
        .enumerate()
        .filter(|(i, line)| {
            let document: Value = serde_json::from_str(line).unwrap();
            *i < 300 || judged.contains(document["_id"].as_str().unwrap())
        })
        .map(|(_, line)| line)
        .collect();
    let texts: BTreeMap<String, String> = std::fs::read_to_string(&scifact.queries)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|query| judgments.contains_key(query["_id"].as_str().unwrap()))
        .map(|query| {
            (query["_id"].as_str().unwrap().into(), query["text"].as_str().unwrap().into())
        })
        .collect();
    assert_eq!(texts.len(), judgments.len());
    let file = |name: &str, content: String| {
        let path = work.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.to_str().unwrap().to_string()
    };
    let corpus = file("corpus.jsonl", documents.join("\n") + "\n");
    let queries =
        file("queries.tsv", texts.iter().map(|(id, text)| format!("{id}\t{text}\n")).collect());
    let qrels = file(
        "qrels.tsv",
        judgments
            .iter()
            .flat_map(|(query, rated)| {
                rated.iter().map(move |(doc, r)| format!("{query}\t{doc}\t{r}\n"))
            })
            .collect(),
    );
    let data_dir = data.to_str().unwrap();
    let model = model.to_str().unwrap();
    cloze(&[
        "--data-dir",
        data_dir,
        "index",
        "--collection",
        "t",
        "--corpus",
        &corpus,
        "--model",
        model,
    ]);
    cloze(&["--data-dir", data_dir, "index", "--collection", "words", "--corpus", &corpus]);
    let flags = ["--depths", "20,50", "--feedback-docs", "0,3", "--feedback-weights", "1"];
    let tune = ["--data-dir", data_dir, "tune", "--collection", "t", "--queries", &queries];
    let printed = cloze(&[&tune[..], &["--qrels", &qrels, "--json"], &flags[..]].concat());
    let server = Server::start(&data, &[]);
    let requests: Vec<Value> = judgments
        .iter()
        .map(|(id, rated)| {
            let ratings: Vec<Value> =
                rated.iter().map(|(doc, rating)| json!({"_id": doc, "rating": rating})).collect();
            json!({"id": id, "query": texts[id], "ratings": ratings})
        })
        .collect();
    let body = json!({"requests": requests, "depths": [20, 50], "feedback_docs": [0, 3], "feedback_weights": [1]});
    let (status, text) = server.call_text("POST", "/collections/t/_tune", Some(&body.to_string()));
    assert_eq!(status, 200, "{text}");
    // Byte for byte, but the time taken, which comes last.
    let timed = text.rfind(",\"took_ms\":").expect("took_ms");
    assert_eq!(format!("{}}}", &text[..timed]), printed.trim_end());
    let answered: Value = serde_json::from_str(&text).unwrap();
    assert!(answered["took_ms"].as_f64().unwrap() > 0.0);
    // (3 normalisations x 11 alphas + 5 rrf constants) x 2 depths x 2 feedback settings.
    assert_eq!(answered["settings"].as_array().unwrap().len(), 38 * 2 * 2);
    assert_eq!(answered["queries"], 40);
    assert_eq!(answered["saved"], Value::Null);
    assert_eq!(answered.get("pseudo_query_sources"), None);

    // Without judgments, the same pseudo-queries from both, tuned on a passing copy that
    // leaves nothing behind.
    let pseudo =
        ["--pseudo-queries", "30", "--depths", "20", "--feedback-docs", "0", "--seed", "3"];
    let tune = ["--data-dir", data_dir, "tune", "--collection", "t", "--json"];
    let printed = cloze(&[&tune[..], &pseudo[..]].concat());
    let body = json!({"pseudo_queries": 30, "depths": [20], "feedback_docs": [0], "seed": 3});
    let (status, text) = server.call_text("POST", "/collections/t/_tune", Some(&body.to_string()));
    assert_eq!(status, 200, "{text}");
    let timed = text.rfind(",\"took_ms\":").expect("took_ms");
    assert_eq!(format!("{}}}", &text[..timed]), printed.trim_end());
    let answered: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answered["queries"], 30);
    // The test model lists no documents left out of its training.
    assert_eq!(answered["pseudo_query_sources"], "any_document");
    let hidden: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("scratch"))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");

    // In an expanding collection, pseudo-queries leave the expansion weight alone unless asked
    // (they undervalue expansion); judged queries try weights by default.
    let expand = ["index", "--collection", "x", "--corpus", &corpus, "--model", model, "--expand"];
    cloze(&[&["--data-dir", data_dir][..], &expand[..]].concat());
    let tune = ["--data-dir", data_dir, "tune", "--collection", "x", "--json"];
    let printed: Value = serde_json::from_str(&cloze(&[&tune[..], &pseudo[..]].concat())).unwrap();
    assert_eq!(printed.get("expansion"), None, "{printed}");
    let asked = ["--expansion-weights", "0,1"];
    let printed = cloze(&[&tune[..], &pseudo[..], &asked[..]].concat());
    let printed: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(printed["expansion"]["weights"].as_array().unwrap().len(), 3, "{printed}");
    let judged =
        ["--queries", &queries, "--qrels", &qrels, "--depths", "20", "--feedback-docs", "0"];
    let printed: Value = serde_json::from_str(&cloze(&[&tune[..], &judged[..]].concat())).unwrap();
    assert_eq!(printed["expansion"]["current"], 0.4, "{printed}");
    assert_eq!(printed["expansion"]["weights"].as_array().unwrap().len(), 5, "{printed}");

    // Saved, the choice becomes the default of hybrid searches that name no fusion.
    let saved = server.ok(
        "POST",
        "/collections/t/_tune",
        Some(&json!({"requests": requests, "depths": [20], "alphas": [0.5], "rrf_ks": [], "feedback_docs": [0], "significance": 1, "save": true}).to_string()),
    );
    assert_eq!(saved["saved"], saved["chosen"], "{saved}");
    assert!(saved["chosen"].as_str().unwrap().starts_with("convex alpha=0.5 "), "{saved}");
    let manifest = server.ok("GET", "/collections/t", None);
    assert_eq!(manifest["settings"]["fusion"]["alpha"], 0.5, "{manifest}");
    assert_eq!(manifest["settings"]["fusion"]["depth"], 20, "{manifest}");

    // What cannot be used is named, and nothing is saved.
    let refused = |body: Value, status, what: &str| {
        server.refused("POST", "/collections/t/_tune", &body.to_string(), status, what);
    };
    let one = json!([requests[0]]);
    refused(json!({"requests": one, "alphas": [2]}), 400, "alphas: 2 is not between 0 and 1");
    refused(json!({"requests": one, "depths": [0]}), 400, "depths: each must be at least 1");
    refused(json!({"requests": one, "depths": [20000]}), 400, "max_hits");
    refused(json!({"requests": one, "metric": "ndcg@"}), 400, "metric");
    refused(json!({"requests": one, "significance": 2}), 400, "significance");
    refused(json!({"requests": one, "alpha": 0.5}), 400, "alpha");
    refused(json!({"requests": []}), 400, "requests: give at least one judged query");
    refused(json!({"requests": one, "seed": 1}), 400, "seed: pseudo-queries are made only without");
    refused(json!({"pseudo_queries": 0}), 400, "pseudo_queries: must be at least 1");
    let body = json!({"requests": one, "save": true}).to_string();
    server.refused("POST", "/collections/nope/_tune", &body, 404, "no collection named \"nope\"");
    let no_model = server.refused("POST", "/collections/words/_tune", &body, 400, "model");
    assert_eq!(no_model["error"]["type"], "no_model");
    let body = json!({"pseudo_queries": 5}).to_string();
    let no_model = server.refused("POST", "/collections/words/_tune", &body, 400, "model");
    assert_eq!(no_model["error"]["type"], "no_model");
    let manifest = server.ok("GET", "/collections/t", None);
    assert_eq!(manifest["settings"]["fusion"]["alpha"], 0.5, "{manifest}");
    server.stop();
}
