#!/usr/bin/env bash
# One bundled run on the GPU machine: build, every test, compute-sanitizer on a representative
# subset, then the benchmark table (ours vs our dense path, and the SDPA baselines in the same run).
# Usage (on the device): bash bench/device_run.sh "4K,16K,32K,128K"   (results under $OUT)
set -uo pipefail
LENGTHS=${1:-4K,16K,32K}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
B=/tmp/fp-build
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
cmake --version | head -1
GTEST_ARG=""; [ -d .ext/googletest ] && GTEST_ARG="-DFLASHPREFILL_GTEST_SOURCE=$PWD/.ext/googletest"
# The device has no nvidia-cutlass wheel: the same pinned headers travel in .ext/cutlass/include.
CUTLASS_ARG=""; [ -d .ext/cutlass/include ] && CUTLASS_ARG="-DFLASHPREFILL_CUTLASS_INCLUDE=$PWD/.ext/cutlass/include"
cmake -S . -B $B -G Ninja -DCMAKE_BUILD_TYPE=Release $GTEST_ARG $CUTLASS_ARG > "$OUT/configure.log" 2>&1 || { tail -20 "$OUT/configure.log"; exit 1; }
cmake --build $B -j 16 > "$OUT/build.log" 2>&1 || { grep -E "error" -A3 "$OUT/build.log" | head -40; exit 1; }
grep -E "Hopper kernel|CUTLASS" "$OUT/configure.log"
echo "HGMMA instructions in the library: $(cuobjdump -sass $B/libflashprefill.a 2>/dev/null | grep -c HGMMA)"
(cd $B && ctest --output-on-failure -j 4 > "$OUT/ctest.log" 2>&1); echo "ctest exit $?"; grep -E "tests passed|FAILED|Failed" "$OUT/ctest.log" | head -20
grep -E "differ|Expected|Which is|actual|seed=" "$OUT/ctest.log" | head -20
if [ "${SANITIZE:-1}" = 1 ]; then
  compute-sanitizer --tool memcheck --error-exitcode 9 $B/tests/cuda/test_cuda_backend --gtest_filter='Cuda.Varlen*:Cuda.AlphaZero*:Cuda.Score*:Cuda.LongRows*' > "$OUT/memcheck.log" 2>&1; echo "memcheck exit $?"
  compute-sanitizer --tool racecheck --error-exitcode 9 $B/tests/cuda/test_cuda_backend --gtest_filter='Cuda.AlphaZero*:Cuda.Score*' > "$OUT/racecheck.log" 2>&1; echo "racecheck exit $?"
  tail -n 3 "$OUT/memcheck.log" "$OUT/racecheck.log"
fi
IFS=, read -ra LS <<< "$LENGTHS"
for L in "${LS[@]}"; do
  $B/flashprefill bench --backend cuda --shape llama3-8b --seq-len "$L" --repeats 10 --json | tee -a "$OUT/ours.jsonl"
done
python3 bench/sdpa_baseline.py --lengths "$(echo $LENGTHS | sed 's/K/*1024/g' | python3 -c 'import sys; print(",".join(str(eval(x)) for x in sys.stdin.read().strip().split(",")))')" --json "$OUT/sdpa.json"
