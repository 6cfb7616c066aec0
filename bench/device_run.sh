#!/usr/bin/env bash
# One bundled run on the GPU machine: build, every test, compute-sanitizer on a representative
# subset, then the CLI benchmark per length (ours: total, discovery / attention split, density,
# error, recall; our dense path up to DENSE_MAX tokens) and the SDPA baselines.
# Usage (on the device): bash bench/device_run.sh "4K,16K,32K,128K"   (results under $OUT)
# Switches: TESTS=0 skips CTest, SANITIZE=0 skips compute-sanitizer, SDPA=0 skips the baselines,
# DENSE_MAX=32768 (tokens) bounds the lengths whose dense path is timed.
set -uo pipefail
LENGTHS=${1:-4K,16K,32K}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
B=/tmp/fp-build
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
GTEST_ARG=""; [ -d .ext/googletest ] && GTEST_ARG="-DFLASHPREFILL_GTEST_SOURCE=$PWD/.ext/googletest"
# The device has no nvidia-cutlass wheel: the same pinned headers travel in .ext/cutlass/include.
CUTLASS_ARG=""; [ -d .ext/cutlass/include ] && CUTLASS_ARG="-DFLASHPREFILL_CUTLASS_INCLUDE=$PWD/.ext/cutlass/include"
cmake -S . -B $B -G Ninja -DCMAKE_BUILD_TYPE=Release $GTEST_ARG $CUTLASS_ARG > "$OUT/configure.log" 2>&1 || { tail -20 "$OUT/configure.log"; exit 1; }
start=$(date +%s)
cmake --build $B -j 16 > "$OUT/build.log" 2>&1 || { grep -E "error" -A3 "$OUT/build.log" | head -40; exit 1; }
echo "build: $(( $(date +%s) - start )) s; HGMMA instructions in the library: $(cuobjdump -sass $B/libflashprefill.a 2>/dev/null | grep -c HGMMA)"
if [ "${TESTS:-1}" = 1 ]; then
  start=$(date +%s)
  (cd $B && timeout 300 ctest --output-on-failure --timeout 90 -j 4 > "$OUT/ctest.log" 2>&1); echo "ctest exit $? ($(( $(date +%s) - start )) s)"
  grep -E "tests passed|FAILED|Failed|\[layout\]" "$OUT/ctest.log" | head -20
  grep -E "differ|Expected|Which is|actual|seed=|error" "$OUT/ctest.log" | head -20
fi
if [ "${SANITIZE:-1}" = 1 ]; then
  timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 $B/tests/cuda/test_cuda_backend --gtest_filter='Cuda.Varlen*:Cuda.AlphaZero*:Cuda.Score*:Cuda.LongRows*:Cuda.Unsorted*' > "$OUT/memcheck.log" 2>&1; echo "memcheck exit $?"
  timeout 150 compute-sanitizer --tool racecheck --error-exitcode 9 $B/tests/cuda/test_cuda_backend --gtest_filter='Cuda.AlphaZero*:Cuda.Score*:Cuda.ManyRows*' > "$OUT/racecheck.log" 2>&1; echo "racecheck exit $?"
  tail -n 2 "$OUT/memcheck.log" "$OUT/racecheck.log"
fi
IFS=, read -ra LS <<< "$LENGTHS"
for L in "${LS[@]}"; do
  tokens=$(python3 -c "s='$L'.upper(); print(int(s[:-1]) * 1024 if s.endswith('K') else int(s))")
  DENSE_ARG=""; [ "$tokens" -gt "${DENSE_MAX:-32768}" ] && DENSE_ARG="--no-dense"
  timeout 120 $B/flashprefill bench --backend cuda --shape llama3-8b --seq-len "$L" --repeats 10 $DENSE_ARG --recall-samples 32 --json | tee -a "$OUT/ours.jsonl"
done
if [ "${SDPA:-1}" = 1 ]; then
  python3 bench/sdpa_baseline.py --lengths "$(echo $LENGTHS | sed 's/K/*1024/g' | python3 -c 'import sys; print(",".join(str(eval(x)) for x in sys.stdin.read().strip().split(",")))')" --json "$OUT/sdpa.json"
fi
