#!/usr/bin/env bash
# Vector search against hnswlib in one command: makes the vectors, then runs the bench.
#
#   benches/vector_search.sh MODEL_DIR scifact
#   benches/vector_search.sh MODEL_DIR gutenberg [N]
#
# scifact: SciFact's corpus and its 1,109 queries. gutenberg: the first N (default 300,000)
# paragraphs of at least 8 words of gutenberg-en-train.txt.gz, and 1,000 such paragraphs of
# gutenberg-en-valid.txt as queries. Both are embedded with MODEL_DIR by `cloze embed` (release
# build) under target/vector-search/inputs/, reused when already there, and handed to
# `cargo bench -p cloze-benches --bench vector_search` with the label SET-MODEL. The Python
# side needs hnswlib and numpy ($CLOZE_PEER_PYTHON, default python3); the shared data comes
# from $CLOZE_TEST_DATA (default ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(realpath "${1:?usage: benches/vector_search.sh MODEL_DIR scifact|gutenberg [N]}")
set_name=${2:?usage: benches/vector_search.sh MODEL_DIR scifact|gutenberg [N]}
count=${3:-300000}
data=${CLOZE_TEST_DATA:-../shared/data}
label="$set_name-$(basename "$model")"
inputs=$PWD/target/vector-search/inputs/$label
mkdir -p "$inputs"
cargo build --release --quiet --bin cloze

case "$set_name" in
scifact)
    ln -sf "$(realpath "$data/scifact/corpus.jsonl")" "$inputs/documents.jsonl"
    ln -sf "$(realpath "$data/scifact/queries.jsonl")" "$inputs/queries.jsonl"
    ;;
gutenberg)
    python3 - "$data/mlm-corpus" "$count" "$inputs" <<'EOF'
import gzip, json, sys
corpus, count, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def paragraphs(lines, prefix, limit, path):
    n = 0
    with open(path, "w") as f:
        for line in lines:
            line = line.strip()
            if len(line.split()) >= 8:
                f.write(json.dumps({"_id": f"{prefix}{n}", "text": line}) + "\n")
                n += 1
                if n == limit:
                    return
paragraphs(gzip.open(f"{corpus}/gutenberg-en-train.txt.gz", "rt"), "g", count, f"{out}/documents.jsonl")
paragraphs(open(f"{corpus}/gutenberg-en-valid.txt"), "q", 1000, f"{out}/queries.jsonl")
EOF
    ;;
*) echo "unknown set $set_name: scifact or gutenberg" >&2; exit 2 ;;
esac

# SciFact's documents have titles; queries and paragraphs are text alone.
fields() { if [ "$set_name" = scifact ] && [ "$1" = documents ]; then echo title,text; else echo text; fi; }
for part in documents queries; do
    if [ ! -s "$inputs/$part.vectors.jsonl" ]; then
        target/release/cloze embed --model "$model" --input "$inputs/$part.jsonl" \
            --text-fields "$(fields $part)" --output "$inputs/$part.vectors.jsonl"
    fi
done
cargo bench -p cloze-benches --bench vector_search -- \
    "$inputs/documents.vectors.jsonl" "$inputs/queries.vectors.jsonl" "$label"
