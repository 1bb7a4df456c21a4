//! Crash safety: `cloze index` killed (SIGKILL) at random moments leaves a collection that opens
//! in its last committed state, with a vector for every stored document and for no other.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use cloze_index::DataDir;
use cloze_search::{search, Mode, SearchRequest};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const KILLS: usize = 24;

fn corpus(ids: impl Iterator<Item = usize>, version: &str) -> String {
    let words = ["river", "bridge", "engine", "wing", "heat", "flow", "gene", "dose", "cell"];
    ids.map(|i| {
        let text: Vec<&str> = (0..12).map(|j| words[(i * 5 + j * j + j) % words.len()]).collect();
        format!(
            "{{\"_id\": \"d{i}\", \"title\": \"\", \"text\": \"{version} {}\"}}\n",
            text.join(" ")
        )
    })
    .collect()
}

fn index(data: &Path, model: &Path, corpus: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cloze"));
    command
        .args(["--data-dir", data.to_str().unwrap(), "index", "--collection", "docs"])
        .args(["--corpus", corpus.to_str().unwrap(), "--model", model.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// Runs an ingest to completion.
fn index_fully(data: &Path, model: &Path, corpus: &Path) {
    let output = index(data, model, corpus).stderr(Stdio::piped()).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// The ids stored in the collection, after checking that vectors and documents agree and that
/// semantic search works.
fn committed_ids(data: &Path) -> BTreeSet<String> {
    let collection = DataDir::new(data).open("docs").expect("the collection opens after a kill");
    let ids = collection.document_ids().unwrap();
    assert_eq!(ids, collection.vector_document_ids(), "vectors and documents disagree");
    let hits =
        search(&collection, &SearchRequest::new("river bridge", Mode::Semantic, 5)).unwrap().hits;
    assert_eq!(hits.len(), 5.min(ids.len()));
    ids.into_iter().collect()
}

#[test]
fn killing_the_indexer_at_any_moment_keeps_both_indexes_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let words = "river bridge engine wing heat flow gene dose cell version one two";
    let model = cloze_tests::small_model(&dir.path().join("model"), &[words], 64, 1);
    // The committed state before each attempt: 600 documents.
    let first = dir.path().join("first.jsonl");
    std::fs::write(&first, corpus(0..600, "one")).unwrap();
    // Each attempt replaces 300 of them and adds 900: 1500 documents if it completes.
    let second = dir.path().join("second.jsonl");
    std::fs::write(&second, corpus(300..1500, "two")).unwrap();

    let before_dir = dir.path().join("before");
    index_fully(&before_dir, &model, &first);
    let before = committed_ids(&before_dir);
    let after_dir = dir.path().join("after");
    cloze_tests::copy_dir(&before_dir, &after_dir);
    let started = Instant::now();
    index_fully(&after_dir, &model, &second);
    let full_run = started.elapsed();
    let after = committed_ids(&after_dir);
    assert_eq!((before.len(), after.len()), (600, 1500));

    let data = dir.path().join("data");
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (mut old, mut new) = (0, 0);
    for attempt in 0..KILLS {
        cloze_tests::copy_dir(&before_dir, &data);
        let mut child = index(&data, &model, &second).spawn().unwrap();
        // Uniform over the whole run, and a little past it.
        let wait = full_run.mul_f64(rng.random_range(0.0..1.1));
        std::thread::sleep(wait);
        child.kill().unwrap();
        child.wait().unwrap();
        let ids = committed_ids(&data);
        if ids == before {
            old += 1;
        } else if ids == after {
            new += 1;
        } else {
            panic!("attempt {attempt}, killed after {wait:?}: {} documents", ids.len());
        }
    }
    eprintln!("{KILLS} kills over a {full_run:?} run: {old} left the old state, {new} the new");
    assert!(old > 0, "no kill landed before the commit: the test shows nothing");
    // The collection stays writable after the last kill.
    index_fully(&data, &model, &second);
    assert_eq!(committed_ids(&data), after);
    assert_only_committed_files(&data);

    // Merging builds a graph of every vector and commits it in place of the segments: a kill
    // at any moment of it leaves the documents and vectors as they were.
    let compact = |data: &Path| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cloze"));
        command
            .args(["--data-dir", data.to_str().unwrap(), "compact", "--collection", "docs"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    };
    let started = Instant::now();
    cloze_tests::copy_dir(&after_dir, &data);
    assert!(compact(&data).status().unwrap().success());
    let full_merge = started.elapsed();
    assert_eq!(committed_ids(&data), after);
    let (mut unmerged, mut merged) = (0, 0);
    for attempt in 0..KILLS / 2 {
        cloze_tests::copy_dir(&after_dir, &data);
        let mut child = compact(&data).spawn().unwrap();
        let wait = full_merge.mul_f64(rng.random_range(0.0..1.1));
        std::thread::sleep(wait);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(committed_ids(&data), after, "attempt {attempt}, killed after {wait:?}");
        match DataDir::new(&data).open("docs").unwrap().segment_count() {
            1 => merged += 1,
            _ => unmerged += 1,
        }
    }
    eprintln!(
        "{} kills over a {full_merge:?} merge: {unmerged} before it, {merged} after",
        KILLS / 2
    );
    assert!(unmerged > 0, "no kill landed before the merge's commit: the test shows nothing");
    assert!(compact(&data).status().unwrap().success());
    assert_eq!(committed_ids(&data), after);
    assert_only_committed_files(&data);
}

/// Nothing is left of interrupted writes and merges: one commit file, and segments.
fn assert_only_committed_files(data: &Path) {
    let names: Vec<String> = std::fs::read_dir(data.join("docs/vectors"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.iter().filter(|name| name.starts_with("commit-")).count(), 1, "{names:?}");
    assert!(
        names.iter().all(|name| name.starts_with("commit-")
            || (name.starts_with("seg-") && !name.contains(".merging"))),
        "{names:?}"
    );
}

mod common;

/// One bulk request of `count` new documents named `round-i`.
fn bulk_body(round: usize, request: usize, count: usize) -> (String, Vec<String>) {
    let words = ["river", "bridge", "engine", "wing", "heat", "flow", "gene", "dose", "cell"];
    let ids: Vec<String> = (0..count).map(|i| format!("r{round}-b{request}-{i}")).collect();
    let body = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let text: Vec<&str> = (0..20).map(|j| words[(i * 7 + j * j) % words.len()]).collect();
            format!("{{\"_id\": \"{id}\", \"text\": \"{}\"}}\n", text.join(" "))
        })
        .collect();
    (body, ids)
}

#[test]
fn killing_the_server_never_loses_an_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let words = "river bridge engine wing heat flow gene dose cell";
    let model = cloze_tests::small_model(&dir.path().join("model"), &[words], 64, 3);
    let data = dir.path().join("index");
    let server = common::Server::start(&data, &[]);
    server.ok("PUT", "/collections/docs", Some(&format!("{{\"model\": {model:?}}}")));
    server.stop();

    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut acknowledged: BTreeSet<String> = BTreeSet::new();
    let mut unanswered = 0;
    for round in 0..KILLS {
        let server = common::Server::start(&data, &[]);
        let pid = server.child.id() as libc::pid_t;
        let kill_after = std::time::Duration::from_millis(rng.random_range(50..600));
        // Bulk requests one after another until the server dies; each answered one is recorded
        // together with the ids of the one in flight when it died. The kill comes a random
        // while after the first answer, so every round acknowledges something however slow
        // the machine is.
        let (first_answer, answer_seen) = std::sync::mpsc::channel();
        let (base, agent) = (server.base.clone(), server.agent.clone());
        let (answered, in_flight) = std::thread::scope(|scope| {
            let client = scope.spawn(move || {
                let mut answered = Vec::new();
                for request in 0.. {
                    let (body, ids) = bulk_body(round, request, 40);
                    let url = format!("{base}/collections/docs/_bulk");
                    match agent.post(&url).send(body.as_str()) {
                        Ok(response) if response.status() == 200 => {
                            answered.extend(ids);
                            let _ = first_answer.send(());
                        }
                        Ok(response) => panic!("round {round}: status {}", response.status()),
                        Err(_) => return (answered, ids),
                    }
                }
                unreachable!()
            });
            let waited = answer_seen.recv_timeout(std::time::Duration::from_secs(60));
            assert!(waited.is_ok(), "round {round}: no bulk answered in 60 s");
            std::thread::sleep(kill_after);
            assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
            client.join().unwrap()
        });
        drop(server);
        let collection =
            DataDir::new(&data).open("docs").expect("the collection opens after a kill");
        let stored: BTreeSet<String> = collection.document_ids().unwrap().into_iter().collect();
        let vectors: BTreeSet<String> = collection.vector_document_ids().into_iter().collect();
        assert_eq!(stored, vectors, "round {round}: vectors and documents disagree");
        acknowledged.extend(answered);
        let lost: Vec<_> = acknowledged.difference(&stored).collect();
        assert!(lost.is_empty(), "round {round}: acknowledged but lost: {lost:?}");
        // The request in flight landed whole or not at all.
        let landed = in_flight.iter().filter(|id| stored.contains(*id)).count();
        assert!(landed == 0 || landed == in_flight.len(), "round {round}: {landed} of a bulk");
        if landed == 0 {
            unanswered += 1;
        }
        assert_eq!(
            stored.len(),
            acknowledged.len() + landed,
            "round {round}: unexpected documents"
        );
        acknowledged.extend(in_flight.into_iter().take(landed));
    }
    eprintln!(
        "{KILLS} kills: {} documents acknowledged, {unanswered} bulks cut off",
        acknowledged.len()
    );
    assert!(acknowledged.len() >= 40 * KILLS, "too few writes were answered to show anything");
    assert!(unanswered > 0, "no kill landed during a write");
    // A fresh start serves all of it and clears what the kills left.
    let server = common::Server::start(&data, &[]);
    assert_eq!(server.ok("GET", "/collections/docs", None)["documents"], acknowledged.len());
    let hidden = std::fs::read_dir(&data)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'));
    assert_eq!(hidden.count(), 0);
    server.stop();
}
