//! A collection whose documents bring their own vectors, over HTTP: created with a `dimension`
//! and no model, loaded with `vector` fields in `_bulk`, searched with a query `vector`; every
//! wrong vector is a 400 naming its line or field, and changes nothing.

mod common;

use common::{ids, Server};
use serde_json::json;

fn document(id: &str, text: &str, vector: &[f64]) -> String {
    json!({"_id": id, "text": text, "vector": vector}).to_string() + "\n"
}

#[test]
fn documents_and_queries_bring_their_own_vectors() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start(&work.path().join("index"), &[]);

    server.refused("PUT", "/collections/v", r#"{"dimension": 0}"#, 400, "dimension is 0");
    server.refused("PUT", "/collections/v", r#"{"dimension": "3"}"#, 400, "dimension");
    let created = server.ok("PUT", "/collections/v", Some(r#"{"dimension": 3, "hnsw": {"m": 8}}"#));
    assert_eq!(created["settings"]["semantic"]["dimension"], 3);
    assert_eq!(created["segments"], 0);

    let body = [
        document("x", "river bridge", &[2.0, 0.0, 0.0]),
        document("y", "heat flow", &[0.0, 0.5, 0.0]),
        document("z", "gene dose", &[0.0, 0.6, 0.8]),
    ]
    .concat();
    server.ok("POST", "/collections/v/_bulk", Some(&body));
    let found = server.search("v", json!({"mode": "semantic", "vector": [0, 1, 1], "k": 3}));
    assert_eq!(ids(&found), ["z", "y", "x"]);
    let found = server.search("v", json!({"mode": "hybrid", "q": "river", "vector": [1, 0.1, 0]}));
    assert_eq!(ids(&found)[0], "x");

    // Expanding collections borrow the text of each document's nearest neighbour.
    server.refused("PUT", "/collections/e", r#"{"expansion": {}}"#, 400, "need vectors");
    let zero = r#"{"dimension": 2, "expansion": {"neighbours": 0}}"#;
    server.refused("PUT", "/collections/e", zero, 400, "expansion.neighbours is 0");
    let negative = r#"{"dimension": 2, "expansion": {"weight": -1}}"#;
    server.refused("PUT", "/collections/e", negative, 400, "expansion.weight is -1");
    let created = server.ok(
        "PUT",
        "/collections/e",
        Some(r#"{"dimension": 2, "expansion": {"neighbours": 1}}"#),
    );
    assert_eq!(
        created["settings"]["semantic"]["expansion"],
        json!({"neighbours": 1, "weight": 0.4})
    );
    let body = [
        document("paper", "myocardial infarction", &[1.0, 0.0]),
        document("news", "heart attack", &[0.9, 0.1]),
        document("boat", "sailing", &[0.0, 1.0]),
        document("ship", "harbour", &[0.1, 0.9]),
    ]
    .concat();
    server.ok("POST", "/collections/e/_bulk", Some(&body));
    let found = server.search("e", json!({"q": "heart attack"}));
    assert_eq!(ids(&found), ["news", "paper"]);
    // A search weighs the neighbours' text as it asks; 0 leaves it out.
    let found = server.search("e", json!({"q": "heart attack", "expansion_weight": 0}));
    assert_eq!(ids(&found), ["news"]);
    let path = "/collections/e/_search";
    let heavy = json!({"q": "heart attack", "expansion_weight": 200}).to_string();
    server.refused("POST", path, &heavy, 400, "expansion_weight is 200");
    let plain = json!({"q": "river", "expansion_weight": 0.5}).to_string();
    let refused = server.refused("POST", "/collections/v/_search", &plain, 400, "does not expand");
    assert_eq!(refused["error"]["type"], "not_expanding");

    // Every wrong line is listed, and nothing is applied.
    let bad = [
        document("a", "fine", &[1.0, 1.0, 1.0]),
        document("b", "short", &[1.0, 2.0]),
        r#"{"_id": "c", "text": "words", "vector": [1, "2", 3]}"#.to_string() + "\n",
        r#"{"_id": "d", "text": "huge", "vector": [1, 2, 1e300]}"#.to_string() + "\n",
    ]
    .concat();
    let refused = server.refused("POST", "/collections/v/_bulk", &bad, 400, "line 2");
    let lines: Vec<u64> =
        refused["items"].as_array().unwrap().iter().map(|i| i["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, [2, 3, 4]);
    assert!(refused["items"][0]["reason"].as_str().unwrap().contains("has 2 values"));
    let missing = document("a", "fine", &[1.0, 1.0, 1.0]) + r#"{"_id": "e", "text": "none"}"#;
    server.refused("POST", "/collections/v/_bulk", &missing, 400, "document \"e\" has no vector");
    let zero = document("f", "zero", &[0.0, 0.0, 0.0]);
    server.refused("POST", "/collections/v/_bulk", &zero, 400, "length zero");
    assert_eq!(server.ok("GET", "/collections/v", None)["documents"], 3);

    // Query vectors are checked as well.
    let search = |body: serde_json::Value| body.to_string();
    let path = "/collections/v/_search";
    server.refused(
        "POST",
        path,
        &search(json!({"mode": "semantic", "vector": [1, 0]})),
        400,
        "vector: it has 2 values",
    );
    server.refused(
        "POST",
        path,
        &search(json!({"mode": "keyword", "q": "x", "vector": [1, 0, 0]})),
        400,
        "vector: only semantic and hybrid",
    );
    server.refused(
        "POST",
        path,
        &search(json!({"mode": "semantic", "vector": [1, "a", 0]})),
        400,
        "vector",
    );
    server.refused(
        "POST",
        path,
        &search(json!({"mode": "semantic", "q": "river"})),
        400,
        "has no model",
    );

    // Each write added a segment; the server merges them in the background once writes pause,
    // and a restart finds the same documents.
    for round in 0..3 {
        let id = format!("r{round}");
        server.ok(
            "POST",
            "/collections/v/_bulk",
            Some(&document(&id, "more", &[1.0, 0.0, round as f64])),
        );
    }
    let described = server.ok("GET", "/collections/v", None);
    assert_eq!(
        (described["documents"].as_u64(), described["vectors"].as_u64()),
        (Some(6), Some(6))
    );
    assert!(described["segments"].as_u64().unwrap() >= 1);
    drop(server);
    let server = Server::start(&work.path().join("index"), &[]);
    let found = server.search("v", json!({"mode": "semantic", "vector": [0, 0.5, 0], "k": 1}));
    assert_eq!(ids(&found), ["y"]);
    assert_eq!(server.ok("GET", "/collections/v", None)["documents"], 6);
}
