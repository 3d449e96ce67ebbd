#!/usr/bin/env bash
# Sets up, builds and runs every test: the Release build, the ASan+UBSan
# build, and the libFuzzer targets for a bounded time each.
#   FUZZ_SECONDS=N  time per fuzz target (default 30; 0 skips fuzzing)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
jobs=$(nproc)
fuzz_seconds=${FUZZ_SECONDS:-30}
TSAN_TESTS="test_core|test_matmul|test_golden|test_forward_ref|test_batch|test_kvm|test_tiers|test_engine|cli_serve|cli_bench_kv|test_kv_remote|test_kv_persist"

echo "== Release build (-Werror)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DPAM_WERROR=ON >/dev/null
cmake --build build -j"$jobs"

echo "== ASan+UBSan build"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DPAM_WERROR=ON -DPAM_SANITIZE=address,undefined >/dev/null
cmake --build build-asan -j"$jobs"

echo "== TSan build (threaded parts)"
cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug -DPAM_WERROR=ON -DPAM_SANITIZE=thread >/dev/null
cmake --build build-tsan -j"$jobs"

if [ "$fuzz_seconds" -gt 0 ]; then
  echo "== libFuzzer targets (${fuzz_seconds}s each)"
  CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DPAM_FUZZ=ON -DPAM_TESTS=OFF >/dev/null
  cmake --build build-fuzz -j"$jobs"
  for f in build-fuzz/fuzz_*; do
    [ -x "$f" ] || continue
    name=$(basename "$f")
    corpus=build-fuzz/corpus-$name
    mkdir -p "$corpus"
    seeds=()
    [ -d "fuzz/seeds/$name" ] && seeds=("fuzz/seeds/$name")
    echo "-- $name"
    "$f" -max_total_time="$fuzz_seconds" -print_final_stats=0 "$corpus" "${seeds[@]}" 2>&1 | tail -n 2
  done
fi

echo "== ASan+UBSan tests"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j"$jobs")
echo "== TSan tests (thread pool, threaded kernels and forward pass)"
(cd build-tsan && TSAN_OPTIONS=halt_on_error=1 ctest --output-on-failure -j"$jobs" -R "$TSAN_TESTS")
echo "== Forward pass on the portable scalar and AVX2 kernel paths"
for isa in scalar avx2; do
  (cd build && PAM_ISA=$isa ctest --output-on-failure -j"$jobs" -R "test_golden|test_forward_ref|test_batch|test_llama_compat")
done
echo "== Release tests"
(cd build && ctest --output-on-failure -j"$jobs")
