//! Who may do what on `cloze serve`, and what it refuses to take on: API keys, names that try
//! to leave the data folder, and the limits on size and load.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::{model, scifact_lines, Server};

const ADMIN: &str = "admin-key-for-tests-0123456789";
const SEARCH: &str = "search-key-for-tests-0123456789";

fn keyed_server(data: &Path) -> Server {
    Server::start_with(data, &[], &[("CLOZE_ADMIN_KEY", ADMIN), ("CLOZE_SEARCH_KEY", SEARCH)])
}

/// Calls with `key` (None: no Authorization header).
fn call_as(
    server: &mut Server,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, Value) {
    server.key = key.map(str::to_string);
    let answer = server.call(method, path, Some(body));
    server.key = Some(ADMIN.to_string());
    answer
}

#[test]
fn every_write_needs_the_admin_key_and_reads_need_a_key() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("index");
    let mut server = keyed_server(&data);
    server.key = Some(ADMIN.to_string());
    server.ok("PUT", "/collections/c", Some("{}"));
    server.ok(
        "POST",
        "/collections/c/_bulk",
        Some("{\"_id\": \"1\", \"text\": \"dogs and cats\"}\n"),
    );

    let writes = [
        ("PUT", "/collections/new", "{}"),
        ("DELETE", "/collections/c", ""),
        ("POST", "/collections/c/_bulk", "{\"_id\": \"2\", \"text\": \"birds\"}\n"),
        ("DELETE", "/collections/c/documents/1", ""),
        ("POST", "/collections/c/_snapshot", ""),
        ("POST", "/collections/restored/_restore", "{\"snapshot\": \"any\"}"),
    ];
    for (method, path, body) in writes {
        for (key, status) in
            [(None, 401), (Some("wrong-key-0123456789abc"), 401), (Some(SEARCH), 403)]
        {
            let (got, answer) = call_as(&mut server, key, method, path, body);
            assert_eq!(got, status, "{method} {path} with {key:?}: {answer}");
            assert_eq!(answer["status"], status);
            // A wrong key is told nothing more than a missing one.
            if status == 401 {
                assert_eq!(answer["error"]["type"], "unauthorized");
            }
        }
    }
    // Nothing changed.
    let described = server.ok("GET", "/collections/c", None);
    assert_eq!(described["documents"], 1);
    assert_eq!(server.call("GET", "/collections/new", None).0, 404);
    server.ok("GET", "/collections/c/documents/1", None);
    let names: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["c"], "a refused request left files behind");

    let reads = [
        ("GET", "/collections", ""),
        ("GET", "/collections/c", ""),
        ("GET", "/collections/c/documents/1", ""),
        ("POST", "/collections/c/_search", "{\"q\": \"dogs\"}"),
    ];
    server.key = None;
    assert_eq!(server.call_text("GET", "/metrics", None).0, 401);
    server.key = Some(SEARCH.to_string());
    assert_eq!(server.call_text("GET", "/metrics", None).0, 200);
    for (method, path, body) in reads {
        assert_eq!(call_as(&mut server, None, method, path, body).0, 401, "{method} {path}");
        let (status, answer) = call_as(&mut server, Some(SEARCH), method, path, body);
        assert_eq!(status, 200, "{method} {path} with the search key: {answer}");
    }
    // The health check, the page and the API description stay open.
    server.key = None;
    assert_eq!(server.call_text("GET", "/health", None).0, 200);
    assert_eq!(server.call_text("GET", "/", None).0, 200);
    assert_eq!(server.call_text("GET", "/openapi.json", None).0, 200);
    server.stop();
}

#[test]
fn names_that_climb_out_of_the_data_folder_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("index");
    let mut server = keyed_server(&data);
    server.key = Some(ADMIN.to_string());
    for name in ["..%2Fx", "%2E%2E", "..", ".x", "a%2Fb", "%2Ftmp%2Fx", "a%00b"] {
        let path = format!("/collections/{name}");
        let (status, answer) = server.call("PUT", &path, Some("{}"));
        assert!(status == 400 || status == 404, "PUT {path}: {status} {answer}");
        let (status, _) = server.call(
            "POST",
            &format!("{path}/_bulk"),
            Some("{\"_id\": \"1\", \"text\": \"x\"}"),
        );
        assert!(status == 400 || status == 404, "POST {path}/_bulk: {status}");
    }
    assert!(!work.path().join("x").exists());
    let left: Vec<_> =
        std::fs::read_dir(work.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.iter().all(|name| name == "index"), "{left:?}");
    server.stop();
}

#[test]
fn without_keys_the_service_listens_on_loopback_only_and_says_so() {
    let work = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cloze"))
        .env_remove("CLOZE_ADMIN_KEY")
        .env_remove("CLOZE_SEARCH_KEY")
        .args(["--data-dir", work.path().join("index").to_str().unwrap()])
        .args(["serve", "--bind", "0.0.0.0:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert!(line.starts_with("listening on http://127.0.0.1:"), "{line}");
    child.kill().unwrap();
    child.wait().unwrap();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    assert!(
        log.contains("no API keys are set: listening on 127.0.0.1:0 instead of 0.0.0.0:0"),
        "{log}"
    );

    // Keys that could be guessed, or a search key with no admin key, do not start it.
    for env in [
        vec![("CLOZE_ADMIN_KEY", "short")],
        vec![("CLOZE_SEARCH_KEY", SEARCH)],
        vec![("CLOZE_ADMIN_KEY", ADMIN), ("CLOZE_SEARCH_KEY", ADMIN)],
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_cloze"))
            .env_remove("CLOZE_ADMIN_KEY")
            .env_remove("CLOZE_SEARCH_KEY")
            .envs(env.iter().copied())
            .args(["--data-dir", work.path().join("index").to_str().unwrap()])
            .args(["serve", "--bind", "127.0.0.1:0"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{env:?} started");
        assert!(stderr.contains("key"), "{env:?}: {stderr}");
    }
}

#[test]
fn limits_are_refused_with_their_setting_named_and_overload_gets_a_quick_503() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("index");
    let settings = work.path().join("server.toml");
    std::fs::write(
        &settings,
        "max_bulk_lines = 700\nmax_query_bytes = 100\nmax_concurrent_requests = 2\nmax_concurrent_writes = 1\n",
    )
    .unwrap();
    let model = model(work.path());
    let server = Server::start(&data, &["--config", settings.to_str().unwrap()]);
    server.ok("PUT", "/collections/sf", Some(&json!({"model": model}).to_string()));
    server.ok("PUT", "/collections/other", Some("{}"));
    let (lines, _) = scifact_lines(0..800);
    server.refused("POST", "/collections/sf/_bulk", &lines, 413, "max_bulk_lines");
    let long = json!({"q": "x".repeat(101)}).to_string();
    server.refused("POST", "/collections/sf/_search", &long, 400, "max_query_bytes");

    // While one slow write runs, a second write is turned away at once, and a search still
    // gets through; the health check always does.
    let (lines, ids) = scifact_lines(0..600);
    std::thread::scope(|scope| {
        let bulk = scope.spawn(|| server.call("POST", "/collections/sf/_bulk", Some(&lines)));
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let (status, answer) = server.call(
            "POST",
            "/collections/other/_bulk",
            Some("{\"_id\": \"1\", \"text\": \"x\"}\n"),
        );
        let waited = started.elapsed();
        assert_eq!(status, 503, "{answer}");
        assert_eq!(answer["error"]["type"], "overloaded");
        assert!(answer["error"]["reason"].as_str().unwrap().contains("max_concurrent_writes"));
        assert!(waited < Duration::from_millis(250), "the 503 took {waited:?}");
        let (status, _) = server.call("POST", "/collections/other/_search", Some("{\"q\": \"x\"}"));
        assert_eq!(status, 200);
        assert_eq!(server.call_text("GET", "/health", None).0, 200);
        let (status, answer) = bulk.join().unwrap();
        assert_eq!(status, 200, "{answer}");
        let took = answer["took_ms"].as_f64().unwrap();
        assert!(took > 300.0, "the bulk took {took} ms: the overload was never tested");
    });
    assert_eq!(server.ok("GET", "/collections/sf", None)["documents"], ids.len());
    server.ok("POST", "/collections/other/_bulk", Some("{\"_id\": \"1\", \"text\": \"x\"}\n"));
    server.stop();
}
