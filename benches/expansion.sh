#!/usr/bin/env bash
# Document expansion with a model's cloze head, measured in the keyword index.
#
#   benches/expansion.sh MODEL_DIR|EXPANSIONS_DIR [TERMS:REPEAT:WEIGHT ...]
#                                                   (default: 5:3:count 20:3:lift)
#
# Each document of the five test collections gets the words its model expects in it and does
# not contain (`cloze_mlm::Expander`, windows of 64 tokens), appended to its text: the first
# TERMS of them, each repeated round(weight x REPEAT) times, where the weight is the word's
# expected count (`count`) or that count less its mean over the collection (`lift`, which drops
# the words the model expects everywhere). Every expanded collection is indexed with the default
# analyzer and scored with `cloze eval` (nDCG@10, keyword) beside the plain collection, on
# SciFact's training and test judgments and the others' test judgments; pytrec_eval (where
# installed) scores the same runs. MODEL_DIR must keep its MLM head (a `cloze train` model with
# the cloze task). Expansions are kept under target/expansion/; the shared data comes from
# $CLOZE_TEST_DATA (default ../shared/data). A folder that already holds the five collections'
# expansions (COLLECTION.jsonl, one `{"_id", "terms": [[word, weight], ...]}` a document, such as
# benches/nearest_words.py writes) is measured as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(realpath "${1:?usage: benches/expansion.sh MODEL_DIR|EXPANSIONS_DIR [TERMS:REPEAT:WEIGHT ...]}")
shift
settings=("$@")
if [ ${#settings[@]} -eq 0 ]; then settings=(5:3:count 20:3:lift); fi
data=$(realpath "${CLOZE_TEST_DATA:-../shared/data}")
if [ -s "$model/scifact.jsonl" ]; then
    work=$model
else
    work=$PWD/target/expansion/$(basename "$model")
fi
mkdir -p "$work"
cargo build --release --quiet --bin cloze
if [ "$work" != "$model" ]; then
    cargo build --release --quiet -p cloze-mlm --example expand_corpus
fi
cloze=$PWD/target/release/cloze
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

for collection in scifact cranfield cisi cacm npl; do
    if [ ! -s "$work/$collection.jsonl" ]; then
        if [ "$work" = "$model" ]; then
            echo "$model: no $collection.jsonl among the expansions" >&2
            exit 1
        fi
        target/release/examples/expand_corpus "$model" "$data/$collection/corpus.jsonl" \
            "$work/$collection.jsonl.partial" 50 64
        mv "$work/$collection.jsonl.partial" "$work/$collection.jsonl"
    fi
done

# Writes CORPUS with each document's expansion appended, as the setting says.
expand() {
    python3 - "$@" <<'PY'
import json, sys
from collections import defaultdict
corpus, expansions, out, setting = sys.argv[1:5]
terms, repeat, weight = setting.split(":")
terms, repeat = int(terms), float(repeat)
if weight not in ("count", "lift"):
    sys.exit(f"{setting}: the weight is count or lift")
expanded = {}
for line in open(expansions, encoding="utf-8"):
    document = json.loads(line)
    expanded[document["_id"]] = document["terms"]
if weight == "lift":
    total = defaultdict(float)
    for words in expanded.values():
        for word, count in words:
            total[word] += count
    prior = {word: count / len(expanded) for word, count in total.items()}
    expanded = {
        id: sorted(((word, count - prior[word]) for word, count in words), key=lambda t: -t[1])
        for id, words in expanded.items()
    }
with open(out, "w", encoding="utf-8") as lines:
    for line in open(corpus, encoding="utf-8"):
        document = json.loads(line)
        words = [w for w, count in expanded.get(document["_id"], [])[:terms]
                 for _ in range(round(count * repeat))]
        if words:
            document["text"] = document.get("text", "") + "\n" + " ".join(words)
        lines.write(json.dumps(document) + "\n")
PY
}

. benches/reference.sh

printf '%-16s %-10s %-6s %-8s %s\n' setting collection split ndcg@10 pytrec_eval
for setting in plain "${settings[@]}"; do
    for collection in scifact cranfield cisi cacm npl; do
        corpus=$data/$collection/corpus.jsonl
        if [ "$setting" != plain ]; then
            expand "$corpus" "$work/$collection.jsonl" "$scratch/corpus.jsonl" "$setting"
            corpus=$scratch/corpus.jsonl
        fi
        rm -rf "$scratch/index"
        "$cloze" --data-dir "$scratch/index" index --collection c --corpus "$corpus" >/dev/null 2>&1
        splits=(test)
        if [ "$collection" = scifact ]; then splits=(train test); fi
        for split in "${splits[@]}"; do
            qrels=$data/$collection/qrels/$split.tsv
            ndcg=$("$cloze" --data-dir "$scratch/index" eval --collection c \
                --queries "$data/$collection/queries.jsonl" --qrels "$qrels" --json \
                --run-out "$scratch/run.trec" | python3 -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["ndcg@10"])')
            printf '%-16s %-10s %-6s %-8s %s\n' "$setting" "$collection" "$split" "$ndcg" \
                "$(reference "$qrels" "$scratch/run.trec")"
        done
    done
done
