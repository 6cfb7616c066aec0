#!/usr/bin/env bash
# Nsight Compute profiles of our kernels on the device (one kernel launch each), after a build.
# Usage (on the device): bash bench/profile.sh [build dir]   (reports and text summaries under $OUT)
# Each profile: `flashprefill bench --no-dense --repeats 1` (or the dense path) at one length, one
# launch of the named kernel, ncu's full section set; the text keeps the sections we read.
set -uo pipefail
OUT=${OUT:-/tmp/out}
B=${1:-/tmp/fp-build}
mkdir -p "$OUT"
if [ ! -x "$B/flashprefill" ]; then
  CUTLASS_ARG=""; [ -d .ext/cutlass/include ] && CUTLASS_ARG="-DFLASHPREFILL_CUTLASS_INCLUDE=$PWD/.ext/cutlass/include"
  cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHPREFILL_BUILD_TESTS=OFF $CUTLASS_ARG > "$OUT/configure.log" 2>&1 || { tail -20 "$OUT/configure.log"; exit 1; }
  start=$(date +%s)
  cmake --build "$B" -j 16 > "$OUT/build.log" 2>&1 || { grep -E "error" -A3 "$OUT/build.log" | head -40; exit 1; }
  echo "build: $(( $(date +%s) - start )) s"
fi
SECTIONS="--section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats --section SchedulerStats --section InstructionStats"
# name | bench arguments | kernel regex | launches of that kernel to skip
PROFILES=${PROFILES:-"attn_sparse_32K|--seq-len 32K --no-dense|sparse_attention_kernel|1
attn_dense_32K|--seq-len 32K|sparse_attention_kernel|1
attn_sparse_128K|--seq-len 128K --no-dense|sparse_attention_kernel|1
score_128K|--seq-len 128K --no-dense|score_rows_kernel|1"}
while IFS='|' read -r name args kernel skip; do
  [ -z "$name" ] && continue
  echo "== $name"
  timeout 300 ncu $SECTIONS --kernel-name "regex:$kernel" --launch-skip "$skip" --launch-count 1 \
    "$B/flashprefill" bench --backend cuda --shape llama3-8b $args --repeats 1 \
    --recall-samples 1 > "$OUT/$name.txt" 2>&1
  echo "ncu exit $?"
  grep -E "^  [a-z_]|Duration|Compute \(SM\) Throughput|Memory Throughput|DRAM Throughput|L2 Hit Rate|L1/TEX Hit Rate|L2 Cache Throughput|Executed Ipc Active|Issue Slots Busy|No Eligible|Achieved Occupancy|Registers Per Thread|Warp Cycles Per Issued|Theoretical Occupancy|Block Limit" "$OUT/$name.txt" | head -30
done <<< "$PROFILES"
