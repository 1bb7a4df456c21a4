#!/usr/bin/env bash
# Load benchmark of `cloze serve`: queries/s and latency percentiles of keyword and hybrid search
# on SciFact, driven over loopback by wrk (Debian's `wrk` package).
#
#   benches/http_load.sh MODEL_DIR [DURATION_SECONDS]
#
# It builds the release binary, starts a server on a free port with a fresh data folder, creates
# a `scifact` collection with MODEL_DIR (e.g. a `tiny` model from `cloze train`), bulk-loads
# SciFact's corpus over HTTP, then runs wrk for DURATION_SECONDS (default 20) per row, cycling
# through SciFact's 1,109 queries. The first row, GET /health, is the HTTP floor of the same
# server and load generator: each search row's throughput is also given as a share of it.
# Every search answer carries a Server-Timing header (encode, keyword, vector, fusion,
# documents, serialize); wrk writes them all down, and the script prints each stage's median and
# p99 beside the end-to-end figures, and saves everything to target/bench-results/http-load.json.
# The shared data comes from $CLOZE_TEST_DATA (default ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(realpath "${1:?usage: benches/http_load.sh MODEL_DIR [DURATION_SECONDS]}")
duration=${2:-20}
data=${CLOZE_TEST_DATA:-../shared/data}/scifact
command -v wrk >/dev/null || { echo "wrk is not installed (Debian: apt-get install wrk)" >&2; exit 1; }
# wrk and the server share the machine: one wrk thread, four connections.
threads=${WRK_THREADS:-1}
connections=${WRK_CONNECTIONS:-4}

cargo build --release --quiet --bin cloze
work=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

target/release/cloze --data-dir "$work/index" serve --bind 127.0.0.1:0 >"$work/stdout" 2>"$work/log" &
server_pid=$!
for _ in $(seq 100); do grep -q "listening on" "$work/stdout" 2>/dev/null && break; sleep 0.1; done
base=$(sed -n 's/^listening on //p' "$work/stdout" | head -1)
[ -n "$base" ] || { cat "$work/log" >&2; exit 1; }

curl -sf -X PUT "$base/collections/scifact" -H 'content-type: application/json' \
    -d "{\"model\": \"$model\"}" >/dev/null
started=$(date +%s.%N)
curl -sf -X POST "$base/collections/scifact/_bulk" -H 'content-type: application/x-ndjson' \
    --data-binary @"$data/corpus.jsonl" >"$work/bulk.json"
loaded=$(date +%s.%N)
documents=$(curl -sf "$base/collections/scifact" | python3 -c 'import json,sys; print(json.load(sys.stdin)["documents"])')
echo "bulk-loaded $documents SciFact documents with $(basename "$model") in $(python3 -c "print(round($loaded - $started, 1))") s"

# One request body per query, for wrk to cycle through.
python3 - "$data/queries.jsonl" "$work" <<'EOF'
import json, sys
# Every answer's Server-Timing header (the server's time per stage) is appended, one line per
# answer, to the file named after `--` on wrk's command line (wrk's thread:get cannot be
# trusted with tables).
STAGES = """
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end
function init(args)
  if args[1] then
    timings = io.open(args[1] .. "-" .. id, "w")
    timings:setvbuf("line")
  end
end
function response(status, headers, body)
  local timing = headers["server-timing"] or headers["Server-Timing"]
  if timings and timing then timings:write(timing, "\\n") end
end
"""
queries = [json.loads(line)["text"] for line in open(sys.argv[1]) if line.strip()]
for mode in ("keyword", "hybrid"):
    with open(f"{sys.argv[2]}/{mode}.lua", "w") as lua:
        lua.write("local bodies = {\n")
        for text in queries:
            body = json.dumps({"q": text, "mode": mode, "k": 10})
            lua.write("  " + json.dumps(body) + ",\n")
        lua.write("}\nlocal i = 0\n")
        lua.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n')
        lua.write("request = function()\n  i = i % #bodies + 1\n")
        lua.write('  return wrk.format(nil, "/collections/scifact/_search", nil, bodies[i])\nend\n')
        lua.write(STAGES)
EOF

# Warm up both paths (page cache, the model, the allocator).
for mode in keyword hybrid; do
    wrk -t1 -c1 -d2s -s "$work/$mode.lua" "$base" >/dev/null
done

run() {  # name, wrk arguments...
    local name=$1; shift
    wrk -t"$threads" -c"$connections" -d"${duration}s" --latency "$@" -- "$work/stages-$name" >"$work/$name.txt"
    python3 - "$work/$name.txt" "$name" "$work/stages-$name" <<'EOF'
import glob, json, re, sys
text = open(sys.argv[1]).read()
def ms(value):
    number, unit = re.match(r"([\d.]+)(us|ms|s)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
qps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p50 = ms(re.search(r"\s50%\s+(\S+)", text).group(1))
p99 = ms(re.search(r"\s99%\s+(\S+)", text).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
if errors:
    sys.exit(f"{sys.argv[2]}: {errors.group(1)} failed requests")
per_stage = {}
for path in glob.glob(sys.argv[3] + "-*"):
    for line in open(path):
        for name, ms in re.findall(r"(\w+);dur=([\d.]+)", line):
            per_stage.setdefault(name, []).append(float(ms))
stages = {}
for name, values in per_stage.items():
    values.sort()
    pick = lambda f: values[min(len(values) - 1, round((len(values) - 1) * f))]
    stages[name] = {"median": pick(0.5), "p99": pick(0.99), "answers": len(values)}
print(f"{sys.argv[2]}\t{qps:.1f}\t{p50:.2f}\t{p99:.2f}\t{json.dumps(stages)}")
EOF
}

{
    run health "$base/health"
    run keyword -s "$work/keyword.lua" "$base"
    run hybrid -s "$work/hybrid.lua" "$base"
} >"$work/rows.tsv"

echo "wrk -t$threads -c$connections -d${duration}s per row; $(nproc) cores shared by wrk and the server"
python3 - "$work/rows.tsv" "$(basename "$model")" "$threads" "$connections" "$duration" <<'EOF'
import json, os, sys, time
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
floor = float(rows[0][1])
print(f"| request | queries/s | p50 ms | p99 ms | queries/s vs GET /health |")
print(f"|---|---|---|---|---|")
for name, qps, p50, p99, _ in rows:
    print(f"| {name} | {float(qps):,.1f} | {p50} | {p99} | {float(qps) / floor:.3f} |")
print()
print("Server time per stage (Server-Timing of every answer), ms, median / p99:")
result = {"bench": "http_load", "model": sys.argv[2], "wrk_threads": int(sys.argv[3]),
          "wrk_connections": int(sys.argv[4]), "duration_s": int(sys.argv[5]), "rows": {}}
for name, qps, p50, p99, stages in rows:
    stages = json.loads(stages)
    result["rows"][name] = {"qps": float(qps), "p50_ms": float(p50), "p99_ms": float(p99), "stages_ms": stages}
    if stages:
        cells = ", ".join(f"{stage} {v['median']:.3f} / {v['p99']:.3f}" for stage, v in stages.items())
        print(f"  {name}: {cells}")
os.makedirs("target/bench-results", exist_ok=True)
with open("target/bench-results/http-load.json", "w") as out:
    json.dump(result, out, indent=2)
with open("target/bench-results/results.jsonl", "a") as table:
    table.write(json.dumps({"name": "http-load", "unix_time": int(time.time()), "result": result}) + "\n")
print("target/bench-results/http-load.json")
EOF
