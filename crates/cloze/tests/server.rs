//! `cloze serve` end to end: a real server process on a free loopback port, driven over HTTP.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use cloze_tests::{beir_collection, copy_dir};
use serde_json::{json, Value};

mod common;
use common::{ids, model, scifact_lines, Server};

/// The first 800 SciFact documents in a collection `sf` with a small model, built once and
/// copied into each test's own data folder.
struct Loaded {
    _dir: tempfile::TempDir,
    data: PathBuf,
    ids: Vec<String>,
}

fn loaded() -> &'static Loaded {
    static LOADED: OnceLock<Loaded> = OnceLock::new();
    LOADED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("index");
        let model = model(dir.path());
        let server = Server::start(&data, &[]);
        server.ok("PUT", "/collections/sf", Some(&json!({"model": model}).to_string()));
        let (lines, ids) = scifact_lines(0..800);
        assert_eq!(server.ok("POST", "/collections/sf/_bulk", Some(&lines))["errors"], false);
        server.stop();
        Loaded { _dir: dir, data, ids }
    })
}

/// A server of its own over a copy of [`loaded`]'s collection, and its first document ids.
fn server_with_scifact(work: &Path) -> (Server, &'static [String]) {
    let loaded = loaded();
    let data = work.join("index");
    copy_dir(&loaded.data, &data);
    (Server::start(&data, &[]), &loaded.ids)
}

const TITLE: &str = "Microstructural development of human newborn cerebral white matter assessed in vivo by diffusion tensor magnetic resonance imaging.";

#[test]
fn a_fresh_server_is_healthy_empty_and_checks_vector_settings() {
    let work = tempfile::tempdir().unwrap();
    let model = model(work.path());
    let server = Server::start(&work.path().join("index"), &[]);
    assert_eq!(server.ok("GET", "/health", None)["status"], "ok");
    assert_eq!(server.ok("GET", "/collections", None)["collections"], json!([]));
    let (status, page) = server.call_text("GET", "/", None);
    assert_eq!(status, 200);
    assert!(page.contains("Cloze search") && page.contains("no collection yet"));

    let created = server.ok(
        "PUT",
        "/collections/sf",
        Some(&json!({"model": model, "hnsw": {"m": 12}}).to_string()),
    );
    assert_eq!(created["settings"]["semantic"]["hnsw"]["m"], 12);
    let windows = json!({"model": model, "window_overlap": 20, "window_length": 16});
    server.refused("PUT", "/collections/w", &windows.to_string(), 400, "window_overlap is 20");
    server.stop();
}

#[test]
fn searches_go_on_while_a_bulk_load_runs_and_see_it_whole_or_not_at_all() {
    let work = tempfile::tempdir().unwrap();
    let model = model(work.path());
    let server = Server::start(&work.path().join("index"), &[]);
    server.ok("PUT", "/collections/sf", Some(&json!({"model": model}).to_string()));
    // BEIR lines are documents carrying their own _id.
    let (first, _) = scifact_lines(0..400);
    let bulk = server.ok("POST", "/collections/sf/_bulk", Some(&first));
    assert_eq!(bulk["items"].as_array().unwrap().len(), 400);
    assert_eq!(bulk["items"][0]["index"]["result"], "created");

    let (second, _) = scifact_lines(400..800);
    let ingesting = AtomicBool::new(true);
    let searches_during_ingest = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let result = server.ok("POST", "/collections/sf/_bulk", Some(&second));
            ingesting.store(false, Ordering::SeqCst);
            result
        });
        let mut during = 0;
        while ingesting.load(Ordering::SeqCst) {
            let found = server.search("sf", json!({"q": "cancer", "mode": "hybrid", "k": 5}));
            assert_eq!(ids(&found).len(), 5);
            let total = server.ok("GET", "/collections/sf", None)["documents"].as_u64().unwrap();
            assert!(total == 400 || total == 800, "{total}");
            during += ingesting.load(Ordering::SeqCst) as usize;
        }
        assert_eq!(writer.join().unwrap()["errors"], false);
        during
    });
    assert!(searches_during_ingest > 0, "no search ran while the bulk ingest did");
    let described = server.ok("GET", "/collections/sf", None);
    assert_eq!(
        (described["documents"].as_u64(), described["vectors"].as_u64()),
        (Some(800), Some(800))
    );
    server.stop();
}

#[test]
fn every_mode_ranks_pages_highlights_and_explains() {
    let work = tempfile::tempdir().unwrap();
    let (server, first_ids) = server_with_scifact(work.path());
    let keyword =
        server.search("sf", json!({"q": TITLE, "k": 3, "highlight": true, "explain": true}));
    assert_eq!(ids(&keyword)[0], first_ids[0]);
    assert!(keyword["total"].as_u64().unwrap() > 3);
    assert!(keyword["hits"][0]["highlight"].as_str().unwrap().contains("<em>"));
    assert_eq!(keyword["hits"][0]["explanation"]["keyword"]["rank"], 1);
    let semantic = server.search("sf", json!({"q": TITLE, "mode": "semantic", "k": 4}));
    assert_eq!(semantic["mode"], "semantic");
    assert_eq!(ids(&semantic).len(), 4);
    assert!(semantic["hits"][0].get("explanation").is_none(), "explanations only when asked");
    let hybrid = server.search(
        "sf",
        json!({"q": TITLE, "mode": "hybrid", "k": 10, "explain": true, "fusion": {"method": "rrf", "k": 60}}),
    );
    // Each hit explains its fused score: the sum of 1 / (60 + rank) over the sides that found it.
    for hit in hybrid["hits"].as_array().unwrap() {
        let explanation = &hit["explanation"];
        let side =
            |name: &str| explanation[name]["rank"].as_f64().map_or(0.0, |rank| 1.0 / (60.0 + rank));
        let fused = side("keyword") + side("semantic");
        assert!((hit["score"].as_f64().unwrap() - fused).abs() < 1e-6, "{hit}");
        assert_eq!(hit["score"], explanation["fused"]);
    }
    let page = server.search("sf", json!({"q": "cancer", "k": 5, "offset": 5}));
    let both = server.search("sf", json!({"q": "cancer", "k": 10}));
    assert_eq!(ids(&page), ids(&both)[5..]);
    server.stop();
}

#[test]
fn metadata_filters_narrow_every_mode() {
    let work = tempfile::tempdir().unwrap();
    let (server, _) = server_with_scifact(work.path());
    let tagged = "{\"index\": {\"_id\": \"t1\"}}\n{\"title\": \"Tagged\", \"text\": \"cancer study one\", \"year\": 1999, \"lang\": \"en\"}\n\
                  {\"_id\": \"t2\", \"text\": \"cancer study two\", \"year\": 2012, \"lang\": \"fr\"}\n";
    server.ok("POST", "/collections/sf/_bulk", Some(tagged));
    for mode in ["keyword", "semantic", "hybrid"] {
        let only = |filter: Value| {
            ids(&server.search("sf", json!({"q": "cancer study", "mode": mode, "filter": filter})))
                .into_iter()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(only(json!({"lang": "fr"})), ["t2"], "{mode}");
        assert_eq!(only(json!({"year": {"lt": 2000}})), ["t1"], "{mode}");
        assert_eq!(only(json!({"year": {"gte": 1999}, "lang": ["en", "fr"]})).len(), 2, "{mode}");
    }
    let document = server.ok("GET", "/collections/sf/documents/t2", None);
    assert_eq!(
        (document["text"].as_str(), document["metadata"]["year"].as_u64()),
        (Some("cancer study two"), Some(2012))
    );
    server.stop();
}

#[test]
fn rank_eval_over_http_scores_and_compares_as_cloze_eval_does() {
    let work = tempfile::tempdir().unwrap();
    let (server, loaded_ids) = server_with_scifact(work.path());
    let data = work.path().join("index");
    let scifact = beir_collection("scifact");
    let loaded: std::collections::HashSet<&String> = loaded_ids.iter().collect();
    let qrels_text = std::fs::read_to_string(&scifact.test_qrels).unwrap();
    let mut judged: std::collections::BTreeMap<&str, Vec<(&str, i64)>> = Default::default();
    for line in qrels_text.lines().skip(1) {
        let columns: Vec<&str> = line.split('\t').collect();
        judged
            .entry(columns[0])
            .or_default()
            .push((columns[1], columns[2].trim().parse().unwrap()));
    }
    judged.retain(|_, ratings| ratings.iter().all(|(doc, _)| loaded.contains(&doc.to_string())));
    assert!(judged.len() >= 30, "{}", judged.len());
    let queries: std::collections::HashMap<String, String> =
        std::fs::read_to_string(&scifact.queries)
            .unwrap()
            .lines()
            .map(|line| {
                let query: Value = serde_json::from_str(line).unwrap();
                (
                    query["_id"].as_str().unwrap().to_string(),
                    query["text"].as_str().unwrap().to_string(),
                )
            })
            .collect();
    let requests: Vec<Value> = judged
        .iter()
        .map(|(id, ratings)| {
            let ratings: Vec<Value> =
                ratings.iter().map(|(doc, grade)| json!({"_id": doc, "rating": grade})).collect();
            json!({"id": id, "query": queries[*id], "ratings": ratings})
        })
        .collect();
    let subset_qrels = work.path().join("qrels.tsv");
    let mut tsv = String::from("query-id\tcorpus-id\tscore\n");
    for (id, ratings) in &judged {
        for (doc, grade) in ratings {
            tsv.push_str(&format!("{id}\t{doc}\t{grade}\n"));
        }
    }
    std::fs::write(&subset_qrels, tsv).unwrap();
    let cloze_eval = |modes: &str, metrics: &str, extra: &[&str]| -> Value {
        let cli = Command::new(env!("CARGO_BIN_EXE_cloze"))
            .arg("--data-dir")
            .arg(&data)
            .args(["eval", "--collection", "sf", "--mode", modes, "--depth", "100", "--json"])
            .args(["--metrics", metrics])
            .args(extra)
            .arg("--queries")
            .arg(&scifact.queries)
            .arg("--qrels")
            .arg(&subset_qrels)
            .output()
            .unwrap();
        assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
        serde_json::from_slice(&cli.stdout).unwrap()
    };
    for mode in ["keyword", "hybrid"] {
        let body =
            json!({"requests": requests, "mode": mode, "metrics": ["ndcg@10", "recall@100"]});
        let scored = server.ok("POST", "/collections/sf/_rank_eval", Some(&body.to_string()));
        assert_eq!(scored["queries"], judged.len());
        let cli = cloze_eval(mode, "ndcg@10,recall@100", &[]);
        for metric in ["ndcg@10", "recall@100"] {
            let (http, cli) =
                (scored["metrics"][metric].as_f64().unwrap(), cli[metric].as_f64().unwrap());
            assert!((http - cli).abs() < 1e-9, "{mode} {metric}: HTTP {http}, cloze eval {cli}");
        }
        if mode == "keyword" {
            assert!(scored["metrics"]["ndcg@10"].as_f64().unwrap() > 0.5, "{scored}");
        }
    }

    // Several modes at once: the same comparison `cloze eval --mode keyword,hybrid --json` makes.
    let body = json!({"requests": requests, "modes": ["keyword", "hybrid"], "metrics": ["ndcg@10"], "trials": 2000});
    let compared = server.ok("POST", "/collections/sf/_rank_eval", Some(&body.to_string()));
    let mut cli = cloze_eval("keyword,hybrid", "ndcg@10", &["--trials", "2000"]);
    cli.as_object_mut().unwrap().remove("settings");
    let mut http = compared.clone();
    http.as_object_mut().unwrap().remove("took_ms");
    assert_eq!(http, cli);
    assert_eq!(compared["baseline"], "keyword");
    let versus = &compared["runs"][1]["metrics"][0]["versus_baseline"];
    assert!(versus["t_test_p"].is_f64() && versus["wins"].is_u64(), "{compared}");
    server.refused(
        "POST",
        "/collections/sf/_rank_eval",
        &json!({"requests": requests, "modes": ["keyword", "fuzzy"]}).to_string(),
        400,
        "modes[1]: unknown search mode",
    );
    server.stop();
}

#[test]
fn deletes_reach_both_indexes() {
    let work = tempfile::tempdir().unwrap();
    let (server, first_ids) = server_with_scifact(work.path());
    server.ok("PUT", "/collections/plain", Some("{}"));
    server.ok("DELETE", &format!("/collections/sf/documents/{}", first_ids[0]), None);
    server.refused(
        "GET",
        &format!("/collections/sf/documents/{}", first_ids[0]),
        "",
        404,
        "no document",
    );
    let after = server.search("sf", json!({"q": TITLE, "mode": "hybrid", "k": 50}));
    assert!(!ids(&after).contains(&first_ids[0].as_str()));
    let described = server.ok("GET", "/collections/sf", None);
    assert_eq!(
        (described["documents"].as_u64(), described["vectors"].as_u64()),
        (Some(799), Some(799))
    );
    server.ok("DELETE", "/collections/plain", None);
    server.refused("GET", "/collections/plain", "", 404, "no collection named \"plain\"");
    server.stop();
}

#[test]
fn every_answer_says_where_the_server_spent_its_time() {
    let work = tempfile::tempdir().unwrap();
    let (server, _) = server_with_scifact(work.path());
    let timing = |mode: &str| -> Vec<(String, f64)> {
        let url = format!("{}/collections/sf/_search", server.base);
        let body = json!({"q": "vitamin d and cancer", "mode": mode}).to_string();
        let response = server.agent.post(&url).send(body).unwrap();
        let header = response.headers().get("server-timing").expect("a Server-Timing header");
        let stage = |s: &str| {
            let (name, ms) = s.split_once(";dur=").unwrap_or_else(|| panic!("{s}"));
            (name.to_string(), ms.parse::<f64>().unwrap())
        };
        header.to_str().unwrap().split(", ").map(stage).collect()
    };
    let hybrid = timing("hybrid");
    let names: Vec<&str> = hybrid.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["encode", "keyword", "vector", "fusion", "documents", "serialize"]);
    assert!(hybrid.iter().all(|(_, ms)| *ms > 0.0), "{hybrid:?}");
    let keyword: Vec<f64> = timing("keyword").into_iter().map(|(_, ms)| ms).collect();
    assert!(keyword[0] == 0.0 && keyword[2] == 0.0 && keyword[1] > 0.0, "{keyword:?}");
    let metrics = server.call_text("GET", "/metrics", None).1;
    assert!(metrics.contains("cloze_http_requests_total{method=\"POST\",route=\"/collections/{name}/_search\",status=\"200\"}"));
    assert!(metrics.contains("cloze_collection_documents{collection=\"sf\"} 800"), "{metrics}");
    server.stop();
}

#[test]
fn a_restart_loses_nothing() {
    let work = tempfile::tempdir().unwrap();
    let (server, _) = server_with_scifact(work.path());
    server.ok(
        "POST",
        "/collections/sf/_bulk",
        Some("{\"_id\": \"new\", \"text\": \"cancer cells\"}\n"),
    );
    let before = server.search("sf", json!({"q": "cancer", "mode": "hybrid", "k": 10}));
    server.stop();
    let server = Server::start(&work.path().join("index"), &[]);
    let names: Vec<Value> = server.ok("GET", "/collections", None)["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| json!([c["name"], c["documents"], c["vectors"]]))
        .collect();
    assert_eq!(names, [json!(["sf", 801, 801])]);
    let again = server.search("sf", json!({"q": "cancer", "mode": "hybrid", "k": 10}));
    assert_eq!(again["hits"], before["hits"]);
    server.stop();
}

#[test]
fn bad_requests_get_a_4xx_that_says_what_and_where_and_change_nothing() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start(&work.path().join("index"), &["--max-body-bytes", "100000"]);
    server.ok("PUT", "/collections/c", Some(""));
    server.ok(
        "POST",
        "/collections/c/_bulk",
        Some("{\"_id\": \"1\", \"text\": \"dogs and cats\"}\n"),
    );

    let search = "/collections/c/_search";
    server.refused("POST", search, "{\"q\": \"dogs\"", 400, "not valid JSON");
    server.refused(
        "POST",
        search,
        "{\"q\": \"dogs\", \"size\": 3}",
        400,
        "size: unknown field `size`",
    );
    server.refused(
        "POST",
        search,
        "{\"q\": \"dogs\", \"k\": \"ten\"}",
        400,
        "k: invalid type: string",
    );
    server.refused(
        "POST",
        search,
        "{\"q\": \"dogs\", \"k\": 0}",
        400,
        "k: must be between 1 and 10000",
    );
    server.refused(
        "POST",
        search,
        "{\"q\": \"dogs\", \"k\": 1000000}",
        400,
        "k: must be between 1 and 10000",
    );
    server.refused(
        "POST",
        search,
        "{\"q\": \"dogs\", \"k\": 10, \"offset\": 9995}",
        400,
        "offset: offset + k",
    );
    server.refused("POST", search, "{\"k\": 3}", 400, "missing field `q`");
    server.refused(
        "POST",
        search,
        "{\"q\": \"dogs\", \"mode\": \"fuzzy\"}",
        400,
        "mode: unknown search mode",
    );
    server.refused(
        "POST",
        search,
        "{\"q\": \"dogs\", \"mode\": \"semantic\"}",
        400,
        "needs a collection with a model",
    );
    server.refused(
        "POST",
        search,
        "{\"q\": \"d\", \"fusion\": {\"alpha\": 2}}",
        400,
        "fusion.alpha: must be between 0 and 1",
    );
    server.refused(
        "POST",
        search,
        "{\"q\": \"d\", \"filter\": {\"year\": {\"after\": 1}}}",
        400,
        "filter.year.after: unknown operator",
    );
    server.refused(
        "POST",
        "/collections/nope/_search",
        "{\"q\": \"dogs\"}",
        404,
        "no collection named \"nope\"",
    );
    server.refused("PUT", "/collections/c", "{}", 409, "already exists");
    server.refused("PUT", "/collections/bad*name", "{}", 400, "invalid collection name");
    server.refused(
        "PUT",
        "/collections/d",
        "{\"analyzer\": \"klingon\"}",
        400,
        "analyzer: unknown preset",
    );
    server.refused("PUT", "/collections/d", "{\"model\": \"/no/such/model\"}", 400, "model:");
    server.refused(
        "POST",
        "/collections/c/_rank_eval",
        "{\"requests\": []}",
        400,
        "requests: give at least one",
    );
    server.refused(
        "POST",
        "/collections/c/_rank_eval",
        "{\"requests\": [{\"id\": \"q\", \"query\": \"dogs\", \"ratings\": [{\"_id\": \"1\", \"rating\": 1}]}], \"metrics\": [\"ndcg@ten\"]}",
        400,
        "metrics[0]:",
    );
    server.refused("GET", "/collections/c/nowhere", "", 404, "no route GET /collections/c/nowhere");
    assert!(
        server.call("GET", "/collections/d", None).0 == 404,
        "a refused create left a collection"
    );

    // A bulk request with a wrong line applies none of its lines and lists the wrong ones.
    let bulk = "{\"_id\": \"2\", \"text\": \"new\"}\n{\"delete\": {\"_id\": \"1\"}}\nnot json\n{\"_id\": \"3\"}\n";
    let refused =
        server.refused("POST", "/collections/c/_bulk", bulk, 400, "line 3: not valid JSON");
    assert_eq!(
        refused["items"],
        json!([
            {"line": 3, "reason": refused["items"][0]["reason"]},
            {"line": 4, "reason": "missing field \"text\""},
        ])
    );
    let hits = server.search("c", json!({"q": "dogs new"}));
    assert_eq!(ids(&hits), ["1"], "a refused bulk changed the collection");

    // Bodies over the limit are refused before they are read, whatever their content.
    let huge = format!("{{\"q\": \"{}\"}}", "x".repeat(200_000));
    server.refused("POST", search, &huge, 413, "over the limit of 100000 bytes");
    server.refused("POST", "/collections/c/_bulk", &huge, 413, "max_body_bytes");
    assert_eq!(server.ok("GET", "/collections/c", None)["documents"], 1);
}

/// Every route the OpenAPI document lists answers (none falls through to "no route"), and the
/// document lists every route the service answers.
#[test]
fn the_openapi_document_describes_the_routes_there_are() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start(&work.path().join("index"), &[]);
    let spec = server.ok("GET", "/openapi.json", None);
    assert_eq!(spec, serde_json::from_str::<Value>(cloze_server::OPENAPI).unwrap());
    let mut listed = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys().filter(|key| *key != "parameters") {
            let concrete = path.replace("{name}", "c").replace("{id}", "1");
            let (_, body) = server.call_text(&method.to_uppercase(), &concrete, Some("{}"));
            assert!(!body.contains("no_route"), "{method} {path}: {body}");
            listed.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    listed.sort();
    let expected = [
        "DELETE /collections/{name}",
        "DELETE /collections/{name}/documents/{id}",
        "GET /",
        "GET /collections",
        "GET /collections/{name}",
        "GET /collections/{name}/documents/{id}",
        "GET /health",
        "GET /metrics",
        "GET /openapi.json",
        "GET /sample.jsonl",
        "GET /snapshots",
        "POST /collections/{name}/_bulk",
        "POST /collections/{name}/_rank_eval",
        "POST /collections/{name}/_restore",
        "POST /collections/{name}/_search",
        "POST /collections/{name}/_snapshot",
        "POST /collections/{name}/_tune",
        "PUT /collections/{name}",
    ];
    assert_eq!(listed, expected);
    server.stop();
}

#[test]
fn a_shutdown_signal_lets_a_bulk_ingest_in_flight_finish_and_commit() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("index");
    let model = model(work.path());
    let server = Server::start(&data, &[]);
    server.ok("PUT", "/collections/sf", Some(&json!({"model": model}).to_string()));
    let (lines, ids) = scifact_lines(0..600);
    let pid = server.child.id() as libc::pid_t;
    let response = std::thread::scope(|scope| {
        let bulk = scope.spawn(|| server.call("POST", "/collections/sf/_bulk", Some(&lines)));
        // Wait until the server holds the request, then ask it to stop.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        bulk.join().unwrap()
    });
    assert_eq!(response.0, 200, "{}", response.1);
    // It was still running when the signal came.
    let took_ms = response.1["took_ms"].as_f64().unwrap();
    assert!(took_ms > 300.0, "the bulk ingest took {took_ms} ms: make it longer");
    let mut server = server;
    assert!(server.child.wait().unwrap().success());
    let server = Server::start(&data, &[]);
    let described = server.ok("GET", "/collections/sf", None);
    assert_eq!(described["documents"], ids.len());
    server.ok("GET", &format!("/collections/sf/documents/{}", ids[599]), None);
    server.stop();
}

/// A WebDriver session with headless Chromium (Debian's chromium and chromium-driver).
struct Browser {
    driver: Child,
    session: String,
    agent: ureq::Agent,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is not installed: run tests/install-deps.sh (Debian's chromium-driver)");
        let profile = tempfile::tempdir().unwrap();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");
        for attempt in 0.. {
            if agent.get(format!("{base}/status")).call().is_ok() {
                break;
            }
            assert!(attempt < 100, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        // The flags that let Chromium run headless as root on a machine with no network.
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ]
        .map(String::from)
        .into_iter()
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
        }}});
        let mut browser = Browser { driver, session: String::new(), agent, _profile: profile };
        let created = browser.command("POST", &format!("{base}/session"), Some(capabilities));
        browser.session = format!("{base}/session/{}", created["sessionId"].as_str().unwrap());
        browser
    }

    /// Sends a WebDriver command and returns its `value`.
    fn command(&self, method: &str, url: &str, body: Option<Value>) -> Value {
        let response = match method {
            "GET" => self.agent.get(url).call(),
            "DELETE" => self.agent.delete(url).call(),
            _ => self.agent.post(url).send_json(body.unwrap_or(json!({}))),
        };
        let mut response = response.unwrap();
        let status = response.status().as_u16();
        let value: Value = response.body_mut().read_json().unwrap();
        assert_eq!(status, 200, "{method} {url}: {value}");
        value.get("value").cloned().unwrap_or(Value::Null)
    }

    fn session(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.command(method, &format!("{}{path}", self.session), body)
    }

    fn open(&self, url: &str) {
        self.session("POST", "/url", Some(json!({"url": url})));
    }

    fn element(&self, css: &str) -> String {
        let found =
            self.session("POST", "/element", Some(json!({"using": "css selector", "value": css})));
        found.as_object().unwrap().values().next().unwrap().as_str().unwrap().to_string()
    }

    fn script(&self, script: &str) -> Value {
        self.session("POST", "/execute/sync", Some(json!({"script": script, "args": []})))
    }

    /// Runs `script` until it returns something other than null or false.
    fn wait_for(&self, script: &str) -> Value {
        for _ in 0..100 {
            let value = self.script(script);
            if !value.is_null() && value != json!(false) {
                return value;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for: {script}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.agent.delete(&self.session).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[test]
fn the_search_page_shows_highlighted_results_as_a_person_types() {
    let work = tempfile::tempdir().unwrap();
    let model = model(work.path());
    let server = Server::start(&work.path().join("index"), &[]);
    let browser = Browser::start();

    // With no collection, the page says how to add one.
    browser.open(&format!("{}/", server.base));
    assert_eq!(browser.wait_for("return !document.getElementById('empty').hidden"), true);

    server.ok("PUT", "/collections/sf", Some(&json!({"model": model}).to_string()));
    let (lines, ids) = scifact_lines(0..200);
    server.ok("POST", "/collections/sf/_bulk", Some(&lines));
    browser.open(&format!("{}/", server.base));
    browser.wait_for("return document.querySelectorAll('#collection option').length == 1");

    let input = browser.element("#q");
    browser.session(
        "POST",
        &format!("/element/{input}/value"),
        Some(json!({"text": "newborn white matter"})),
    );
    let first = browser.wait_for(
        "const hit = document.querySelector('li.hit'); \
         return hit && [hit.querySelector('.id').textContent, hit.querySelector('.snippet').innerHTML, \
                        hit.querySelector('.ranks').textContent];",
    );
    assert_eq!(first[0], ids[0].as_str(), "{first}");
    assert!(first[1].as_str().unwrap().contains("<em>white</em>"), "{first}");
    assert!(first[2].as_str().unwrap().starts_with("keyword #1"), "{first}");

    // Switching to hybrid shows each side's rank.
    let hybrid = browser.element("input[value=hybrid]");
    browser.session("POST", &format!("/element/{hybrid}/click"), None);
    let status = browser.wait_for(
        "const s = document.getElementById('status').textContent; return s.includes('(hybrid)') && s;",
    );
    assert!(status.as_str().unwrap().contains("shown"), "{status}");
    let ranks = browser.script("return [...document.querySelectorAll('li.hit .ranks')].map(r => r.textContent).join(' | ')");
    assert!(ranks.as_str().unwrap().contains("semantic #"), "{ranks}");
    assert_eq!(browser.script("return document.querySelectorAll('li.hit').length"), 10);

    // The address keeps the search: opened again, the page shows the same results.
    let address = browser.script("return location.href");
    let address = address.as_str().unwrap();
    assert!(address.contains("mode=hybrid") && address.contains("q=newborn+white+matter"));
    let shown = "return [...document.querySelectorAll('li.hit .id')].map(i => i.textContent)";
    let before = browser.script(shown);
    browser.open(address);
    browser.wait_for(
        "const s = document.getElementById('status').textContent; return s.includes('(hybrid)') && s;",
    );
    assert_eq!(browser.script("return document.getElementById('q').value"), "newborn white matter");
    assert_eq!(browser.script(shown), before);
    drop(browser);
    server.stop();
}

#[test]
fn the_search_page_shows_the_key_box_only_with_keys_and_loads_the_sample_in_one_click() {
    let work = tempfile::tempdir().unwrap();
    let browser = Browser::start();
    let visible = |id: &str| {
        browser.script(&format!("return document.getElementById('{id}').checkVisibility()"))
    };

    // No keys: what to do first, and no key box.
    let open = Server::start(&work.path().join("open"), &[]);
    browser.open(&format!("{}/", open.base));
    browser.wait_for("return document.getElementById('empty').checkVisibility()");
    assert_eq!(visible("login"), false, "a key box on a server with no keys");

    // One click loads the sample collection and searches it.
    let button = browser.element("#load-sample");
    browser.session("POST", &format!("/element/{button}/click"), None);
    let found = browser.wait_for(
        "const ids = [...document.querySelectorAll('li.hit .id')].map(i => i.textContent); \
         return ids.length > 0 && ids;",
    );
    assert!(found.as_array().unwrap()[..3].contains(&json!("europa")), "{found}");
    assert_eq!(visible("empty"), false);
    open.stop();

    // Keys: the key box, and nothing to search until a key is given.
    let keyed = Server::start_with(
        &work.path().join("keyed"),
        &[],
        &[("CLOZE_ADMIN_KEY", "admin-key-for-tests-0123456789")],
    );
    browser.open(&format!("{}/", keyed.base));
    browser.wait_for("return document.getElementById('login').checkVisibility()");
    assert_eq!(visible("search"), false, "a search box before the key is given");
    drop(browser);
    keyed.stop();
}

#[test]
fn snapshots_taken_while_writes_go_on_restore_whole_commits() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("index");
    let model = model(work.path());
    let server = Server::start(&data, &[]);
    server.ok("PUT", "/collections/sf", Some(&json!({"model": model}).to_string()));
    // Bulks of 25 documents go on while snapshots are taken: each must hold whole bulks.
    let (lines, _) = scifact_lines(0..200);
    let lines: Vec<&str> = lines.lines().collect();
    let snapshots: Vec<Value> = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            for chunk in lines.chunks(25) {
                server.ok("POST", "/collections/sf/_bulk", Some(&chunk.join("\n")));
            }
        });
        let mut taken = Vec::new();
        while !writer.is_finished() {
            taken.push(server.ok("POST", "/collections/sf/_snapshot", Some("")));
        }
        writer.join().unwrap();
        taken
    });
    assert!(snapshots.len() >= 2, "{snapshots:?}");
    for snapshot in &snapshots {
        assert_eq!(snapshot["documents"].as_u64().unwrap() % 25, 0, "{snapshot}");
    }
    let listed = server.ok("GET", "/snapshots", None);
    assert_eq!(listed["snapshots"].as_array().unwrap().len(), snapshots.len());

    // Restore one as a new collection and over the original; both answer semantic searches.
    let chosen = snapshots.iter().find(|s| s["documents"].as_u64() > Some(0)).unwrap();
    let name = chosen["name"].as_str().unwrap();
    let restore = json!({"snapshot": name}).to_string();
    let restored = server.ok("POST", "/collections/copy/_restore", Some(&restore));
    assert_eq!(restored["documents"], chosen["documents"]);
    server.refused("POST", "/collections/sf/_restore", &restore, 409, "already exists");
    let replace = json!({"snapshot": name, "replace": true}).to_string();
    server.ok("POST", "/collections/sf/_restore", Some(&replace));
    assert_eq!(server.ok("GET", "/collections/sf", None)["documents"], chosen["documents"]);
    for collection in ["sf", "copy"] {
        let hits = server.search(collection, json!({"q": "cells", "mode": "hybrid", "k": 3}));
        assert_eq!(ids(&hits).len(), 3);
    }
    server.refused(
        "POST",
        "/collections/x/_restore",
        "{\"snapshot\": \"nope\"}",
        404,
        "no snapshot",
    );
    server.refused(
        "POST",
        "/collections/x/_restore",
        "{\"snapshot\": \"../sf\"}",
        400,
        "snapshot:",
    );

    // The command line snapshots the collection the server is serving, and restores it under a
    // new name that the server then serves.
    let out = work.path().join("cli-snapshot");
    let cli = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_cloze"))
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    };
    cli(&["snapshot", "--collection", "sf", "--out", out.to_str().unwrap()]);
    cli(&["restore", "--collection", "from-cli", "--from", out.to_str().unwrap()]);
    assert_eq!(server.ok("GET", "/collections/from-cli", None)["documents"], chosen["documents"]);
    server.stop();
}
