#!/usr/bin/env bash
# Robust discovery (issue 15, docs/ROBUST.md) on the GPU, in one device call: build (with the Python
# extension), CTest (robust and exact tests) and compute-sanitizer on the robust tests, the CLI A/B
# of exact vs robust discovery on the structured input (one binary, runs interleaved exact, robust,
# exact, ... so clock drift lands on both), and the needle suite with the library's robust mode.
# Usage (on the device, from the repository root, carrying .stage/ext.tar.xz, whose CUTLASS headers
# device_run.sh unpacks: without them the build has no sm_90a kernels; results under $OUT). Within a
# 10-minute call:
#   NEEDLES=0 bash bench/robust_device.sh                                  # tests, sanitizers, A/B
#   TESTS=0 SANITIZE=0 AB=0 NEEDLE_LENGTHS=16K,32K bash bench/robust_device.sh
#   TESTS=0 SANITIZE=0 AB=0 NEEDLE_LENGTHS=64K,128K bash bench/robust_device.sh
# Switches: TESTS=0 / SANITIZE=0 / AB=0 / NEEDLES=0 skip a part; AB_LENGTHS (default 32K,128K),
#   ROUNDS (default 5), NEEDLE_LENGTHS (default 16K,32K,64K,128K), NEEDLE_MODES
#   (default exact@0.12,robust@0.12), NEEDLE_HEAD_DIM (default 64; 128 runs the needles through the
#   sm_90a e4m3 best-key kernel on Hopper).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
B=/tmp/fp-build
export PYTHONUNBUFFERED=1
# Build + CTest via device_run.sh (its TESTS/CTEST_REGEX switches), no CLI, no default sanitizers.
TESTS=${TESTS:-1} SANITIZE=0 CLI=0 PYEXT=1 bash bench/device_run.sh "" || exit 1
if [ "${SANITIZE:-1}" = 1 ]; then
  timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 $B/tests/cuda/test_cuda_backend \
    --gtest_filter="Cuda.Robust*" > "$OUT/robust_memcheck.log" 2>&1; echo "memcheck (robust tests) exit $?"
  # RobustRandomShapes: head dims 64 and 128 through both score kernels' query summaries.
  timeout 300 compute-sanitizer --tool racecheck --error-exitcode 9 $B/tests/cuda/test_cuda_backend \
    --gtest_filter="Cuda.RobustRandomShapes*:Cuda.RobustVarlen*" > "$OUT/robust_racecheck.log" 2>&1; echo "racecheck (robust tests) exit $?"
  tail -n 2 "$OUT/robust_memcheck.log" "$OUT/robust_racecheck.log"
fi
if [ "${AB:-1}" = 1 ]; then
  JSONL="$OUT/robust_ab.jsonl"; rm -f "$JSONL"
  IFS=, read -ra LS <<< "${AB_LENGTHS:-32K,128K}"
  for L in "${LS[@]}"; do
    for round in $(seq "${ROUNDS:-5}"); do
      for mode in exact robust; do
        timeout 150 $B/flashprefill bench --backend cuda --shape llama3-8b --seq-len "$L" --discovery $mode \
          --repeats 10 --no-dense --recall-samples 16 --json | sed "s/^{/{\"length\":\"$L\",/" >> "$JSONL"
      done
    done
  done
  python3 - "$JSONL" <<'EOF' | tee "$OUT/robust_ab.txt"
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
keys = ("discovery_ms", "attention_ms", "total_ms", "density", "attention_recall")
print(f"{'L':>6} {'mode':>7} {'discovery':>10} {'attention':>10} {'total':>8} {'density':>8} {'recall':>7}   (ms; median of rounds)")
for length in dict.fromkeys(r["length"] for r in rows):
    med = {}
    for mode in ("exact", "robust"):
        rs = [r for r in rows if r["length"] == length and r["discovery"] == mode]
        med[mode] = {k: statistics.median(r[k] for r in rs) for k in keys}
        m = med[mode]
        print(f"{length:>6} {mode:>7} {m['discovery_ms']:10.3f} {m['attention_ms']:10.3f} {m['total_ms']:8.3f} "
              f"{m['density']:8.4f} {m['attention_recall']:7.4f}")
    r = {k: med["robust"][k] / med["exact"][k] for k in keys}
    print(f"{length:>6} {'r/e':>7} {r['discovery_ms']:10.3f} {r['attention_ms']:10.3f} {r['total_ms']:8.3f} {r['density']:8.3f}")
EOF
fi
if [ "${NEEDLES:-1}" = 1 ]; then
  # One length per process, so one slow length cannot take the others' time.
  IFS=, read -ra NS <<< "${NEEDLE_LENGTHS:-16K,32K,64K,128K}"
  for L in "${NS[@]}"; do
    PYTHONPATH=$PWD/python timeout 280 python3 bench/needle_suite.py --device cuda --lengths "$L" \
      --modes "${NEEDLE_MODES:-exact@0.12,robust@0.12}" --head-dim "${NEEDLE_HEAD_DIM:-64}" \
      --json "$OUT/needles_$L.json" \
      > "$OUT/needles_$L.md" 2> "$OUT/needles_$L.log"
    echo "needles $L exit $?"; cat "$OUT/needles_$L.md"
  done
fi
