#!/usr/bin/env bash
# README command 2: installs what is missing, builds, and runs every test (C++ via CTest, then the
# Python package's tests). GPU tests skip with a message where there is no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh --test
bash scripts/build.sh
PY=${PYTHON:-python3}
export PATH="$($PY -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
(cd build && ctest --output-on-failure -j "$(nproc)")
# CTest lists skipped tests without their output: say why the CUDA ones skipped.
skipped_gpu=$(grep -c "no CUDA device" build/Testing/Temporary/LastTest.log 2>/dev/null || true)
if [ "${skipped_gpu:-0}" -gt 0 ]; then
  echo "$skipped_gpu CUDA tests skipped: $(grep -m1 "no CUDA device" build/Testing/Temporary/LastTest.log)"
fi
if [ -d python/tests ]; then
  $PY -m pip install -q --no-build-isolation ./python
  set +e
  $PY -m pytest -q python/tests
  status=$?
  set -e
  # pytest exits 5 when it collected no test: that is a failure of the suite, not a pass.
  if [ $status -ne 0 ]; then exit $status; fi
fi
