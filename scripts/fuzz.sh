#!/usr/bin/env bash
# Fuzzes wick's parsers with cargo-fuzz (libFuzzer + AddressSanitizer); no GPU needed.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to 60; TARGETs default to every target (gguf hf tokenizer
# chat_template). Each target starts from its committed seeds (fuzz/seeds/<target>, copied into
# the growing, git-ignored corpus fuzz/corpus/<target>) with its dictionary (fuzz/dicts/).
# Prints per target the executions and libFuzzer's final coverage line; exits non-zero if any
# target crashed, leaked, hit a memory limit or timed out, naming the reproducer under
# fuzz/artifacts/<target>/ (replay: cargo fuzz run <target> <file>).
#
# Toolchain: cargo-fuzz needs nightly flags. Uses `cargo +nightly` when rustup has a nightly
# toolchain, else the default (stable) toolchain with RUSTC_BOOTSTRAP=1. Installs cargo-fuzz
# when missing.
#
# Environment:
#   FUZZ_BUILD   full (default): optimised, AddressSanitizer, debug assertions (a fresh build
#                takes ~20 min on 2 cores); fast: opt-level 1, LeakSanitizer (which also
#                enforces the allocation limit), debug assertions (~6 min): what CI uses.
#   FUZZ_RSS_MB  peak RSS and largest single allocation, MiB (default 2048).
#   FUZZ_TIMEOUT seconds one input may take (default 10).
#   FUZZ_LOG_DIR where the full libFuzzer logs go (default fuzz/logs).
#   FUZZ_TOOLCHAIN a rustup toolchain to use instead (e.g. stable, to check the fallback).
#   FUZZ_KEEP_GOING=1: after a crash, save it and fuzz on for the rest of the time (long runs);
#                by default a target stops at its first crash.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS="${1:-60}"
[ $# -gt 0 ] && shift
ALL=(gguf hf tokenizer chat_template)
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL[@]}")
RSS_MB="${FUZZ_RSS_MB:-2048}"
TIMEOUT="${FUZZ_TIMEOUT:-10}"

TOOLCHAIN="${FUZZ_TOOLCHAIN:-}"
if [ -z "$TOOLCHAIN" ] && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  TOOLCHAIN=nightly
fi
if [ "$TOOLCHAIN" = nightly ]; then
  CARGO=(cargo +nightly)
else
  CARGO=(cargo ${TOOLCHAIN:+"+$TOOLCHAIN"})
  echo "fuzz: using $("${CARGO[@]}" --version) with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs nightly flags)"
  export RUSTC_BOOTSTRAP=1
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi

case "${FUZZ_BUILD:-full}" in
  # cargo-fuzz's default build (release, debug assertions, AddressSanitizer) in 16 codegen
  # units rather than 1: builds faster, runs a little slower.
  full) BUILD=(--codegen-units 16) ;;
  # The dev profile of fuzz/Cargo.toml (opt-level 1); LeakSanitizer instruments nothing but
  # brings the allocator hooks that -malloc_limit_mb needs.
  fast) BUILD=(--dev --sanitizer leak) ;;
  *) echo "fuzz: FUZZ_BUILD must be full or fast" >&2; exit 2 ;;
esac
LOG_DIR="$(realpath -m "${FUZZ_LOG_DIR:-fuzz/logs}")"

cd fuzz
start=$(date +%s)
for t in "${TARGETS[@]}"; do
  "${CARGO[@]}" fuzz build "${BUILD[@]}" "$t"
done
echo "fuzz: built ${TARGETS[*]} in $(( $(date +%s) - start )) s"

failed=()
mkdir -p "$LOG_DIR"
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  cp -n "seeds/$t"/* "corpus/$t"/ 2>/dev/null || true
  dict=()
  [ -f "dicts/$t.dict" ] && dict=("-dict=dicts/$t.dict")
  log="$LOG_DIR/$t.log"
  : >"$log"
  echo "fuzz: $t for ${SECS} s (log $log)"
  deadline=$(( $(date +%s) + SECS ))
  runs=0
  crashes=()
  # One libFuzzer session, or (FUZZ_KEEP_GOING=1) one per crash until the time is up.
  while left=$(( deadline - $(date +%s) )); [ "$left" -gt 0 ]; do
    seg="$log.segment"
    rc=0
    "${CARGO[@]}" fuzz run "${BUILD[@]}" "$t" "corpus/$t" -- \
      -max_total_time="$left" -rss_limit_mb="$RSS_MB" -malloc_limit_mb="$RSS_MB" \
      -timeout="$TIMEOUT" -print_final_stats=1 "${dict[@]}" >"$seg" 2>&1 || rc=$?
    cat "$seg" >>"$log"
    n=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$seg" | grep -o '[0-9]*$' || true)
    runs=$(( runs + ${n:-0} ))
    final=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$seg" | tail -n1 || true)
    [ -n "$final" ] || final=$(grep -E '^#[0-9]+[[:space:]]' "$seg" | tail -n1 || true)
    [ "$rc" -eq 0 ] && break
    artifact=$(grep -o 'Test unit written to [^ ]*' "$seg" | tail -n1 | sed 's/Test unit written to //')
    crashes+=("${artifact:-exit $rc}")
    echo "fuzz: $t FAILED (exit $rc), reproducer ${artifact:-none}:"
    grep -E 'ERROR: |panicked at|SUMMARY|==[0-9]+== ?ERROR' "$seg" | head -n 10 || true
    grep -A 12 -E 'panicked at' "$seg" | head -n 14 || true
    [ "${FUZZ_KEEP_GOING:-0}" = 1 ] || break
    # The same reproducer twice: a corpus file crashes at load; stop rather than spin.
    [ ${#crashes[@]} -lt 2 ] || [ "${crashes[-1]}" != "${crashes[-2]}" ] || break
  done
  rm -f "$log.segment"
  corpus=$(find "corpus/$t" -type f | wc -l)
  echo "fuzz: $t: $runs executions, corpus $corpus files, ${#crashes[@]} crashes; $final"
  [ ${#crashes[@]} -eq 0 ] || failed+=("$t (${crashes[*]})")
done
echo "fuzz: total $(( $(date +%s) - start )) s"
if [ ${#failed[@]} -gt 0 ]; then
  printf 'fuzz: crashes in: %s\n' "${failed[@]}" >&2
  exit 1
fi
