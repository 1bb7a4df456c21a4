#!/usr/bin/env bash
# One encoder per collection, trained on that collection's documents alone, as a user trains
# one on their own: the `retrieval` preset with STEPS steps each, then each model scored on its
# own collection by benches/encoder.sh (with the index flags given, e.g. --expand).
#
#   benches/per_collection.sh MODELS_DIR STEPS [INDEX FLAGS ...]
#
# Models go to MODELS_DIR/<collection>; each one's table goes to MODELS_DIR/<collection>.txt.
# $CLOZE_COLLECTIONS (e.g. "cacm npl") trains and scores only those collections.
set -euo pipefail
cd "$(dirname "$0")/.."
models=${1:?usage: benches/per_collection.sh MODELS_DIR STEPS [INDEX FLAGS ...]}
steps=${2:?usage: benches/per_collection.sh MODELS_DIR STEPS [INDEX FLAGS ...]}
shift 2
data=$(realpath "${CLOZE_TEST_DATA:-../shared/data}")
cargo build --release --quiet --bin cloze
mkdir -p "$models"
for collection in ${CLOZE_COLLECTIONS:-scifact cranfield cisi cacm npl}; do
    started=$SECONDS
    target/release/cloze train --preset retrieval --corpus "$data/$collection/corpus.jsonl" \
        --out "$models/$collection" --max-steps "$steps" 2>"$models/train-$collection.log"
    echo "trained $collection in $((SECONDS - started)) s" >&2
    CLOZE_COLLECTIONS=$collection benches/encoder.sh "$models/$collection" "$@" |
        tee "$models/$collection.txt"
done
