#!/usr/bin/env bash
# libFuzzer runs of lazypull's parsers (fuzz/, see docs/reliability.md "Fuzzing").
#
#   scripts/fuzz.sh build                 build every target, instrumented
#   scripts/fuzz.sh list                  name the targets
#   scripts/fuzz.sh seeds                 regenerate the committed seeds in fuzz/corpus/ from
#                                         the sample layers (fuzz/corpus/generate.rs)
#   scripts/fuzz.sh run TARGET SECONDS [LIBFUZZER_ARGS...]
#                                         fuzz one target, growing fuzz/corpus/TARGET's copy
#   scripts/fuzz.sh smoke [SECONDS]       every target for SECONDS each (default 15); fails
#                                         if any target crashes, hangs or runs out of memory
#
# Works on the stable toolchain: the targets are built by plain `cargo build` with the
# SanitizerCoverage flags cargo-fuzz would pass (no sanitizer: the parsers are safe Rust, so
# the findings are panics, overflows, hangs and runaway allocations). Built binaries land in
# $CARGO_TARGET_DIR (default target/fuzz); runs write new inputs to a work corpus there and
# crashes to $CARGO_TARGET_DIR/artifacts/TARGET/, never into the committed seeds.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/fuzz}"
# One compression thread: the fuzzer's time goes to the parsers, and runs stay reproducible.
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-1}"

TARGETS=(estargz zstd_chunked tar_ingest erofs_image erofs_chunk_index oci_json auth_challenge)

# What `cargo fuzz build --sanitizer none` passes, minus the nightly-only flags; `--cfg fuzzing`
# is what libfuzzer-sys and dependencies test for.
RUSTFLAGS_FUZZ=(
    -Cpasses=sancov-module
    -Cllvm-args=-sanitizer-coverage-level=4
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
    -Cllvm-args=-sanitizer-coverage-pc-table
    -Cllvm-args=-sanitizer-coverage-trace-compares
    --cfg fuzzing
    -Cdebug-assertions
    -Coverflow-checks
)

# An explicit --target keeps RUSTFLAGS off build scripts and proc macros, which run on the host
# without libFuzzer's coverage callbacks.
host=$(rustc -vV | sed -n 's/^host: //p')

build() {
    echo "== building fuzz targets into $CARGO_TARGET_DIR"
    RUSTFLAGS="${RUSTFLAGS_FUZZ[*]}" cargo build --manifest-path fuzz/Cargo.toml \
        --target "$host" --profile fuzz --bins
}

bin() {
    echo "$CARGO_TARGET_DIR/$host/fuzz/$1"
}

known() {
    local t
    for t in "${TARGETS[@]}"; do
        [[ $t == "$1" ]] && return 0
    done
    echo "unknown target \`$1\`; targets: ${TARGETS[*]}" >&2
    exit 2
}

# run_target TARGET SECONDS [ARGS...]: fuzz from the committed seeds plus the work corpus.
run_target() {
    local target=$1 seconds=$2
    shift 2
    local work="$CARGO_TARGET_DIR/corpus/$target" artifacts="$CARGO_TARGET_DIR/artifacts/$target/"
    mkdir -p "$work" "$artifacts"
    echo "== fuzzing $target for ${seconds}s"
    # New inputs go to the first directory (the work corpus); the seeds stay as committed.
    "$(bin "$target")" "$work" "fuzz/corpus/$target" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=1048576 \
        -artifact_prefix="$artifacts" -print_final_stats=1 "$@"
}

cmd=${1:-}
case $cmd in
    build)
        build
        ;;
    list)
        printf '%s\n' "${TARGETS[@]}"
        ;;
    seeds)
        build
        rm -rf "${TARGETS[@]/#/fuzz/corpus/}"
        "$(bin generate-corpus)" fuzz/corpus
        du -sh fuzz/corpus
        ;;
    run)
        [[ $# -ge 3 ]] || { echo "usage: $0 run TARGET SECONDS [LIBFUZZER_ARGS...]" >&2; exit 2; }
        known "$2"
        build
        target=$2 seconds=$3
        shift 3
        run_target "$target" "$seconds" "$@"
        ;;
    smoke)
        seconds=${2:-15}
        build
        failed=()
        for target in "${TARGETS[@]}"; do
            # Quiet: libFuzzer's progress lines would drown the test log; a crash prints its
            # report (and the input's path) regardless.
            if ! run_target "$target" "$seconds" -close_fd_mask=1 >"$CARGO_TARGET_DIR/smoke-$target.log" 2>&1; then
                cat "$CARGO_TARGET_DIR/smoke-$target.log"
                failed+=("$target")
            else
                grep -E '^stat::number_of_executed_units|^#[0-9]+.*DONE' \
                    "$CARGO_TARGET_DIR/smoke-$target.log" | tail -1 | sed "s/^/   $target: /"
            fi
        done
        if ((${#failed[@]})); then
            echo "== fuzz smoke FAILED: ${failed[*]} (inputs in $CARGO_TARGET_DIR/artifacts/)"
            exit 1
        fi
        echo "== fuzz smoke: ${#TARGETS[@]} targets ran ${seconds}s each without a finding"
        ;;
    *)
        sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
