"""A cluster against one node, on one machine: ranking, added latency and ingest rate.

    python3 benches/cluster.py MODEL_DIR [--partitions 12] [--replicas 2] [--passes 2]
        [--skip-keyword-ingest | --keyword-ingest-only]

It builds the release binary and starts, on loopback, three NATS servers in one JetStream
cluster (the `nats-server` on PATH; tests/install-deps.sh installs one), three `cloze node`s
and a `cloze router`, and beside them one `cloze serve`. Then, on SciFact ($CLOZE_TEST_DATA, default ../shared/data):

1. Ingest: the corpus in bulks of 500 documents into a keyword-only collection on each side,
   three times, alternating; documents/s until the last bulk is searchable (the router's
   `refresh=wait_for`: every replica applied it). This is the log's own cost.
2. The corpus into a collection with MODEL_DIR on each side (the cluster with `--partitions`
   and `--replicas`): documents/s, dominated by embedding, which each replica does.
3. Every SciFact test query in keyword, semantic and hybrid mode on each side, top 100, written
   as TREC runs and scored by `cloze eval --run` and by pytrec_eval.
4. Latency: the hybrid test queries one at a time, alternating sides, `--passes` times; the
   p50 and p99 of each side and what the router adds.

Results go to target/bench-results/cluster.json (and a line in results.jsonl); the runs and
every process's log to target/bench-results/cluster/.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "target/release/cloze"
OUT = ROOT / "target/bench-results"
BULK = 500


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(method, url, body=None, timeout=3600):
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(url, method=method, data=data)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        sys.exit(f"{method} {url}: {error.code} {error.read().decode()[:500]}")


class Processes:
    def __init__(self, logs):
        self.logs = logs
        self.running = []

    def start(self, name, args, env=None):
        log = open(self.logs / f"{name}.log", "w")
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log,
                                   env={**os.environ, "RUST_LOG": "info,async_nats=warn,hnsw_rs=warn", **(env or {})})
        self.running.append(process)
        return process

    def stop(self):
        for process in reversed(self.running):
            process.terminate()
        for process in self.running:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def listening(process):
    line = process.stdout.readline().decode()
    if not line.startswith("listening on "):
        sys.exit(f"expected 'listening on', got {line!r}")
    return line.split()[-1]


def start_nats(processes, work):
    clients = [free_port() for _ in range(3)]
    routes = [free_port() for _ in range(3)]
    monitor = free_port()
    for i in range(3):
        others = ",".join(f"nats://127.0.0.1:{routes[j]}" for j in range(3) if j != i)
        args = ["nats-server", "--name", f"nats-{i + 1}", "--port", str(clients[i]), "--jetstream",
                "--store_dir", str(work / f"nats-{i + 1}"), "--cluster_name", "cloze",
                "--cluster", f"nats://127.0.0.1:{routes[i]}", "--routes", others]
        if i == 0:
            args += ["--http_port", str(monitor)]
        processes.start(f"nats-{i + 1}", args)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/jsz", timeout=2) as response:
                if json.loads(response.read()).get("meta_cluster", {}).get("leader"):
                    return ",".join(f"nats://127.0.0.1:{port}" for port in clients)
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit("the NATS servers elected no JetStream leader in 60 s")


def bulks(corpus, count=None):
    lines = corpus.read_text().splitlines()[:count]
    bodies = []
    for start in range(0, len(lines), BULK):
        body = []
        for line in lines[start:start + BULK]:
            document = json.loads(line)
            body.append(json.dumps({"index": {"_id": document["_id"]}}))
            body.append(json.dumps({"title": document.get("title", ""), "text": document["text"]}))
        bodies.append("\n".join(body) + "\n")
    return bodies, len(lines)


def ingest(base, name, bodies, documents, wait):
    started = time.perf_counter()
    for i, body in enumerate(bodies):
        last = i == len(bodies) - 1
        answer = call("POST", f"{base}/collections/{name}/_bulk" + ("?refresh=wait_for" if last and wait else ""), body)
        if answer.get("errors"):
            sys.exit(f"bulk into {base}: {json.dumps(answer)[:500]}")
    return documents / (time.perf_counter() - started)


def judged_queries(scifact):
    judged = {line.split("\t")[0] for line in (scifact / "qrels/test.tsv").read_text().splitlines()[1:]}
    queries = [json.loads(line) for line in (scifact / "queries.jsonl").read_text().splitlines()]
    return [(q["_id"], q["text"]) for q in queries if q["_id"] in judged]


def search(base, query, mode, k=100):
    started = time.perf_counter()
    answer = call("POST", f"{base}/collections/scifact/_search", json.dumps({"q": query, "mode": mode, "k": k}))
    elapsed = time.perf_counter() - started
    if answer.get("partial"):
        sys.exit(f"a partial answer: {answer['_partitions']}")
    return answer["hits"], elapsed


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def save(result):
    with open(OUT / "cluster.json", "w") as out:
        json.dump(result, out, indent=2)
    with open(OUT / "results.jsonl", "a") as table:
        table.write(json.dumps({"name": "cluster", "unix_time": int(time.time()), "result": result}) + "\n")
    print(OUT / "cluster.json")


def keyword_ingest(router, single, clustered, bodies, documents, result):
    """The log's cost: keyword-only ingest, three times each side, alternating."""
    call("PUT", f"{router}/collections/plain", clustered)
    call("PUT", f"{single}/collections/plain", "{}")
    rates = {"router": [], "single": []}
    for _ in range(3):
        rates["single"].append(ingest(single, "plain", bodies, documents, False))
        rates["router"].append(ingest(router, "plain", bodies, documents, True))
    result["ingest_keyword_documents_per_s"] = {side: statistics.median(r) for side, r in rates.items()}
    print("keyword-only ingest, documents/s (median of 3):", result["ingest_keyword_documents_per_s"], flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--skip-keyword-ingest", action="store_true", help="leave out step 1")
    parser.add_argument("--keyword-ingest-only", action="store_true", help="step 1 alone")
    args = parser.parse_args()
    model = str(Path(args.model).resolve())
    scifact = Path(os.environ.get("CLOZE_TEST_DATA", ROOT / "../shared/data")) / "scifact"
    if not shutil.which("nats-server"):
        sys.exit("nats-server is missing: bash tests/install-deps.sh installs it")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "cloze"], cwd=ROOT, check=True)
    logs = OUT / "cluster"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    work = Path(tempfile.mkdtemp())
    processes = Processes(logs)
    try:
        nats = start_nats(processes, work)
        for i in range(1, 4):
            processes.start(f"node-{i}", [BIN, "--data-dir", work / f"node-{i}", "node", "--id", f"n{i}", "--nats", nats])
        router = listening(processes.start("router", [BIN, "router", "--bind", "127.0.0.1:0", "--nats", nats]))
        single = listening(processes.start("single", [BIN, "--data-dir", work / "single", "serve", "--bind", "127.0.0.1:0"]))
        clustered = json.dumps({"partitions": args.partitions, "replicas": args.replicas})
        deadline = time.time() + 60
        while len(call("GET", f"{router}/_cluster")["nodes"]) < 3:
            if time.time() > deadline:
                sys.exit("the three nodes did not join in 60 s")
            time.sleep(0.5)
        result = {"machine": f"{os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
                  "partitions": args.partitions, "replicas": args.replicas, "model": Path(model).name}

        # 1. The log's cost: keyword-only ingest.
        bodies, documents = bulks(scifact / "corpus.jsonl")
        if not args.skip_keyword_ingest:
            keyword_ingest(router, single, clustered, bodies, documents, result)
        if args.keyword_ingest_only:
            save(result)
            return

        # 2. With the model.
        call("PUT", f"{router}/collections/scifact", json.dumps({"model": model, "partitions": args.partitions, "replicas": args.replicas}))
        call("PUT", f"{single}/collections/scifact", json.dumps({"model": model}))
        result["ingest_model_documents_per_s"] = {
            "single": ingest(single, "scifact", bodies, documents, False),
            "router": ingest(router, "scifact", bodies, documents, True),
        }
        print("ingest with the model, documents/s:", result["ingest_model_documents_per_s"], flush=True)

        # 3. Rankings, scored two ways.
        queries = judged_queries(scifact)
        qrels = scifact / "qrels/test.tsv"
        import pytrec_eval
        judgments = {}
        for line in qrels.read_text().splitlines()[1:]:
            query, document, grade = line.split("\t")
            judgments.setdefault(query, {})[document] = int(grade)
        evaluator = pytrec_eval.RelevanceEvaluator(judgments, {"ndcg_cut.10"})
        result["ndcg@10"] = {}
        for mode in ("keyword", "semantic", "hybrid"):
            for side, base in (("single", single), ("router", router)):
                run_file = logs / f"{side}-{mode}.trec"
                run = {}
                with open(run_file, "w") as out:
                    for query_id, text in queries:
                        hits, _ = search(base, text, mode)
                        run[query_id] = {}
                        for rank, hit in enumerate(hits, 1):
                            out.write(f"{query_id} Q0 {hit['id']} {rank} {hit['score']} {side}-{mode}\n")
                            run[query_id][hit["id"]] = float(hit["score"])
                ours = json.loads(subprocess.run([BIN, "eval", "--run", run_file, "--qrels", qrels, "--json"],
                                                 check=True, capture_output=True, text=True).stdout)
                reference = evaluator.evaluate(run)
                reference_mean = sum(reference.get(q, {}).get("ndcg_cut_10", 0.0) for q in judgments) / len(judgments)
                result["ndcg@10"][f"{side} {mode}"] = {"cloze eval": ours["ndcg@10"],
                                                      "pytrec_eval": reference_mean}
                print(f"nDCG@10 {side:6} {mode:8}", result["ndcg@10"][f"{side} {mode}"], flush=True)

        # 4. Latency of hybrid search, alternating sides.
        latency = {"single": [], "router": []}
        for _ in range(args.passes):
            for _, text in queries:
                for side, base in (("single", single), ("router", router)):
                    latency[side].append(search(base, text, "hybrid", k=10)[1] * 1000)
        result["hybrid_latency_ms"] = {side: {"p50": percentile(v, 0.5), "p99": percentile(v, 0.99), "searches": len(v)}
                                       for side, v in latency.items()}
        result["router_adds_ms"] = {p: result["hybrid_latency_ms"]["router"][p] - result["hybrid_latency_ms"]["single"][p]
                                    for p in ("p50", "p99")}
        print("hybrid latency, ms:", result["hybrid_latency_ms"], "router adds", result["router_adds_ms"], flush=True)
    finally:
        processes.stop()
        shutil.rmtree(work, ignore_errors=True)
    save(result)


if __name__ == "__main__":
    main()
