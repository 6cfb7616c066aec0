#!/usr/bin/env bash
# One bundled run on the GPU machine: build, tests, compute-sanitizer on a representative subset,
# the CLI benchmark per length, and optionally a profile of the score kernel and the Python
# package's one-process benchmark against the baselines.
# Usage (on the device): bash bench/device_run.sh "4K,16K,32K,128K"   (results under $OUT)
# Switches:
#   TESTS=0 skips CTest; CTEST_REGEX=... runs only the matching tests
#   SANITIZE=0 skips compute-sanitizer; MEMCHECK_FILTER / RACECHECK_FILTER override its gtest filters
#   CLI=0 skips the CLI benchmark; DENSE_MAX=32768 (tokens) bounds the lengths whose dense path is timed
#   SDPA=1 adds bench/sdpa_baseline.py (PyTorch SDPA) in a separate process
#   NCU_SCORE=128K profiles one launch of the score kernel at that length (ncu, no clock control)
#   NCU_SOURCE=1 (with NCU_SCORE) adds per-instruction stall samples of that launch ($OUT/score_source.csv)
#   PYEXT=1 builds the Python extension in the same build and puts it in python/flashprefill
#   PY_OVERHEAD=1 (with PYEXT=1) runs bench/python_overhead.py: the Python layer's host cost per call
#   GPU_BENCH="--lengths ... [--reference .ext --fpv2 .ext]" runs bench/gpu_bench.py with those arguments
#   BASELINES=1 runs .ext/check_baselines.py first (the external baselines against SDPA)
#   WGMMA_PROBE=1 builds and runs bench/wgmma_probe.cu (wgmma throughput by shape and CTAs per SM)
set -uo pipefail
LENGTHS=${1:-4K,16K,32K}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
B=/tmp/fp-build
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
# .ext (CUTLASS headers, googletest) travels packed in .stage/ext.tar.xz (carry it): unpack it here.
if [ ! -d .ext/cutlass/include ] && [ -f .stage/ext.tar.xz ]; then mkdir -p .ext && tar -xJf .stage/ext.tar.xz -C .ext; fi
GTEST_ARG=""; [ -d .ext/googletest ] && GTEST_ARG="-DFLASHPREFILL_GTEST_SOURCE=$PWD/.ext/googletest"
# The device has no nvidia-cutlass wheel: the same pinned headers travel in .ext/cutlass/include.
CUTLASS_ARG=""; [ -d .ext/cutlass/include ] && CUTLASS_ARG="-DFLASHPREFILL_CUTLASS_INCLUDE=$PWD/.ext/cutlass/include"
PY_ARG=""; [ "${PYEXT:-0}" = 1 ] && PY_ARG="-DFLASHPREFILL_BUILD_PYTHON=ON"
cmake -S . -B $B -G Ninja -DCMAKE_BUILD_TYPE=Release $GTEST_ARG $CUTLASS_ARG $PY_ARG > "$OUT/configure.log" 2>&1 || { tail -20 "$OUT/configure.log"; exit 1; }
start=$(date +%s)
cmake --build $B -j 16 > "$OUT/build.log" 2>&1 || { grep -E "error" -A3 "$OUT/build.log" | head -40; exit 1; }
HGMMA_COUNT=$(cuobjdump -sass $B/libflashprefill.a 2>/dev/null | grep -c HGMMA)
QGMMA_COUNT=$(cuobjdump -sass $B/libflashprefill.a 2>/dev/null | grep -c QGMMA)  # e4m3 wgmma
echo "build: $(( $(date +%s) - start )) s; HGMMA / QGMMA instructions in the library: $HGMMA_COUNT / $QGMMA_COUNT"
# Without CUTLASS the build silently falls back to the sm_80 kernels: say so where it matters.
if [ "$HGMMA_COUNT" = 0 ] && grep -q "H100\|H200\|H800\|GH200" "$OUT/gpu.txt"; then
  echo "WARNING: no sm_90a kernels in this build (no CUTLASS headers: carry .stage/ext.tar.xz); a Hopper GPU runs the sm_80 kernels"
fi
if [ "${PYEXT:-0}" = 1 ]; then cp $B/python/_C*.so python/flashprefill/ && echo "python extension: $(ls python/flashprefill/_C*.so)"; fi
if [ "${PY_OVERHEAD:-0}" = 1 ]; then
  PYTHONPATH=$PWD/python timeout 120 python3 bench/python_overhead.py 2>&1 | grep -v -i warn | tee "$OUT/python_overhead.txt"
fi
if [ "${TESTS:-1}" = 1 ]; then
  start=$(date +%s)
  REGEX_ARG=""; [ -n "${CTEST_REGEX:-}" ] && REGEX_ARG="-R ${CTEST_REGEX}"
  (cd $B && timeout ${CTEST_TIMEOUT:-300} ctest --output-on-failure --timeout 150 -j 4 $REGEX_ARG > "$OUT/ctest.log" 2>&1); echo "ctest exit $? ($(( $(date +%s) - start )) s)"
  grep -E "tests passed|FAILED|Failed|\[layout\]|Timeout" "$OUT/ctest.log" | head -20
  grep -E "differ|Expected|Which is|actual|seed=|error" "$OUT/ctest.log" | head -20
fi
if [ -n "${NCU_SCORE:-}" ]; then
  # Stall reasons and tensor-pipe activity, by the names this ncu knows (queried, not guessed).
  EXTRA=$(ncu --query-metrics 2>/dev/null | grep -oE "^(smsp__average_warps_issue_stalled_[a-z_]+_per_issue_active|sm__pipe_tensor_op_[a-z_]*cycles_active|sm__inst_executed_pipe_uniform)" | sort -u | sed -E 's/(_per_issue_active)$/\1.ratio/; s/(cycles_active)$/\1.avg.pct_of_peak_sustained_active/; s/(pipe_uniform)$/\1.sum/' | paste -sd, -)
  SECTIONS="--section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats --section SchedulerStats --section InstructionStats"
  timeout 200 ncu --clock-control none $SECTIONS ${EXTRA:+--metrics $EXTRA} --kernel-name regex:score_rows_kernel --launch-skip 2 --launch-count 1 \
    $B/flashprefill bench --backend cuda --shape llama3-8b --seq-len "$NCU_SCORE" --no-dense --repeats 1 --recall-samples 1 > "$OUT/ncu_score.txt" 2>&1
  echo "ncu exit $?"
  grep -E "Duration|Compute \(SM\) Throughput|L2 Cache Throughput|Executed Ipc Active|Issue Slots Busy|No Eligible|Achieved Active Warps|Registers Per Thread|Executed Instructions  " "$OUT/ncu_score.txt" | head -12
  grep -E "stalled|pipe_tensor|pipe_uniform" "$OUT/ncu_score.txt" | awk '$NF+0 > 0.05 || /tensor|uniform/' | head -24
  if [ "${NCU_SOURCE:-0}" = 1 ]; then
    timeout 200 ncu --clock-control none --section SourceCounters --import-source no --kernel-name regex:score_rows_kernel --launch-skip 2 \
      --launch-count 1 -f -o /tmp/score_source $B/flashprefill bench --backend cuda --shape llama3-8b --seq-len "$NCU_SCORE" --no-dense \
      --repeats 1 --recall-samples 1 > "$OUT/ncu_source.log" 2>&1; echo "ncu source exit $?"
    ncu -i /tmp/score_source.ncu-rep --page source --csv --print-source sass > "$OUT/score_source.csv" 2>> "$OUT/ncu_source.log"
    echo "source rows: $(wc -l < "$OUT/score_source.csv")"; head -c 600 "$OUT/score_source.csv"; echo
  fi
fi
if [ "${WGMMA_PROBE:-0}" = 1 ]; then
  nvcc -std=c++20 -O3 -arch=sm_90a -I src -I "${CUTLASS_INCLUDE:-.ext/cutlass/include}" bench/wgmma_probe.cu -o /tmp/wgmma_probe > "$OUT/wgmma_probe_build.log" 2>&1 \
    && /tmp/wgmma_probe | tee "$OUT/wgmma_probe.txt"
fi
if [ "${BASELINES:-0}" = 1 ]; then
  timeout 300 python3 .ext/check_baselines.py > "$OUT/baselines.log" 2>&1; echo "baselines check exit $?"; grep -v -i warn "$OUT/baselines.log" | tail -6
fi
if [ "${SANITIZE:-1}" = 1 ]; then
  start=$(date +%s)
  timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 $B/tests/cuda/test_cuda_backend \
    --gtest_filter="${MEMCHECK_FILTER:-Cuda.Varlen*:Cuda.AlphaZero*:Cuda.Score*:Cuda.LongRows*:Cuda.Unsorted*}" > "$OUT/memcheck.log" 2>&1; echo "memcheck exit $?"
  timeout 150 compute-sanitizer --tool racecheck --error-exitcode 9 $B/tests/cuda/test_cuda_backend \
    --gtest_filter="${RACECHECK_FILTER:-Cuda.AlphaZero*:Cuda.Score*:Cuda.ManyRows*}" > "$OUT/racecheck.log" 2>&1; echo "racecheck exit $? (sanitizers $(( $(date +%s) - start )) s)"
  tail -n 2 "$OUT/memcheck.log" "$OUT/racecheck.log"
fi
if [ "${CLI:-1}" = 1 ]; then
  IFS=, read -ra LS <<< "$LENGTHS"
  for L in "${LS[@]}"; do
    tokens=$(python3 -c "s='$L'.upper(); print(int(s[:-1]) * 1024 if s.endswith('K') else int(s))")
    DENSE_ARG=""; [ "$tokens" -gt "${DENSE_MAX:-32768}" ] && DENSE_ARG="--no-dense"
    timeout 120 $B/flashprefill bench --backend cuda --shape llama3-8b --seq-len "$L" --repeats 10 $DENSE_ARG --recall-samples 32 --json | tee -a "$OUT/ours.jsonl"
  done
fi
if [ "${SDPA:-0}" = 1 ]; then
  python3 bench/sdpa_baseline.py --lengths "$(echo $LENGTHS | sed 's/K/*1024/g' | python3 -c 'import sys; print(",".join(str(eval(x)) for x in sys.stdin.read().strip().split(",")))')" --json "$OUT/sdpa.json"
fi
if [ -n "${GPU_BENCH:-}" ]; then
  PYTHONPATH=$PWD/python:$PWD/bench timeout 420 python3 bench/gpu_bench.py $GPU_BENCH --json "$OUT/gpu_bench.json" 2>&1 | grep -v -i warn | tee "$OUT/gpu_bench.log" | tail -20
fi
