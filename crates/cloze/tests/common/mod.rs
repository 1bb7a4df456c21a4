//! What the end-to-end tests of `cloze serve` share: a real server process on a free loopback
//! port, driven over HTTP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cloze_tests::{beir_collection, small_model};
use serde_json::Value;

/// A request builder with the `Authorization` header, if there is one.
fn with_key<B>(
    request: ureq::RequestBuilder<B>,
    authorization: Option<&str>,
) -> ureq::RequestBuilder<B> {
    match authorization {
        Some(value) => request.header("Authorization", value),
        None => request,
    }
}

pub struct Server {
    pub child: Child,
    pub base: String,
    pub agent: ureq::Agent,
    /// Sent as `Authorization: Bearer KEY` with every call, if set.
    pub key: Option<String>,
}

impl Server {
    /// Starts `cloze serve` on port 0 and reads the address it chose from its first line.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_with(data_dir, extra, &[])
    }

    /// The same, with environment variables (API keys) set for the server.
    pub fn start_with(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cloze"))
            .env_remove("CLOZE_ADMIN_KEY")
            .env_remove("CLOZE_SEARCH_KEY")
            .envs(env.iter().copied())
            .arg("--data-dir")
            .arg(data_dir)
            .args(["serve", "--bind", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let address = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line}"));
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(300)))
            .build();
        Server { child, base: address.to_string(), agent: config.into(), key: None }
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (status, text) = self.call_text(method, path, body);
        let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
        (status, value)
    }

    pub fn call_text(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let url = format!("{}{path}", self.base);
        let authorization = self.key.as_ref().map(|key| format!("Bearer {key}"));
        let authorization = authorization.as_deref();
        let response = match (method, body) {
            ("GET", _) => with_key(self.agent.get(&url), authorization).call(),
            ("DELETE", _) => with_key(self.agent.delete(&url), authorization).call(),
            ("PUT", body) => with_key(self.agent.put(&url), authorization).send(body.unwrap_or("")),
            ("POST", body) => {
                with_key(self.agent.post(&url), authorization).send(body.unwrap_or(""))
            }
            _ => unreachable!(),
        };
        let mut response = response.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let text = response.body_mut().with_config().limit(1 << 30).read_to_string().unwrap();
        (status, text)
    }

    pub fn ok(&self, method: &str, path: &str, body: Option<&str>) -> Value {
        let (status, value) = self.call(method, path, body);
        assert!((200..300).contains(&status), "{method} {path}: {status} {value}");
        value
    }

    /// Asks for a 4xx whose JSON error names `what`.
    pub fn refused(&self, method: &str, path: &str, body: &str, status: u16, what: &str) -> Value {
        let (got, value) = self.call(method, path, Some(body));
        assert_eq!(got, status, "{method} {path} {body}: {value}");
        assert_eq!(value["status"], status);
        let reason = value["error"]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(what), "expected \"{what}\" in: {reason}");
        value
    }

    pub fn search(&self, collection: &str, request: Value) -> Value {
        self.ok("POST", &format!("/collections/{collection}/_search"), Some(&request.to_string()))
    }

    /// SIGTERM, then waits: a clean stop exits with success.
    pub fn stop(mut self) {
        let pid = self.child.id() as libc::pid_t;
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the server exited with {status}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first `count` SciFact documents, as the NDJSON lines they are in the corpus file.
pub fn scifact_lines(range: std::ops::Range<usize>) -> (String, Vec<String>) {
    let corpus = std::fs::read_to_string(beir_collection("scifact").corpus).unwrap();
    let lines: Vec<&str> = corpus.lines().skip(range.start).take(range.len()).collect();
    let ids = lines
        .iter()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["_id"].as_str().unwrap().to_string()
        })
        .collect();
    (lines.join("\n") + "\n", ids)
}

pub fn model(dir: &Path) -> PathBuf {
    let corpus = std::fs::read_to_string(beir_collection("scifact").corpus).unwrap();
    let texts: Vec<&str> = corpus.lines().take(300).collect();
    small_model(&dir.join("model"), &texts, 64, 7)
}

pub fn ids(hits: &Value) -> Vec<&str> {
    hits["hits"].as_array().unwrap().iter().map(|hit| hit["id"].as_str().unwrap()).collect()
}
