#!/usr/bin/env bash
# One bundled GPU run for the Python side: install the package, run its tests (CUDA, torch.compile,
# CUDA graphs, transformers), the one-process benchmark (with the paper's reference when a checkout
# is given in $REFERENCE), the fixed-density sweep and the TTFT example. Results under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export CMAKE_BUILD_PARALLEL_LEVEL=16 PYTHONUNBUFFERED=1
[ -d .ext/cutlass/include ] && export CMAKE_ARGS="-DFLASHPREFILL_CUTLASS_INCLUDE=$PWD/.ext/cutlass/include"
python3 -m pip install --no-build-isolation --no-deps -q ./python > "$OUT/pip.log" 2>&1 || { tail -30 "$OUT/pip.log"; exit 1; }
python3 -m pytest -q -s -p no:cacheprovider python/tests 2>&1 | tee "$OUT/pytest.log" | grep -E "passed|failed|Error|error|assert" | head -30
python3 bench/python_overhead.py 2>&1 | tee "$OUT/overhead.log" | tail -3
LENGTHS=${LENGTHS:-4K,16K,32K,128K}
REF_ARG=""; [ -n "${REFERENCE:-}" ] && REF_ARG="--reference $REFERENCE"
timeout 300 python3 bench/gpu_bench.py --lengths "$LENGTHS" $REF_ARG --json "$OUT/gpu_bench.json" 2>&1 | tee "$OUT/gpu_bench.log" | grep -v Warning
timeout 120 python3 bench/gpu_bench.py --fixed-density 0.01,0.035,0.1,0.176,0.29,0.46,0.704,1.0 --lengths 32K --json "$OUT/fixed_density.json" 2>&1 | tee "$OUT/fixed.log" | grep -v Warning
timeout 240 python3 examples/transformers_ttft.py --layers 2 --lengths 32K --repeats 2 2>&1 | tee "$OUT/ttft.log" | grep -v -i warn | tail -5
