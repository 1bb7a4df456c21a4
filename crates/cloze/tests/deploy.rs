//! `Dockerfile` and `docker-compose.yml`, checked without a Docker engine: linted, validated
//! against the Compose specification, consistent with each other, and the image's command and
//! health check run here as the container would run them (tests/deploy/check.py).

use std::process::Command;

#[test]
fn the_container_files_are_valid_and_their_command_serves_and_passes_its_health_check() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/deploy/check.py");
    let output = Command::new("python3")
        .args([script, env!("CARGO_BIN_EXE_cloze")])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{stdout}{stderr}\n(bash tests/install-deps.sh installs what it needs)"
    );
    assert!(stdout.contains("pass"), "{stdout}");
}
