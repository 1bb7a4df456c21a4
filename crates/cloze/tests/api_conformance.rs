//! The service against its own OpenAPI document: schemathesis (tests/api/requirements.txt)
//! generates requests from `/openapi.json`, valid and not, for every route, and checks that none
//! gets a 5xx and that every answer's status, content type, headers and body match the document.

use std::process::Command;

use serde_json::json;

mod common;
use common::{model, Server};

const ADMIN: &str = "admin-key-for-tests-0123456789";

#[test]
fn every_answer_matches_the_openapi_document_and_none_is_a_5xx() {
    let work = tempfile::tempdir().unwrap();
    let model = model(work.path());
    let mut server =
        Server::start_with(&work.path().join("index"), &[], &[("CLOZE_ADMIN_KEY", ADMIN)]);
    server.key = Some(ADMIN.to_string());
    server.ok("PUT", "/collections/c", Some("{}"));
    server.ok("PUT", "/collections/m", Some(&json!({"model": model}).to_string()));
    for collection in ["c", "m"] {
        let bulk = "{\"_id\": \"1\", \"text\": \"dogs and cats\"}\n{\"_id\": \"2\", \"text\": \"birds\"}\n";
        server.ok("POST", &format!("/collections/{collection}/_bulk"), Some(bulk));
    }
    server.ok("POST", "/collections/c/_snapshot", Some(""));

    let api = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/api");
    let output = Command::new("schemathesis")
        .current_dir(api)
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .args(["run", &format!("{}/openapi.json", server.base)])
        .args(["--header", &format!("Authorization: Bearer {ADMIN}")])
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance"])
        .args(["--max-examples", "50", "--seed", "1", "--request-timeout", "60"])
        .output()
        .unwrap_or_else(|error| {
            panic!("schemathesis: {error}; install it with `bash tests/install-deps.sh`")
        });
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{report}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(report.contains("passed"), "{report}");
    server.stop();
}
