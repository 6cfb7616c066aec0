#!/usr/bin/env bash
# Configures and builds flashprefill (Release) into build/. CUDA is built when nvcc is found.
# Extra CMake arguments pass through: scripts/build.sh -DFLASHPREFILL_ENABLE_CUDA=OFF
set -euo pipefail
cd "$(dirname "$0")/.."
# The pinned CMake (>= 3.28, for nvcc's C++20 dialect) comes from pip; put its bin dir first.
PY=${PYTHON:-python3}
PIP_BIN=$($PY -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PATH="$PIP_BIN:$HOME/.local/bin:$PATH"
if [ -z "${CUDACXX:-}" ] && ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDACXX=/usr/local/cuda/bin/nvcc
fi
JOBS=${JOBS:-$(nproc)}
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build build -j "$JOBS"
