#!/usr/bin/env bash
# An encoder's search figures on the five test collections: the table of docs/results.md.
#
#   benches/encoder.sh MODEL_DIR [INDEX FLAGS ...]      e.g. --windows --window-length 64
#
# Each collection is indexed with the model (and the index flags), then scored with `cloze
# eval` on its test judgments (nDCG@10): keyword, semantic, and hybrid twice: with the fusion
# `cloze tune` chooses on SciFact's training judgments (the others have none, so they get
# SciFact's choice), and with the fusion `cloze tune --save` chooses on the collection's own
# pseudo-queries, no judgments at all (with the flags in $CLOZE_TUNE_FLAGS, e.g.
# "--pseudo-query-words 6"). pytrec_eval (where installed) scores every run beside.
# Indexes are kept under target/encoder/; the shared data comes from $CLOZE_TEST_DATA
# (default ../shared/data). $CLOZE_COLLECTIONS (e.g. "cacm npl") scores only those collections;
# without SciFact there is no judged fusion, and its column shows "-".
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(realpath "${1:?usage: benches/encoder.sh MODEL_DIR [INDEX FLAGS ...]}")
shift
data=$(realpath "${CLOZE_TEST_DATA:-../shared/data}")
# One folder per model and index flags, so that runs of both layouts are kept side by side.
work=$PWD/target/encoder/$(basename "$model")$(printf '%s' "${*:+ $*}" | tr -cs 'A-Za-z0-9' '-')
read -ra collections <<<"${CLOZE_COLLECTIONS:-scifact cranfield cisi cacm npl}"
cargo build --release --quiet --bin cloze
cloze() { target/release/cloze --data-dir "$work/index" "$@"; }
. benches/reference.sh

rm -rf "$work"
mkdir -p "$work"
for collection in "${collections[@]}"; do
    started=$SECONDS
    cloze index --collection "$collection" --corpus "$data/$collection/corpus.jsonl" \
        --model "$model" "$@" >/dev/null 2>"$work/index-$collection.log"
    echo "indexed $collection in $((SECONDS - started)) s" >&2
done

# `cloze tune`'s choice, as the flags that ask `cloze eval` for it (the expansion weight too,
# where the collection expands its documents).
chosen_flags() {
    python3 -c '
import json, sys
tuning = json.load(sys.stdin)
method, *parts = tuning["chosen"].split()
names = {"k": "--rrf-k", "alpha": "--alpha", "normalization": "--normalization",
         "depth": "--depth-per-side", "feedback_docs": "--feedback-docs",
         "feedback_weight": "--feedback-weight"}
flags = ["--fusion", method]
for part in parts:
    name, value = part.split("=")
    flags += [names[name], value]
if "expansion" in tuning:
    flags += ["--expansion-weight", str(tuning["expansion"]["chosen"])]
print(" ".join(flags))'
}

judged=
if [[ " ${collections[*]} " == *" scifact "* ]]; then
    judged=$(cloze tune --collection scifact --queries "$data/scifact/queries.jsonl" \
        --qrels "$data/scifact/qrels/train.tsv" --json 2>/dev/null | tee "$work/tune-scifact-train.json" | chosen_flags)
    echo "SciFact's training judgments chose: $judged" >&2
fi

# nDCG@10 of one mode on the collection's test judgments, then pytrec_eval's on the same run.
score() {
    local collection=$1
    shift
    local qrels=$data/$collection/qrels/test.tsv
    local ndcg
    ndcg=$(cloze eval --collection "$collection" --queries "$data/$collection/queries.jsonl" \
        --qrels "$qrels" --json --run-out "$work/run.trec" "$@" |
        python3 -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["ndcg@10"])')
    echo "$ndcg $(reference "$qrels" "$work/run.trec")"
}

# Where the collection expands its documents, tuning also chooses the expansion weight, and
# keyword-pseudo is keyword search with that weight (else the same as keyword).
printf '%-10s %-15s %-15s %-15s %-15s %-15s %s\n' collection keyword semantic hybrid-judged \
    keyword-pseudo hybrid-pseudo "pseudo-queries chose"
for collection in "${collections[@]}"; do
    keyword=$(score "$collection" --mode keyword)
    semantic=$(score "$collection" --mode semantic)
    hybrid_judged=-
    if [[ -n $judged ]]; then
        # shellcheck disable=SC2086 # the flags are words
        hybrid_judged=$(score "$collection" --mode hybrid $judged)
    fi
    # shellcheck disable=SC2086 # the flags are words
    pseudo=$(cloze tune --collection "$collection" --save --json ${CLOZE_TUNE_FLAGS:-} 2>/dev/null |
        tee "$work/tune-$collection-pseudo.json" | python3 -c '
import json, sys
tuning = json.load(sys.stdin)
weight = " expansion_weight=%s" % tuning["expansion"]["chosen"] if "expansion" in tuning else ""
print(tuning["chosen"] + weight)')
    keyword_pseudo=$(score "$collection" --mode keyword)
    hybrid_pseudo=$(score "$collection" --mode hybrid)
    printf '%-10s %-15s %-15s %-15s %-15s %-15s %s\n' "$collection" "${keyword// //}" \
        "${semantic// //}" "${hybrid_judged// //}" "${keyword_pseudo// //}" \
        "${hybrid_pseudo// //}" "$pseudo"
done
