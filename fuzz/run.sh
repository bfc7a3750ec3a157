#!/usr/bin/env bash
# Coverage-guided fuzzing of one of pcierc's fuzz targets with AFL++ for a bounded time:
#   fuzz/run.sh TARGET [SECONDS]      (targets: decoder config qmp qtest xen state_file)
# Needs cargo-afl (cargo install cargo-afl; cargo afl config --build). Seeds: fuzz/corpus/TARGET;
# AFL++'s queue and findings: fuzz/out/TARGET. Each crash found is copied to
# tests/fuzz-regressions/TARGET/, which `cargo test` replays (tests/tests/fuzz.rs).
set -euo pipefail
cd "$(dirname "$0")"
target=${1:?usage: fuzz/run.sh TARGET [SECONDS]}
seconds=${2:-60}
cargo afl build --release -q
out="out/$target"
mkdir -p "$out"
# No UI (logs instead), no CPU-frequency or core-pattern demands on a shared machine; resume
# from an earlier run's queue when there is one.
input="corpus/$target"
[ -d "$out/default/queue" ] && input=-
AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1 \
  cargo afl fuzz -V "$seconds" -i "$input" -o "$out" target/release/pcierc-afl "$target" >"$out/log" 2>&1 || {
  tail -20 "$out/log" >&2
  exit 1
}
stats="$out/default/fuzzer_stats"
get() { awk -F' *: ' -v k="$1" '$1 == k { print $2 }' "$stats"; }
crashes=$(find "$out/default/crashes" -type f -name 'id:*' 2>/dev/null | wc -l)
echo "afl $target: $(get execs_done) executions in $(get run_time) s, $(get corpus_count) paths ($(get bitmap_cvg) map coverage), $crashes crashes"
if [ "$crashes" -gt 0 ]; then
  mkdir -p "../tests/fuzz-regressions/$target"
  for f in "$out"/default/crashes/id:*; do
    cp "$f" "../tests/fuzz-regressions/$target/afl-$(sha256sum "$f" | cut -c1-16).bin"
  done
  echo "crashes copied to tests/fuzz-regressions/$target/" >&2
  exit 1
fi
