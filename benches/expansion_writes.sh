#!/usr/bin/env bash
# Expansion by neighbours in a collection built by many writes instead of one.
#
#   benches/expansion_writes.sh MODEL_DIR [DOCUMENTS_PER_WRITE ...]      (default: 500 100)
#
# Each of the five test collections is indexed with `cloze index --expand` once in one write,
# then again in writes of DOCUMENTS_PER_WRITE documents each (the corpus in its file's order),
# as a collection fed all day would be. Keyword search on each is scored with `cloze eval` on
# the test judgments (nDCG@10), pytrec_eval (where installed) beside, with the time the
# indexing took. Indexes are kept under target/expansion-writes/; the shared data comes from
# $CLOZE_TEST_DATA (default ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(realpath "${1:?usage: benches/expansion_writes.sh MODEL_DIR [DOCUMENTS_PER_WRITE ...]}")
shift
sizes=("$@")
if [ ${#sizes[@]} -eq 0 ]; then sizes=(500 100); fi
data=$(realpath "${CLOZE_TEST_DATA:-../shared/data}")
work=$PWD/target/expansion-writes/$(basename "$model")
cargo build --release --quiet --bin cloze
. benches/reference.sh
rm -rf "$work"
mkdir -p "$work"

printf '%-10s %-12s %-15s %s\n' collection writes keyword-nDCG@10 seconds
for collection in scifact cranfield cisi cacm npl; do
    qrels=$data/$collection/qrels/test.tsv
    for size in one "${sizes[@]}"; do
        index=$work/$collection-$size
        parts=$work/parts
        rm -rf "$parts"
        mkdir -p "$parts"
        if [ "$size" = one ]; then
            cp "$data/$collection/corpus.jsonl" "$parts/part-0000"
        else
            split -l "$size" -a 4 -d "$data/$collection/corpus.jsonl" "$parts/part-"
        fi
        started=$(date +%s%N)
        for part in "$parts"/part-*; do
            target/release/cloze --data-dir "$index" index --collection "$collection" \
                --corpus "$part" --model "$model" --expand >/dev/null 2>>"$work/index.log"
        done
        milliseconds=$((($(date +%s%N) - started) / 1000000))
        writes=$(find "$parts" -name 'part-*' | wc -l)
        ndcg=$(target/release/cloze --data-dir "$index" eval --collection "$collection" \
            --queries "$data/$collection/queries.jsonl" --qrels "$qrels" --json \
            --run-out "$work/run.trec" --mode keyword |
            python3 -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["ndcg@10"])')
        printf '%-10s %-12s %-15s %d.%03d\n' "$collection" "$writes" \
            "$ndcg/$(reference "$qrels" "$work/run.trec")" $((milliseconds / 1000)) $((milliseconds % 1000))
    done
done
