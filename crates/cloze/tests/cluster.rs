//! A clustered collection on three hosts (network namespaces on this machine; see
//! tests/cluster.rs), three NATS servers in one JetStream cluster, three Cloze nodes and a
//! router, against one `cloze serve` given the same writes: it ranks as the one node does, and
//! keeps every acknowledged write through node crashes, a NATS server cut off the network,
//! a rolling restart and a fourth node joining, answering every search in full meanwhile.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloze_corpus::{read_queries, DocumentReader, FieldMapping};
use cloze_tests::beir_collection;
use cloze_tests::cluster::{caught_up, post, Cluster, Process};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

const PARTITIONS: u32 = 12;
const REPLICAS: u32 = 2;
const DIMENSION: usize = 16;
const BULK_DOCUMENTS: usize = 250;

/// A document's own vector: its words hashed into a few dimensions, so semantic and hybrid
/// searches have something to rank by without a model.
fn vector_of(text: &str) -> Vec<f32> {
    let mut vector = vec![0f32; DIMENSION];
    for word in text.split_whitespace() {
        let word = word.to_lowercase();
        let hash = word.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        vector[(hash % DIMENSION as u64) as usize] += if hash & 1 == 0 { 1.0 } else { -1.0 };
    }
    vector[0] += 0.01;
    vector
}

/// SciFact as bulk bodies with vectors.
fn scifact_bulks() -> (Vec<String>, usize) {
    let scifact = beir_collection("scifact");
    let documents: Vec<_> = DocumentReader::open(&scifact.corpus, FieldMapping::default())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let count = documents.len();
    let bodies = documents
        .chunks(BULK_DOCUMENTS)
        .map(|chunk| {
            chunk
                .iter()
                .map(|d| {
                    let vector = vector_of(&d.searchable_text());
                    format!(
                        "{}\n{}\n",
                        json!({"index": {"_id": d.id}}),
                        json!({"title": d.title, "text": d.text, "vector": vector})
                    )
                })
                .collect()
        })
        .collect();
    (bodies, count)
}

fn put(url: &str, body: &str) -> Value {
    ureq::put(url)
        .header("Content-Type", "application/json")
        .send(body)
        .unwrap_or_else(|e| panic!("PUT {url}: {e}"))
        .body_mut()
        .read_json()
        .unwrap()
}

/// One `cloze serve` on loopback.
fn single_node(dir: &std::path::Path) -> (Process, String) {
    use std::io::BufRead;
    let log = dir.join("single.log");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cloze"));
    command
        .arg("--data-dir")
        .arg(dir.join("single"))
        .args(["serve", "--bind", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = command.spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("listening on ").expect("an address").to_string();
    (Process::adopt(child, log), url)
}

/// The `_rank_eval` body for SciFact's test queries in `modes`.
fn rank_eval_body(modes: &[&str]) -> String {
    let scifact = beir_collection("scifact");
    let queries = read_queries(&scifact.queries).unwrap();
    let qrels = std::fs::read_to_string(&scifact.test_qrels).unwrap();
    let mut ratings: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    for line in qrels.lines().skip(1) {
        let fields: Vec<&str> = line.split('\t').collect();
        ratings
            .entry(fields[0].to_string())
            .or_default()
            .push(json!({"_id": fields[1], "rating": fields[2].parse::<i64>().unwrap()}));
    }
    let requests: Vec<Value> = queries
        .iter()
        .filter_map(|q| ratings.get(&q.id).map(|r| json!({"id": q.id, "query": q.text, "vector": vector_of(&q.text), "ratings": r})))
        .collect();
    json!({"requests": requests, "modes": modes, "metrics": ["ndcg@10"], "k": 100, "trials": 1})
        .to_string()
}

/// nDCG@10 of each mode, from a `_rank_eval` comparison.
fn ndcg(answer: &Value) -> Vec<f64> {
    let runs = answer["runs"].as_array().unwrap_or_else(|| panic!("{answer}"));
    runs.iter()
        .map(|run| run["metrics"][0]["mean"].as_f64().unwrap_or_else(|| panic!("{run}")))
        .collect()
}

/// Searches through the router until stopped, recording every answer that failed or was partial.
struct SearchLoad {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    searches: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SearchLoad {
    fn start(router: &str, queries: Vec<String>) -> SearchLoad {
        let (stop, failures, searches) =
            (Arc::new(AtomicBool::new(false)), Arc::default(), Arc::new(AtomicUsize::new(0)));
        let url = format!("{router}/collections/docs/_search");
        let thread = {
            let (stop, failures, searches): (
                Arc<AtomicBool>,
                Arc<Mutex<Vec<String>>>,
                Arc<AtomicUsize>,
            ) = (stop.clone(), Arc::clone(&failures), searches.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                // Bounded in count and time, whatever the test does.
                for i in 0..100_000 {
                    if stop.load(Ordering::SeqCst) || started.elapsed() > Duration::from_secs(900) {
                        break;
                    }
                    let mode = ["keyword", "semantic", "hybrid"][i % 3];
                    let query = &queries[i % queries.len()];
                    let body = json!({"q": query, "mode": mode, "vector": if mode == "keyword" { Value::Null } else { json!(vector_of(query)) }, "k": 10});
                    match post(&url, &body.to_string()) {
                        Ok(answer) if answer["partial"] == false => {}
                        Ok(answer) => failures
                            .lock()
                            .unwrap()
                            .push(format!("partial: {}", answer["_partitions"])),
                        Err(error) => failures.lock().unwrap().push(error),
                    }
                    searches.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        SearchLoad { stop, failures, searches, thread: Some(thread) }
    }

    /// Stops, and returns (searches, failures).
    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        (self.searches.load(Ordering::SeqCst), self.failures.lock().unwrap().clone())
    }
}

/// Every replica ready (positions may differ while writes go on).
fn wait_all_ready(cluster: &Cluster, patience: Duration) {
    let deadline = Instant::now() + patience;
    loop {
        let state = cluster.state();
        let ready = state.as_ref().is_some_and(|state| {
            state["collections"][0]["assignment"].as_array().is_some_and(|partitions| {
                partitions.iter().all(|p| {
                    p["replicas"].as_array().unwrap().iter().all(|r| r["state"] == "ready")
                })
            })
        });
        if ready {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replicas not ready in {patience:?}: {state:?}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Each partition's replicas hold the same documents (count and checksum); returns the
/// documents in the collection.
fn check_replicas_agree(cluster: &Cluster) -> u64 {
    let state = cluster.state_with_checksums();
    let mut documents = 0;
    for partition in state["collections"][0]["assignment"].as_array().unwrap() {
        let replicas = partition["replicas"].as_array().unwrap();
        assert_eq!(replicas.len(), REPLICAS as usize, "{partition}");
        for replica in replicas {
            assert_eq!(replica["documents"], replicas[0]["documents"], "{partition}");
            assert_eq!(replica["checksum"], replicas[0]["checksum"], "{partition}");
            assert!(replica["checksum"].is_string(), "{partition}");
        }
        documents += replicas[0]["documents"].as_u64().unwrap();
    }
    documents
}

fn extra_bulk(from: usize, count: usize) -> String {
    (from..from + count)
        .map(|i| {
            let text = format!("extra document {i} about cells and proteins");
            format!(
                "{}\n{}\n",
                json!({"index": {"_id": format!("extra-{i}")}}),
                json!({"text": text, "vector": vector_of(&text)})
            )
        })
        .collect()
}

#[test]
fn a_cluster_ranks_as_one_node_and_keeps_every_acknowledged_write_through_failures() {
    let started = Instant::now();
    let mut cluster =
        Cluster::start(std::path::Path::new(env!("CARGO_BIN_EXE_cloze")), 4, 3, 3, 0.5);
    let router = cluster.router_url.clone();
    let (_single, single) = single_node(cluster.dir.path());
    let settings = json!({"dimension": DIMENSION, "partitions": PARTITIONS, "replicas": REPLICAS});
    // Replicas apply the log in batches of their own, so a document's neighbours, and its
    // expansion, would differ between them.
    let mut expanding = settings.clone();
    expanding["expansion"] = json!({});
    let mut refused = ureq::put(&format!("{router}/collections/expanding"))
        .header("Content-Type", "application/json")
        .config()
        .http_status_as_error(false)
        .build()
        .send(expanding.to_string())
        .unwrap();
    let reason = refused.body_mut().read_to_string().unwrap();
    assert_eq!(refused.status().as_u16(), 400, "{reason}");
    assert!(reason.contains("expansion: not available for a clustered collection"), "{reason}");
    let created = put(&format!("{router}/collections/docs"), &settings.to_string());
    assert_eq!(created["partitions"], PARTITIONS, "{created}");
    // Nor does a search weigh an expansion there.
    let mut refused = ureq::post(&format!("{router}/collections/docs/_search"))
        .header("Content-Type", "application/json")
        .config()
        .http_status_as_error(false)
        .build()
        .send(json!({"q": "cells", "expansion_weight": 0.5}).to_string())
        .unwrap();
    let reason = refused.body_mut().read_to_string().unwrap();
    assert_eq!(refused.status().as_u16(), 400, "{reason}");
    assert!(reason.contains("expansion_weight: \\\"docs\\\" is a clustered"), "{reason}");
    // Two live replicas of every partition before the first node is killed.
    wait_all_ready(&cluster, Duration::from_secs(60));
    let (bulks, documents) = scifact_bulks();
    let queries: Vec<String> = read_queries(beir_collection("scifact").queries)
        .unwrap()
        .into_iter()
        .map(|q| q.text)
        .take(200)
        .collect();

    // A bulk load, over and over (upserts of the same documents), while a node is SIGKILLed
    // and restarted at 20 random moments, and searches go on.
    let search_load = SearchLoad::start(&router, queries.clone());
    let loading = Arc::new(AtomicBool::new(true));
    let loader = {
        let (router, bulks, loading) = (router.clone(), bulks.clone(), loading.clone());
        std::thread::spawn(move || {
            let mut rounds = 0;
            let started = Instant::now();
            while rounds == 0
                || (loading.load(Ordering::SeqCst)
                    && rounds < 50
                    && started.elapsed() < Duration::from_secs(600))
            {
                for body in &bulks {
                    let answer = post(&format!("{router}/collections/docs/_bulk"), body)
                        .expect("a bulk is acknowledged");
                    assert_eq!(answer["errors"], false);
                    // A steady load two small cores keep up with, beside the searches.
                    std::thread::sleep(Duration::from_millis(150));
                }
                rounds += 1;
            }
            rounds
        })
    };
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    for _ in 0..20 {
        // One failure at a time, as two replicas tolerate: a search that was waiting on the
        // killed node moves to the other replica after the router's node timeout (2 s).
        std::thread::sleep(Duration::from_millis(rng.random_range(2_100..3_000)));
        let host = rng.random_range(1..=3);
        cluster.kill_node(host);
        cluster.start_node(host);
        wait_all_ready(&cluster, Duration::from_secs(120));
    }
    loading.store(false, Ordering::SeqCst);
    let rounds = loader.join().unwrap();
    let last = post(&format!("{router}/collections/docs/_bulk?refresh=wait_for"), &bulks[0])
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    assert_eq!(last["errors"], false);
    let (searches, failures) = search_load.finish();
    assert!(
        failures.is_empty(),
        "{} of {searches} searches failed during the kills: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    cluster.wait_until_caught_up("docs", Duration::from_secs(120));
    assert_eq!(check_replicas_agree(&cluster), documents as u64, "documents lost or duplicated");
    eprintln!("loaded SciFact {rounds} times through 20 node kills; {searches} searches, all full");

    // Ranked as the one node ranks the same documents, written once to each (rewritten
    // documents count in BM25's figures until their segment is merged, on one node as on many).
    put(&format!("{router}/collections/ranked"), &settings.to_string());
    put(&format!("{single}/collections/ranked"), &json!({"dimension": DIMENSION}).to_string());
    for (i, body) in bulks.iter().enumerate() {
        let wait = if i + 1 == bulks.len() { "?refresh=wait_for" } else { "" };
        post(&format!("{router}/collections/ranked/_bulk{wait}"), body).unwrap();
        post(&format!("{single}/collections/ranked/_bulk"), body).unwrap();
    }
    let eval = rank_eval_body(&["keyword", "semantic", "hybrid"]);
    let clustered = ndcg(&post(&format!("{router}/collections/ranked/_rank_eval"), &eval).unwrap());
    let alone = ndcg(&post(&format!("{single}/collections/ranked/_rank_eval"), &eval).unwrap());
    eprintln!("nDCG@10 keyword, semantic, hybrid: cluster {clustered:?}, one node {alone:?}");
    assert!((clustered[0] - alone[0]).abs() <= 1e-4, "keyword: {clustered:?} vs {alone:?}");
    assert!((clustered[1] - alone[1]).abs() <= 1e-4, "semantic: {clustered:?} vs {alone:?}");
    assert!((clustered[2] - alone[2]).abs() <= 1e-3, "hybrid: {clustered:?} vs {alone:?}");
    ureq::delete(&format!("{router}/collections/ranked"))
        .call()
        .expect("a clustered collection is deleted");
    let remaining =
        post(&format!("{router}/collections/ranked/_search"), &json!({"q": "cells"}).to_string());
    assert!(remaining.unwrap_err().contains("404"));

    // One NATS server (and the node beside it) cut off the network during writes: writes go
    // on through the other two; once back, nothing acknowledged is missing.
    let search_load = SearchLoad::start(&router, queries.clone());
    cluster.hosts.cut(3);
    for i in 0..4 {
        let answer = post(&format!("{router}/collections/docs/_bulk"), &extra_bulk(i * 100, 100))
            .expect("writes go on with a NATS server cut off");
        assert_eq!(answer["errors"], false);
    }
    cluster.hosts.heal(3);
    let (searches, failures) = search_load.finish();
    assert!(
        failures.is_empty(),
        "{} of {searches} searches failed with a host cut off: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    post(&format!("{router}/collections/docs/_bulk?refresh=wait_for"), &extra_bulk(400, 100))
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    cluster.wait_until_caught_up("docs", Duration::from_secs(180));
    assert_eq!(check_replicas_agree(&cluster), documents as u64 + 500);

    // Every node restarted in turn under search load: no search fails.
    let search_load = SearchLoad::start(&router, queries.clone());
    for host in 1..=3 {
        cluster.kill_node(host);
        cluster.start_node(host);
        wait_all_ready(&cluster, Duration::from_secs(120));
    }
    let (searches, failures) = search_load.finish();
    assert!(
        failures.is_empty(),
        "{} of {searches} searches failed in the rolling restart: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    // A fourth node joins and takes its share, from snapshots and the log; answers match.
    let before = post(&format!("{router}/collections/docs/_rank_eval"), &eval).unwrap();
    cluster.start_node(4);
    cluster.wait_for_nodes(4);
    let rebalanced = post(&format!("{router}/_cluster/_rebalance"), "{}").unwrap();
    assert_eq!(rebalanced["moves"].as_array().unwrap().len(), 6, "{rebalanced}");
    let state = cluster.wait_until_caught_up("docs", Duration::from_secs(180));
    let held = state["collections"][0]["assignment"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["replicas"].as_array().unwrap().iter().any(|r| r["node"] == "n4"))
        .count();
    assert_eq!(held, 6, "{state:#}");
    assert_eq!(check_replicas_agree(&cluster), documents as u64 + 500);
    let after = post(&format!("{router}/collections/docs/_rank_eval"), &eval).unwrap();
    assert_eq!(ndcg(&after), ndcg(&before));
    let copied = std::fs::read_dir(cluster.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("node4."))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .map(|log| log.matches("replica copied from a snapshot").count())
        .sum::<usize>();
    assert_eq!(copied, 6, "the new node's replicas start from snapshots");

    // A partition with no live replica: the answer says so, or fails when asked to.
    cluster.kill_node(1);
    cluster.kill_node(2);
    let partial =
        post(&format!("{router}/collections/docs/_search"), &json!({"q": "cells"}).to_string())
            .unwrap();
    assert_eq!(partial["partial"], true, "{partial}");
    assert!(!partial["_partitions"]["missing"].as_array().unwrap().is_empty());
    let strict = post(
        &format!("{router}/collections/docs/_search?allow_partial_search_results=false"),
        &json!({"q": "cells"}).to_string(),
    );
    assert!(strict.unwrap_err().contains("503"));
    eprintln!("cluster test took {:?}", started.elapsed());
    let _ = caught_up;
}
