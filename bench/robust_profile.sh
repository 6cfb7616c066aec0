#!/usr/bin/env bash
# Where robust discovery's time goes (issue 15), in one device call: per-kernel GPU time of the
# exact and robust modes (ncu gpu__time_duration, the CLI on the llama3-8b structured input), ncu
# sections of each robust discovery kernel, and per-instruction stall samples of the robust score
# kernel and the rescue kernel.
# Usage (on the device, from the repository root; results under $OUT):
#   bash bench/robust_profile.sh                 # LENGTHS="32K 128K", SOURCE_LENGTH=32K
# Switches: TESTS=1 CTEST_REGEX=... runs CTest first; DETAILS=0 / SOURCE=0 skip parts 2 / 3.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
B=/tmp/fp-build
TESTS=${TESTS:-0} SANITIZE=0 CLI=0 bash bench/device_run.sh "" || exit 1
cli() {  # length, mode
  echo "$B/flashprefill bench --backend cuda --shape llama3-8b --seq-len $1 --discovery $2 --no-dense --repeats 2 --recall-samples 1"
}
# 1. Per-kernel time, both modes.
for L in ${LENGTHS:-32K 128K}; do
  for mode in exact robust; do
    echo "== $L $mode" >> "$OUT/kernel_times.txt"
    timeout 150 ncu --csv --metrics gpu__time_duration.sum $(cli "$L" $mode) 2>/dev/null \
      | python3 bench/kernel_times.py >> "$OUT/kernel_times.txt"
  done
done
cat "$OUT/kernel_times.txt"
# 2. Sections of one launch of each discovery kernel (after the warm-up).
if [ "${DETAILS:-1}" = 1 ]; then
  SECTIONS="--section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats --section SchedulerStats"
  for L in ${LENGTHS:-32K 128K}; do
    for mode in exact robust; do
      KERNELS="score_rows_kernel"; [ $mode = robust ] && KERNELS="score_rows_kernel|best_keys_kernel|rescue_kernel|combine_kernel"
      echo "=================== $L $mode" >> "$OUT/ncu_details.txt"
      timeout 200 ncu $SECTIONS --kernel-name "regex:$KERNELS" --launch-skip 0 --launch-count 4 $(cli "$L" $mode) \
        >> "$OUT/ncu_details.txt" 2>&1
    done
  done
  grep -E "=====|  [a-z_]+kernel|Duration|Compute \(SM\) Throughput|Memory Throughput|L2 Cache Throughput|DRAM Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Limit|No Eligible|Issued Warp" "$OUT/ncu_details.txt" | head -150
fi
# 3. Stall samples per SASS instruction.
if [ "${SOURCE:-1}" = 1 ]; then
  for kernel in score_rows_kernel rescue_kernel; do
    L=${SOURCE_LENGTH:-32K}; [ $kernel = rescue_kernel ] && L=128K
    timeout 200 ncu --section SourceCounters --section WarpStateStats --import-source no --kernel-name regex:$kernel --launch-skip 1 \
      --launch-count 1 -f -o /tmp/$kernel $(cli "$L" robust) > "$OUT/ncu_source.log" 2>&1; echo "ncu source $kernel exit $?"
    ncu -i /tmp/$kernel.ncu-rep --page source --csv --print-source sass > "$OUT/${kernel}_source.csv" 2>> "$OUT/ncu_source.log"
    echo "$kernel source rows: $(wc -l < "$OUT/${kernel}_source.csv")"
  done
fi
