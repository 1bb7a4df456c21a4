#!/usr/bin/env bash
# Collections at scale in one command: makes the passages and their vectors, then runs the bench.
#
#   benches/scale.sh MODEL_DIR [SIZE ...]        (default sizes: 10000 100000 1000000)
#
# The passages are Gutenberg's paragraphs (gutenberg-en-train.txt.gz) of at least 8 words, cut
# into pieces of at most 20 words, the first 1,100,000 of them: the corpus has 346,000
# paragraphs, and a collection of a million documents needs more. The queries are 1,000 such
# paragraphs of the held-out books (gutenberg-en-valid.txt). Both are embedded once with
# MODEL_DIR (e.g. a `tiny` model from `cloze train --preset tiny`) by `cloze embed` (release
# build) under target/scale/inputs/, reused when already there, and then given to the server as
# the documents' own vectors; see benches/scale.rs for what is measured. The Python side needs
# hnswlib and numpy ($CLOZE_PEER_PYTHON, default python3); the shared data comes from
# $CLOZE_TEST_DATA (default ../shared/data). CLOZE_SCALE_STREAM_SECS (default 600) sets how long
# documents stream in at the largest size.
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(realpath "${1:?usage: benches/scale.sh MODEL_DIR [SIZE ...]}")
shift
sizes=("$@")
if [ ${#sizes[@]} -eq 0 ]; then sizes=(10000 100000 1000000); fi
data=${CLOZE_TEST_DATA:-../shared/data}
inputs=$PWD/target/scale/inputs/$(basename "$model")
mkdir -p "$inputs"
cargo build --release --quiet --bin cloze

if [ ! -s "$inputs/passages.jsonl" ]; then
    python3 - "$data/mlm-corpus" "$inputs" <<'EOF'
import gzip, json, sys
corpus, out = sys.argv[1], sys.argv[2]
with open(f"{out}/passages.jsonl", "w") as f:
    n = 0
    for line in gzip.open(f"{corpus}/gutenberg-en-train.txt.gz", "rt"):
        words = line.split()
        if len(words) < 8:
            continue
        for start in range(0, len(words), 20):
            piece = words[start:start + 20]
            if len(piece) >= 8:
                f.write(json.dumps({"_id": f"g{n}", "text": " ".join(piece)}) + "\n")
                n += 1
        if n >= 1_100_000:
            break
with open(f"{out}/queries.jsonl", "w") as f:
    n = 0
    for line in open(f"{corpus}/gutenberg-en-valid.txt"):
        if len(line.split()) >= 8:
            f.write(json.dumps({"_id": f"q{n}", "text": line.strip()}) + "\n")
            n += 1
            if n == 1000:
                break
EOF
fi
for part in passages queries; do
    if [ ! -s "$inputs/$part.vectors.jsonl" ]; then
        target/release/cloze embed --model "$model" --input "$inputs/$part.jsonl" \
            --text-fields text --output "$inputs/$part.vectors.jsonl.partial"
        mv "$inputs/$part.vectors.jsonl.partial" "$inputs/$part.vectors.jsonl"
    fi
done
cargo bench -p cloze-benches --bench scale -- "$model" "$inputs" "${sizes[@]}"
