#!/usr/bin/env bash
# Fuzzes what the service parses from the network and what `cloze index` reads, each target for a bounded time:
#   bash fuzz/run.sh [SECONDS per target, default 60]
# cargo-fuzz (libFuzzer, AddressSanitizer) runs on the stable toolchain: RUSTC_BOOTSTRAP lets it
# pass the sanitizer flags that are otherwise nightly-only. Inputs found go to
# target/fuzz/corpus/TARGET; a crash stops the run, leaves its input in fuzz/artifacts/ and fails.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi
export RUSTC_BOOTSTRAP=1
# Under the workspace's one target folder.
target_dir="${CARGO_TARGET_DIR:-$PWD/../target}/fuzz"
targets=(bulk jsonl search_request)
cargo fuzz build --fuzz-dir . --target-dir "$target_dir"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in "${targets[@]}"; do
    mkdir -p "$target_dir/corpus/$target"
    echo "fuzzing $target for ${seconds}s"
    if ! cargo fuzz run --fuzz-dir . --target-dir "$target_dir" "$target" \
        "$target_dir/corpus/$target" "seeds/$target" \
        -- -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz target $target failed: the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb)" "$log"
done
