//! The `cloze` binary as a user runs it: commands, output shapes, and bad input.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Workspace {
        Workspace { dir: tempfile::tempdir().unwrap() }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("index")
    }

    fn file(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    fn cloze(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cloze"))
            .args(args)
            .env("CLOZE_DATA_DIR", self.data_dir())
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    }

    /// Runs a command that must succeed and returns its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.cloze(args);
        assert!(
            output.status.success(),
            "cloze {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Runs a command that must fail and returns its error message.
    fn fails(&self, args: &[&str]) -> String {
        let output = self.cloze(args);
        assert!(!output.status.success(), "cloze {args:?} should have failed");
        String::from_utf8(output.stderr).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    fn hit_ids(&self, collection: &str, query: &str) -> Vec<String> {
        let hits = self.json(&["search", "--collection", collection, "--json", query]);
        hits["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|hit| hit["id"].as_str().unwrap().to_string())
            .collect()
    }
}

const CORPUS: &str = r#"{"_id": "d1", "title": "Solar power", "text": "Solar panels turn sunlight into electricity.", "year": 2020}
{"_id": "d2", "title": "Wind power", "text": "Wind turbines turn wind into electricity."}
{"_id": "d3", "title": "Cooking", "text": "Bread needs flour, water and time."}
"#;

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn index_search_and_eval_a_small_collection() {
    let ws = Workspace::new();
    let corpus = ws.file("corpus.jsonl", CORPUS);
    let out = ws.ok(&["index", "--collection", "energy", "--corpus", path(&corpus)]);
    assert!(out.contains("indexed 3 documents") && out.contains("holds 3 documents"), "{out}");

    let hits = ws.json(&[
        "search",
        "--collection",
        "energy",
        "--mode",
        "keyword",
        "-k",
        "10",
        "--json",
        "solar electricity",
    ]);
    let hits = hits["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[0]["id"], "d1");
    assert_eq!(hits[0]["title"], "Solar power");
    assert!(hits[0]["snippet"].as_str().unwrap().contains("sunlight"));
    assert!(hits[0]["score"].as_f64().unwrap() > hits[1]["score"].as_f64().unwrap());

    let table = ws.ok(&["search", "--collection", "energy", "solar"]);
    assert!(
        table.lines().nth(1).unwrap().contains("d1") && table.contains("Solar power"),
        "{table}"
    );
    assert_eq!(ws.ok(&["search", "--collection", "energy", "the of"]).trim(), "no hits");

    let queries = ws.file("queries.tsv", "q1\tsolar energy\nq2\tbread\nq3\twind\n");
    let qrels =
        ws.file("qrels.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t2\nq3\td1\t1\n");
    let run = ws.dir.path().join("run.trec");
    let report = ws.json(&[
        "eval",
        "--collection",
        "energy",
        "--queries",
        path(&queries),
        "--qrels",
        path(&qrels),
        "--mode",
        "keyword",
        "--json",
        "--run-out",
        path(&run),
    ]);
    assert_eq!(report["queries"], 3);
    for metric in ["ndcg@10", "recall@100", "mrr@10", "map"] {
        assert!(report[metric].is_f64(), "{metric} missing from {report}");
    }
    // q1 and q2 find their document first; q3 ("wind") never finds d1.
    assert!((report["mrr@10"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12, "{report}");
    assert_eq!(report["settings"]["mode"], "keyword");

    let trec = std::fs::read_to_string(&run).unwrap();
    assert!(trec.starts_with("q1 Q0 d1 1 "), "{trec}");
    assert!(trec
        .lines()
        .all(|line| line.split(' ').count() == 6 && line.ends_with(" cloze-keyword")));
    let rescored = ws.json(&[
        "eval",
        "--run",
        path(&run),
        "--qrels",
        path(&qrels),
        "--json",
        "--metrics",
        "mrr@10,P@1",
    ]);
    assert_eq!(rescored["mrr@10"], report["mrr@10"]);
    assert!((rescored["p@1"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12);

    let listing = ws.json(&["collections", "--json"]);
    assert_eq!(listing["collections"][0]["name"], "energy");
    assert_eq!(listing["collections"][0]["documents"], 3);
}

#[test]
fn reindexing_an_id_replaces_the_document() {
    let ws = Workspace::new();
    ws.ok(&["index", "--collection", "c", "--corpus", path(&ws.file("a.jsonl", CORPUS))]);
    let update = ws.file(
        "b.jsonl",
        r#"{"_id": "d3", "title": "Baking", "text": "Sourdough bread and solar ovens."}"#,
    );
    ws.ok(&["index", "--collection", "c", "--corpus", path(&update)]);
    assert_eq!(ws.json(&["collections", "--json"])["collections"][0]["documents"], 3);
    let hits = ws.json(&["search", "--collection", "c", "--json", "flour sourdough"]);
    assert_eq!(hits["hits"][0]["title"], "Baking");
    assert_eq!(hits["hits"].as_array().unwrap().len(), 1);
}

#[test]
fn custom_fields_gzip_and_metadata() {
    let ws = Workspace::new();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(
        &mut gz,
        br#"{"doc": 17, "headline": "Tides", "body": "The moon pulls the sea.", "lang": "en"}"#,
    )
    .unwrap();
    let corpus = ws.file("news.jsonl.gz", gz.finish().unwrap());
    let args = [
        "index",
        "--collection",
        "news",
        "--corpus",
        path(&corpus),
        "--id-field",
        "doc",
        "--text-fields",
        "headline,body",
    ];
    ws.fails(&[&args[..], &["--title-field", "lang"]].concat());
    ws.ok(&[&args[..], &["--title-field", "headline"]].concat());
    let hits = ws.json(&["search", "--collection", "news", "--json", "moon"]);
    assert_eq!(
        (hits["hits"][0]["id"].as_str(), hits["hits"][0]["title"].as_str()),
        (Some("17"), Some("Tides"))
    );
}

#[test]
fn an_expanded_collection_finds_documents_by_their_neighbours_words() {
    let ws = Workspace::new();
    let corpus = ws.file(
        "vectors.jsonl",
        r#"{"_id": "paper", "title": "", "text": "myocardial infarction outcomes", "vector": [1, 0]}
{"_id": "news", "title": "", "text": "heart attack survival", "vector": [0.9, 0.1]}
{"_id": "boat", "title": "", "text": "sailing", "vector": [0, 1]}
{"_id": "ship", "title": "", "text": "harbour", "vector": [0.1, 0.9]}
"#,
    );
    let index = |collection: &str, extra: &[&str]| {
        let mut args = vec!["index", "--collection", collection, "--corpus", path(&corpus)];
        args.extend_from_slice(extra);
        ws.cloze(&args)
    };
    let expand = ["--vector-field", "vector", "--expand", "--expansion-neighbours", "1"];
    assert!(index("e", &expand).status.success());
    assert_eq!(ws.hit_ids("e", "heart attack"), ["news", "paper"]);
    assert!(index("plain", &expand[..2]).status.success());
    assert_eq!(ws.hit_ids("plain", "heart attack"), ["news"]);
    // A search can leave the neighbours' text out, or weigh it otherwise.
    let search = ["search", "--collection", "e", "--json", "heart attack", "--expansion-weight"];
    let found = ws.json(&[&search[..], &["0"]].concat());
    assert_eq!(found["hits"].as_array().unwrap().len(), 1, "{found}");
    let refused = ws.cloze(&[&search[..5], &["--expansion-weight=-1"]].concat());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && message.contains("between 0 and 100"), "{message}");
    let plain = ["search", "--collection", "plain", "heart", "--expansion-weight", "1"];
    let refused = ws.cloze(&plain);
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && message.contains("--expand"), "{message}");

    // The weight may change on an existing collection; the neighbours may not.
    let reweighed = index("e", &[&expand[..], &["--expansion-weight", "0"]].concat());
    let printed = String::from_utf8_lossy(&reweighed.stdout);
    assert!(printed.contains("\"e\" now weighs its neighbours' text at 0"), "{printed}");
    assert_eq!(ws.hit_ids("e", "heart attack"), ["news"]);
    let refused =
        index("e", &["--vector-field", "vector", "--expand", "--expansion-neighbours", "2"]);
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("--expansion-neighbours: collection \"e\" was created"), "{message}");
    let refused = index("words", &["--expand"]);
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && message.contains("--model"), "{message}");
}

#[test]
fn an_empty_corpus_makes_an_empty_collection() {
    let ws = Workspace::new();
    let out =
        ws.ok(&["index", "--collection", "empty", "--corpus", path(&ws.file("e.jsonl", "\n\n"))]);
    assert!(out.contains("indexed 0 documents"), "{out}");
    assert_eq!(
        ws.json(&["search", "--collection", "empty", "--json", "anything"])["hits"],
        serde_json::json!([])
    );
}

/// Every bad corpus line is named by file and line, and the collection is left as it was.
#[test]
fn bad_corpus_lines_are_named_and_change_nothing() {
    let ws = Workspace::new();
    ws.ok(&["index", "--collection", "c", "--corpus", path(&ws.file("good.jsonl", CORPUS))]);
    let good_line = r#"{"_id": "new", "title": "", "text": "solar wind"}"#;
    let cases: [(&str, &[u8], &str); 5] = [
        ("json", b"{\"_id\": \"x\", \"title\": ", "not valid JSON"),
        ("id", b"{\"title\": \"t\", \"text\": \"solar\"}", "missing field \"_id\""),
        ("text", b"{\"_id\": \"x\", \"title\": \"t\"}", "missing field \"text\""),
        ("utf8", b"{\"_id\": \"x\", \"title\": \"t\", \"text\": \"caf\xe9\"}", "not valid UTF-8"),
        (
            "type",
            b"{\"_id\": [1], \"title\": \"t\", \"text\": \"x\"}",
            "field \"_id\" must be a string or a number",
        ),
    ];
    for (name, bad, expected) in cases {
        let mut content = format!("{good_line}\n\n").into_bytes();
        content.extend_from_slice(bad);
        let file = ws.file(&format!("{name}.jsonl"), content);
        for collection in ["c", "fresh"] {
            let error = ws.fails(&["index", "--collection", collection, "--corpus", path(&file)]);
            assert!(
                error.contains(&format!("{}:3: {expected}", file.display())),
                "{name}: {error}"
            );
        }
        assert_eq!(
            ws.hit_ids("c", "solar"),
            ["d1"],
            "{name}: the good line before the bad one was not added"
        );
        assert!(ws
            .fails(&["search", "--collection", "fresh", "solar"])
            .contains("no collection named \"fresh\""));
    }
    let missing =
        ws.fails(&["index", "--collection", "c", "--corpus", "/nonexistent/corpus.jsonl"]);
    assert!(missing.contains("/nonexistent/corpus.jsonl: cannot read"), "{missing}");
    assert_eq!(ws.json(&["collections", "--json"])["collections"].as_array().unwrap().len(), 1);
}

#[test]
fn bad_arguments_and_files_get_clear_errors() {
    let ws = Workspace::new();
    let error = ws.fails(&["search", "--collection", "nope", "x"]);
    assert!(error.contains("no collection named \"nope\""), "{error}");
    assert!(ws.fails(&["search", "--collection", "../x", "q"]).contains("invalid collection name"));
    ws.ok(&["index", "--collection", "c", "--corpus", path(&ws.file("good.jsonl", CORPUS))]);
    let queries = ws.file("q.tsv", "q1\tsolar\n");
    let bad_qrels = ws.file("bad.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\n");
    let error = ws.fails(&[
        "eval",
        "--collection",
        "c",
        "--queries",
        path(&queries),
        "--qrels",
        path(&bad_qrels),
    ]);
    assert!(error.contains(&format!("{}:3: expected 3", bad_qrels.display())), "{error}");
    let qrels = ws.file("qrels.tsv", "q1\td1\t1\nq9\td1\t1\n");
    let error = ws.fails(&[
        "eval",
        "--collection",
        "c",
        "--queries",
        path(&queries),
        "--qrels",
        path(&qrels),
    ]);
    assert!(error.contains("query \"q9\" is judged"), "{error}");
    let (queries, qrels) = (path(&queries), path(&qrels));
    let cases: [(&[&str], &str); 4] = [
        (&["eval", "--run", queries, "--qrels", qrels], ":1: expected 6"),
        (
            &["eval", "--run", queries, "--qrels", qrels, "--metrics", "ndcg@ten"],
            "unknown metric \"ndcg@ten\"",
        ),
        (
            &["index", "--collection", "c", "--corpus", queries, "--analyzer", "klingon"],
            "unknown analyzer \"klingon\"",
        ),
        (
            &["index", "--collection", "c", "--corpus", queries, "--analyzer", "standard"],
            "other analyzer settings",
        ),
    ];
    for (args, expected) in cases {
        let error = ws.fails(args);
        assert!(error.contains(expected), "{args:?}: {error}");
    }
}

/// A training corpus of a few hundred short lines, enough for a tokenizer and a few steps.
fn training_text(ws: &Workspace) -> PathBuf {
    let words = [
        "solar",
        "wind",
        "power",
        "turns",
        "light",
        "into",
        "electricity",
        "bread",
        "needs",
        "flour",
    ];
    let lines: Vec<String> = (0..300)
        .map(|i| {
            (0..6 + i % 5)
                .map(|j| words[(i * 3 + j * 7) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    ws.file("train.txt", lines.join("\n"))
}

#[test]
fn the_sample_collection_is_one_command_from_a_search() {
    let ws = Workspace::new();
    let loaded = ws.ok(&["sample"]);
    assert!(loaded.contains("indexed 36 documents into \"sample\""), "{loaded}");
    let hits = ws.hit_ids("sample", "an ocean under the ice");
    assert!(hits[..3].contains(&"europa".to_string()), "{hits:?}");
    let again = ws.fails(&["sample"]);
    assert!(again.contains("exists already"), "{again}");
    ws.ok(&["sample", "--collection", "planets"]);
}

#[test]
fn train_a_tiny_encoder_then_embed_with_it() {
    let ws = Workspace::new();
    let text = training_text(&ws);
    let preset = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/tiny.toml");
    let out = ws.dir.path().join("model");
    let small = [
        "--set",
        "model.hidden_size=32",
        "--set",
        "model.intermediate_size=64",
        "--set",
        "tokenizer.vocab_size=200",
        "--max-steps",
        "4",
        "--batch-size",
        "4",
        "--max-len",
        "32",
        "--set",
        "training.warmup_steps=1",
    ];
    let mut args =
        vec!["train", "--config", path(&preset), "--corpus", path(&text), "--out", path(&out)];
    args.extend(small);
    let done = ws.ok(&args);
    assert!(done.contains("held-out masked-token accuracy"), "{done}");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        (config["hidden_size"].as_u64(), config["architectures"][0].as_str()),
        (Some(32), Some("BertForMaskedLM"))
    );
    let sentence_bert: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("sentence_bert_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(sentence_bert["max_seq_length"], 32, "embed at the training length");
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(log.lines().filter(|line| line.contains("\"loss\"")).count(), 4);
    assert!(log.contains("eval_accuracy") && log.contains("tokens_per_second"));

    let again = ws.fails(&args);
    assert!(again.contains("already holds a training run"), "{again}");
    let bad = ws.fails(&[
        "train",
        "--config",
        path(&preset),
        "--corpus",
        path(&text),
        "--out",
        "x",
        "--set",
        "model.width=3",
    ]);
    assert!(bad.contains("--set model.width=3") && bad.contains("no setting \"width\""), "{bad}");
    // Built-in presets, and settings of a subsection.
    let retrieval = ["train", "--preset", "retrieval", "--corpus", path(&text), "--out", "x"];
    let bad = ws.fails(&[&retrieval[..], &["--set", "training.contrastive.size=3"]].concat());
    assert!(bad.contains("no setting \"size\" in [training.contrastive]"), "{bad}");
    let bad =
        ws.fails(&[&retrieval[..], &["--set", "training.contrastive.temperature=0"]].concat());
    assert!(bad.contains("training.contrastive.temperature must be above 0"), "{bad}");

    let docs = ws.file("docs.jsonl", CORPUS);
    let vectors = ws.ok(&["embed", "--model", path(&out), "--input", path(&docs)]);
    let lines: Vec<Value> =
        vectors.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["id"], "d1");
    let vector: Vec<f64> =
        lines[0]["vector"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(vector.len(), 32);
    assert!((vector.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-4);
    // `-` reads the documents from standard input, as Unix tools do.
    let mut piped = Command::new(env!("CARGO_BIN_EXE_cloze"))
        .args(["embed", "--model", path(&out), "--input", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    piped.stdin.take().unwrap().write_all(CORPUS.as_bytes()).unwrap();
    let piped = piped.wait_with_output().unwrap();
    assert!(piped.status.success());
    assert_eq!(String::from_utf8(piped.stdout).unwrap(), vectors);
    let missing =
        ws.fails(&["embed", "--model", path(&ws.dir.path().join("nope")), "--input", path(&docs)]);
    assert!(missing.contains("config.json"), "{missing}");
}

#[test]
fn a_collection_with_a_model_searches_evaluates_deletes_and_compacts() {
    let ws = Workspace::new();
    let corpus = ws.file("corpus.jsonl", CORPUS);
    let texts: Vec<String> = CORPUS
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["text"].to_string())
        .collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let model = cloze_tests::small_model(&ws.dir.path().join("model"), &texts, 64, 1);
    let other = cloze_tests::small_model(&ws.dir.path().join("other"), &texts, 64, 2);
    let out = ws.ok(&[
        "index",
        "--collection",
        "energy",
        "--corpus",
        path(&corpus),
        "--model",
        path(&model),
    ]);
    assert!(out.contains("holds 3 documents and 3 vectors"), "{out}");
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(ws.data_dir().join("energy/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["semantic"]["model"]["dimension"], 32);
    assert_eq!(manifest["semantic"]["hnsw"]["m"], 16);

    let query = "Bread needs flour, water and time.";
    let hits = ws.json(&[
        "search",
        "--collection",
        "energy",
        "--mode",
        "semantic",
        "--ef-search",
        "20",
        "--json",
        query,
    ]);
    let hits = hits["hits"].as_array().unwrap();
    assert_eq!((hits.len(), hits[0]["id"].as_str()), (3, Some("d3")));
    assert_eq!(hits[0]["title"], "Cooking");

    let queries = ws.file("queries.tsv", format!("q1\t{query}\n"));
    let qrels = ws.file("qrels.tsv", "query-id\tcorpus-id\tscore\nq1\td3\t1\n");
    let judged = |command: &str, mode_or_save: &[&str]| {
        let mut args =
            vec![command, "--collection", "energy", "--queries", path(&queries), "--qrels"];
        args.extend([path(&qrels), "--json"]);
        args.extend(mode_or_save);
        ws.json(&args)
    };
    let report = judged("eval", &["--mode", "semantic"]);
    assert_eq!(report["mrr@10"], 1.0);
    assert_eq!(report["settings"]["semantic"]["model"]["pooling"], "mean");
    assert_eq!(report["settings"]["ef_search"], 400);

    // Hybrid: both sides fused, each hit explaining its ranks; bad fusion flags are refused.
    let hybrid = ws.json(&[
        "search",
        "--collection",
        "energy",
        "--mode",
        "hybrid",
        "--fusion",
        "rrf",
        "--json",
        query,
    ]);
    let top = &hybrid["hits"][0];
    assert_eq!((top["id"].as_str(), top["title"].as_str()), (Some("d3"), Some("Cooking")));
    assert_eq!(top["explanation"]["keyword"]["rank"], 1);
    assert_eq!(top["explanation"]["semantic"]["rank"], 1);
    assert!((top["score"].as_f64().unwrap() - 2.0 / 61.0).abs() < 1e-6, "{top}");
    let error =
        ws.fails(&["search", "--collection", "energy", "--mode", "hybrid", "--alpha", "2", "x"]);
    assert!(error.contains("--alpha: must be between 0 and 1 (found 2)"), "{error}");
    let error = ws.fails(&[
        "search",
        "--collection",
        "energy",
        "--mode",
        "hybrid",
        "--fusion",
        "rrf",
        "--alpha",
        "0.5",
        "x",
    ]);
    assert!(error.contains("--alpha: is for the convex method, not rrf"), "{error}");
    let error = ws.fails(&[
        "search",
        "--collection",
        "energy",
        "--mode",
        "hybrid",
        "--feedback-docs",
        "0",
        "x",
    ]);
    assert!(error.contains("--feedback-docs: must be at least 1"), "{error}");
    // A bad weight is refused even where no setting would use it.
    let bad_weight = ["--feedback-docs", "0", "--feedback-weights=-1"];
    let error = ws.fails(
        &[
            &["tune", "--collection", "energy", "--queries", path(&queries), "--qrels"][..],
            &[path(&qrels)],
            &bad_weight,
        ]
        .concat(),
    );
    assert!(error.contains("--feedback-weights: must be a number of 0 or more"), "{error}");
    let tuned = judged(
        "tune",
        &["--depths", "3", "--alphas", "0,1", "--rrf-ks", "60", "--feedback-docs", "0,2"],
    );
    // (1 rrf + 2 alphas x 3 normalisations) x (no feedback + 3 weights of 2 documents), and
    // both sides find d3 first.
    assert_eq!(tuned["settings"].as_array().unwrap().len(), 28, "{tuned}");
    let with_feedback =
        tuned["settings"].as_array().unwrap().iter().filter(|s| {
            s["fusion"].as_str().unwrap().ends_with("feedback_docs=2 feedback_weight=0.5")
        });
    assert_eq!(with_feedback.count(), 7, "{tuned}");
    assert_eq!((tuned["keyword"].as_f64(), tuned["semantic"].as_f64()), (Some(1.0), Some(1.0)));
    let report = judged("eval", &["--mode", "hybrid"]);
    assert_eq!(
        report["settings"]["fusion"],
        "convex alpha=0.8 normalization=theoretical depth=100"
    );
    // A fusion no better than a side alone is not chosen; --significance 1 takes the best.
    let guarded = judged("tune", &["--depths", "2", "--alphas", "0.3", "--rrf-ks", "5"]);
    assert_eq!(guarded["best_side"], "keyword");
    assert_eq!(guarded["chosen"], "convex alpha=0 normalization=theoretical depth=2", "{guarded}");
    let saved = judged(
        "tune",
        &["--depths", "2", "--alphas", "0.3", "--rrf-ks", "5", "--significance", "1", "--save"],
    );
    assert_eq!(saved["saved"], "rrf k=5 depth=2", "{saved}");
    let report = judged("eval", &["--mode", "hybrid"]);
    assert_eq!(report["settings"]["fusion"], "rrf k=5 depth=2");

    // Without judgments: a pseudo-query from a sentence of each document, tuned on a copy of
    // the collection from which those sentences are taken out; the collection is left as it was.
    let pseudo = ws.json(&[
        "tune",
        "--collection",
        "energy",
        "--json",
        "--pseudo-query-words",
        "3",
        "--depths",
        "3",
        "--alphas",
        "0,1",
        "--rrf-ks",
        "60",
        "--feedback-docs",
        "0",
    ]);
    assert_eq!(pseudo["queries"], 3, "{pseudo}");
    assert_eq!(pseudo["settings"].as_array().unwrap().len(), 7, "{pseudo}");
    let hits = ws.hit_ids("energy", "Bread needs flour, water and time.");
    assert_eq!(hits[0], "d3");
    let left: Vec<String> = std::fs::read_dir(ws.data_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["energy"], "the copy tuned on is removed");
    let error = ws.fails(&["tune", "--collection", "energy", "--pseudo-query-words", "50"]);
    assert!(error.contains("no document of \"energy\" has a sentence of 50 words"), "{error}");

    // Vector settings are fixed at creation: the same ones may be repeated, others are refused.
    let again = ["index", "--collection", "energy", "--corpus", path(&corpus), "--model"];
    ws.ok(&[&again[..], &[path(&model), "--hnsw-m", "16"]].concat());
    let error = ws.fails(&[&again[..], &[path(&model), "--windows"]].concat());
    assert!(error.contains("--windows: collection \"energy\" was created with other"), "{error}");

    // Another model is refused, and nothing changes.
    let error = ws.fails(&[&again[..], &[path(&other)]].concat());
    assert!(error.contains("different models cannot be compared"), "{error}");
    let error = ws.fails(&["delete", "--collection", "energy", "--id", "d1", "--id", "d9"]);
    assert!(error.contains("no document with id d9"), "{error}");
    let out = ws.ok(&["delete", "--collection", "energy", "--id", "d3"]);
    assert!(out.contains("removed 1 documents") && out.contains("now holds 2"), "{out}");
    let ids = ws.json(&["search", "--collection", "energy", "--mode", "semantic", "--json", query]);
    assert_eq!(ids["hits"].as_array().unwrap().len(), 2);
    // Three vectors replaced by indexing again and one deleted; merges keep them below a
    // quarter of a segment, and a compaction drops them all.
    let out = ws.ok(&["compact", "--collection", "energy"]);
    assert!(out.contains("dropped 4 dead vectors, 2 remain in one segment"), "{out}");
    let out = ws.ok(&["compact", "--collection", "energy"]);
    assert!(out.contains("dropped 0 dead vectors, 2 remain in one segment"), "{out}");

    let plain = ws.file("plain.jsonl", CORPUS);
    ws.ok(&["index", "--collection", "plain", "--corpus", path(&plain)]);
    let listing = ws.json(&["collections", "--json"]);
    assert_eq!(listing["collections"][0]["vectors"], 2);
    assert_eq!(listing["collections"][0]["model"], path(&model));
    assert_eq!(listing["collections"][1]["model"], Value::Null);
    let error = ws.fails(&["search", "--collection", "plain", "--mode", "semantic", "x"]);
    assert!(error.contains("has no vectors: create it with a model"), "{error}");
    let error = ws.fails(&[
        "index",
        "--collection",
        "new",
        "--corpus",
        path(&corpus),
        "--model",
        "/nonexistent",
    ]);
    assert!(error.contains("--model /nonexistent"), "{error}");
    let error = ws.fails(&["index", "--collection", "new", "--corpus", path(&corpus), "--windows"]);
    assert!(error.contains("--model"), "{error}");
    let short_windows = ["--model", path(&model), "--windows", "--window-length"];
    let error = ws.fails(
        &[&["index", "--collection", "new", "--corpus", path(&corpus)][..], &short_windows, &["2"]]
            .concat(),
    );
    assert!(error.contains("window_length is 2; it must be between 3"), "{error}");
    assert!(!ws.data_dir().join("new").exists());
    // Half a window of overlap unless asked: 8 tokens a window besides [CLS] and [SEP].
    ws.ok(&[
        &["index", "--collection", "new", "--corpus", path(&corpus)][..],
        &short_windows,
        &["10"],
    ]
    .concat());
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(ws.data_dir().join("new/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["semantic"]["window_length"], 10);
    assert_eq!(manifest["semantic"]["window_overlap"], 4);
}
