//! A replica whose JetStream consumer stops delivering, while its stream goes on storing writes,
//! still applies them: it notices it is behind the stream, reads what it misses from the
//! stream's leader, and goes on through a new consumer. After a NATS server was cut off the
//! network and came back, consumers were seen to go quiet like this for minutes; here one is
//! made quiet on purpose by pausing it (JetStream 2.11 or later), on one NATS server on
//! loopback with one node and one router.

use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use cloze_tests::cluster::{post, start_router, wait_for_live_nodes, Process};
use serde_json::{json, Value};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn bulk_of(id: &str, text: &str) -> String {
    format!("{}\n{}\n", json!({"index": {"_id": id}}), json!({"text": text}))
}

/// Pauses every consumer of `stream` for an hour, through JetStream's API; returns their names.
fn pause_consumers(nats: &str, stream: &str) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(nats).await.expect("connects to NATS");
        let ask = |subject: String, body: Value| {
            let client = client.clone();
            async move {
                let answer = client
                    .request(subject.clone(), body.to_string().into())
                    .await
                    .unwrap_or_else(|e| panic!("{subject}: {e}"));
                serde_json::from_slice::<Value>(&answer.payload).unwrap()
            }
        };
        let names = ask(format!("$JS.API.CONSUMER.NAMES.{stream}"), json!({})).await;
        let names: Vec<String> = names["consumers"]
            .as_array()
            .unwrap_or_else(|| panic!("{names}"))
            .iter()
            .map(|n| n.as_str().unwrap().to_string())
            .collect();
        assert!(!names.is_empty(), "the replica has a consumer");
        for name in &names {
            let until = json!({"pause_until": "2099-01-01T00:00:00Z"});
            let paused = ask(format!("$JS.API.CONSUMER.PAUSE.{stream}.{name}"), until).await;
            assert_eq!(paused["paused"], true, "pausing {name}: {paused}");
        }
        names
    })
}

#[test]
fn a_replica_whose_consumer_goes_quiet_still_applies_writes() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let nats = format!("nats://127.0.0.1:{port}");
    let mut server = Command::new("nats-server");
    server
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.path().join("nats"));
    let _server = Process::spawn(server, dir.path().join("nats.log"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not listen in 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }

    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_cloze"));
    let mut node = Command::new(bin);
    node.env("RUST_LOG", "info,async_nats=warn")
        .arg("--data-dir")
        .arg(dir.path().join("node"))
        .args(["node", "--id", "n1", "--nats", &nats, "--nats-replicas", "1"]);
    let node_log = dir.path().join("node.log");
    let _node = Process::spawn(node, node_log.clone());
    let (_router, router) = start_router(bin, &nats, &["--nats-replicas", "1"], dir.path());
    let logs = || std::fs::read_to_string(&node_log).unwrap_or_default();
    wait_for_live_nodes(&router, 1, logs);
    ureq::put(&format!("{router}/collections/docs"))
        .header("Content-Type", "application/json")
        .send(json!({"partitions": 1, "replicas": 1}).to_string())
        .expect("a clustered collection is created");
    let waited = format!("{router}/collections/docs/_bulk?refresh=wait_for");
    post(&waited, &bulk_of("first", "apples and oranges, written first")).unwrap();

    let paused = pause_consumers(&nats, "cloze-docs-p0");
    // Without the replica noticing, this bulk waits in vain (the router asks for ten minutes,
    // this client gives up after two).
    let answer =
        post(&waited, &bulk_of("second", "zebras gallop, written while the consumer is paused"));
    answer.unwrap_or_else(|e| panic!("{e}\nnode log:\n{}", logs()));
    let found =
        post(&format!("{router}/collections/docs/_search"), &json!({"q": "zebras"}).to_string())
            .unwrap();
    assert_eq!(found["hits"][0]["id"], "second", "{found}");
    assert!(
        logs().contains("from the log's leader"),
        "the replica read past its paused consumer ({paused:?}):\n{}",
        logs()
    );
    // And the next write comes through the new consumer.
    post(&waited, &bulk_of("third", "violins play, written through the new consumer")).unwrap();
    let found =
        post(&format!("{router}/collections/docs/_search"), &json!({"q": "violins"}).to_string())
            .unwrap();
    assert_eq!(found["hits"][0]["id"], "third", "{found}");
}
