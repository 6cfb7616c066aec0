#!/usr/bin/env bash
# One GPU run for serving (issue 14): build and install the Python package (with its vLLM entry point)
# into /tmp/fp-site, run the Python tests on the GPU, then - where vLLM was staged into /tmp/vllm-site
# (bench/vllm_stage.sh) - the plugin's tests and bench/vllm_e2e.py. Results under $OUT.
# Usage (device, repo root, carrying .stage/ext.tar.xz): bash bench/vllm_device.sh [e2e arguments]
# Switches: PYTEST=0 skips the library's pytest; PYTEST_ARGS narrows it; PLUGIN_TESTS=0 skips test_vllm_plugin.py;
# E2E=0 skips vllm_e2e.py. A second call on the same warm machine with the same sources reuses the build.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=16
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
if [ ! -d .ext/cutlass/include ] && [ -f .stage/ext.tar.xz ]; then mkdir -p .ext && tar -xJf .stage/ext.tar.xz -C .ext; fi
[ -d .ext/cutlass/include ] && export CMAKE_ARGS="-DFLASHPREFILL_CUTLASS_INCLUDE=$PWD/.ext/cutlass/include"
# Host debug info, unstripped: a crash's backtrace names our functions (optimisation is unchanged).
export SKBUILD_INSTALL_STRIP=false CMAKE_ARGS="${CMAKE_ARGS:-} -DCMAKE_CXX_FLAGS=-g"
# A later call on the same warm machine with the same sources reuses the build.
sources=$(find python src include CMakeLists.txt -type f -not -path '*/__pycache__/*' -not -path 'python/tests/*' | sort | xargs sha256sum | sha256sum | cut -c1-16)
if [ -f /tmp/fp-site/.sources ] && [ "$(cat /tmp/fp-site/.sources)" = "$sources" ]; then
  echo "flashprefill already built from these sources ($sources)"
else
  start=$(date +%s)
  python3 -m pip install --no-build-isolation --no-deps -q --upgrade --target /tmp/fp-site ./python > "$OUT/pip.log" 2>&1 \
    || { tail -30 "$OUT/pip.log"; exit 1; }
  echo "$sources" > /tmp/fp-site/.sources
  echo "flashprefill built and installed in $(( $(date +%s) - start )) s"
fi
export PYTHONPATH=/tmp/fp-site${PYTHONPATH:+:$PYTHONPATH}
[ -d /tmp/vllm-site ] && export PYTHONPATH=$PYTHONPATH:/tmp/vllm-site
if [ "${PYTEST:-1}" = 1 ]; then
  start=$(date +%s)
  timeout 420 python3 -X faulthandler -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-python/tests} > "$OUT/pytest.log" 2>&1
  status=$?
  echo "pytest exit $status ($(( $(date +%s) - start )) s)"; grep -E "passed|failed|skipped|Error|Fatal|Segmentation" "$OUT/pytest.log" | tail -15
  if [ $status -ge 128 ] || grep -q "Fatal Python error" "$OUT/pytest.log"; then
    # A crash: the failing test under cuda-gdb for the native backtrace.
    failing=$(grep -oE "python/tests/test_[a-z0-9_]+\.py\", line [0-9]+ in test_[a-z0-9_]+" "$OUT/pytest.log" | tail -1 \
      | sed -E 's/\", line [0-9]+ in /::/')
    echo "native backtrace of $failing:"
    timeout 200 cuda-gdb -batch -ex run -ex bt -ex "info threads" --args python3 -m pytest -q -p no:cacheprovider -x \
      "${failing%%::*}" > "$OUT/backtrace.txt" 2>&1
    grep -vE "^\[New Thread|^\[Thread .* exited" "$OUT/backtrace.txt" | grep -A25 -m1 "SIGSEGV"
  fi
fi
if [ "${E2E:-1}" = 1 ] && python3 -c "import vllm" 2>/dev/null; then
  python3 -c "import vllm, importlib.metadata as m; print('vllm', vllm.__version__, 'plugins:', [e.value for e in m.entry_points(group='vllm.general_plugins')])"
  [ "${PLUGIN_TESTS:-1}" = 1 ] && timeout 120 python3 -m pytest -q -p no:cacheprovider python/tests/test_vllm_plugin.py 2>&1 | tail -3
  # The whole log to a file; the summary lines (line-buffered, so a timeout keeps them) to the output.
  timeout ${E2E_TIMEOUT:-480} python3 bench/vllm_e2e.py --out "$OUT/vllm" "$@" > "$OUT/vllm_e2e.log" 2>&1
  echo "vllm_e2e exit $?"
  grep -vE "(INFO|DEBUG|WARNING) |Warning|warn\(|^\s*$|it/s\]" "$OUT/vllm_e2e.log" | tail -60
fi
