#!/usr/bin/env bash
# The accuracy harness on a GPU (bench/ACCURACY.md), for a machine without internet: the model file, the
# text and the gguf wheel travel with the tree. Results under $OUT/eval.
#   MODEL_FILE=shared/SmolLM2-135M-Instruct.Q4_1.gguf TEXT=shared/jargon.txt.gz GGUF_WHEEL=shared/gguf-0.19.0-py3-none-any.whl \
#     ACCELERATE_WHEEL=shared/accelerate-1.15.0-py3-none-any.whl \
#     OUT=/tmp/out bash bench/device_eval.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT/eval"
export CMAKE_BUILD_PARALLEL_LEVEL=16 PYTHONUNBUFFERED=1
[ -d .ext/cutlass/include ] && export CMAKE_ARGS="-DFLASHPREFILL_CUTLASS_INCLUDE=$PWD/.ext/cutlass/include"
python3 -c "import gguf" 2>/dev/null || python3 -m pip install --no-deps -q "${GGUF_WHEEL:?set GGUF_WHEEL to the gguf wheel}"
# transformers loads a gguf only with accelerate installed.
python3 -c "import accelerate" 2>/dev/null || python3 -m pip install --no-deps -q "${ACCELERATE_WHEEL:?accelerate is missing: set ACCELERATE_WHEEL to its wheel}"
if [ -f /tmp/fp-site/flashprefill/__init__.py ]; then
  export PYTHONPATH=/tmp/fp-site${PYTHONPATH:+:$PYTHONPATH}  # built by bench/vllm_device.sh on this warm machine
else
  python3 -m pip install --no-build-isolation --no-deps -q ./python > "$OUT/eval/pip.log" 2>&1 || { tail -30 "$OUT/eval/pip.log"; exit 1; }
fi
COMMON=(--device cuda --model-file "${MODEL_FILE:?set MODEL_FILE to SmolLM2-135M-Instruct.Q4_1.gguf}" --text "${TEXT:?set TEXT to jargon.txt.gz}")
# The tables and curves of bench/ACCURACY.md: noise floor, the paper's rule over alpha, the coverage rule and the
# oracle bound over their targets, the default (the shipped per-head profile); passkey at 4K-8K.
# METHODS / PASSKEY_METHODS / LENGTHS / EXTRA narrow a run that has little device time.
timeout ${EVAL_TIMEOUT:-560} python3 -m flashprefill.eval "${COMMON[@]}" --out "$OUT/eval" --lengths ${LENGTHS:-4K,6K,8K} --windows 3 \
  --methods ${METHODS:-eager,paper:0.3,paper:0.18,paper:0.1,paper:0.05,paper:0.02,paper:0.005,coverage:0.95,coverage:0.98,coverage:0.99,oracle:0.95,oracle:0.98,oracle:0.99,default} \
  ${EXTRA:---layer-error} --passkey-lengths ${LENGTHS:-4K,6K,8K} --passkey-methods ${PASSKEY_METHODS:-paper:0.18,default} 2>&1 | grep -v -i warn \
  | tee "$OUT/eval/eval.log" | tail -60
