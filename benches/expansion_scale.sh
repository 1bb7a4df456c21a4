#!/usr/bin/env bash
# How long one write into an expanding collection takes as the write grows.
#
#   benches/expansion_scale.sh [SIZE ...]        (default sizes: 80000 160000)
#
# Each size is one `cloze index --vector-field vector` of that many Gutenberg passages
# (benches/gutenberg_passages.py, repeated under new ids past the 95,915 there are) with random
# 384-dimensional unit vectors given as their own, so no model runs: once without `--expand` and
# once with it, into a new collection. Prints the seconds of the write (the documents committed)
# and of the whole command (with the merge that gives the vectors their graph). The shared data
# comes from $CLOZE_TEST_DATA (default ../shared/data); the inputs are kept under
# target/expansion-scale/.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
if [ ${#sizes[@]} -eq 0 ]; then sizes=(80000 160000); fi
data=$(realpath "${CLOZE_TEST_DATA:-../shared/data}")
work=$PWD/target/expansion-scale
mkdir -p "$work"
cargo build --release --quiet --bin cloze

if [ ! -s "$work/passages.jsonl" ]; then
    python3 benches/gutenberg_passages.py "$data/mlm-corpus/gutenberg-en-train.txt.gz" \
        "$work/passages.jsonl" 1000000
fi
echo "size expand write_s total_s"
for size in "${sizes[@]}"; do
    if [ ! -s "$work/documents-$size.jsonl" ]; then
        python3 - "$work/passages.jsonl" "$work/documents-$size.jsonl" "$size" <<'PY'
import json, sys
import numpy as np
source, out, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
passages = open(source).readlines()
rng = np.random.default_rng(0)
with open(out, "w") as f:
    for number in range(size):
        document = json.loads(passages[number % len(passages)])
        document["_id"] = f"p{number}"
        vector = rng.standard_normal(384).astype(np.float32)
        document["vector"] = [round(float(x), 5) for x in vector / np.linalg.norm(vector)]
        f.write(json.dumps(document) + "\n")
PY
    fi
    for expand in no yes; do
        rm -rf "$work/index"
        flags=()
        if [ "$expand" = yes ]; then flags=(--expand); fi
        started=$(date +%s.%N)
        written=$(target/release/cloze --data-dir "$work/index" index --collection scale \
            --corpus "$work/documents-$size.jsonl" --vector-field vector "${flags[@]}" |
            grep -o ' in [0-9.]*s' | tr -dc '0-9.')
        total=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" \
            "$started" "$(date +%s.%N)")
        echo "$size $expand $written $total"
    done
done
rm -rf "$work/index"
