#!/usr/bin/env bash
# README command 1: installs what is missing, builds, and runs `flashprefill bench` on the best
# backend (a GPU when there is one, else the CPU) at a size that finishes in about a minute.
# Extra arguments go to the benchmark: scripts/bench.sh --seq-len 64K --shape qwen2.5-7b
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/build.sh
if ./build/flashprefill bench --backend cuda --seq-len 16 --repeats 1 --no-dense --json >/dev/null 2>&1; then
  exec ./build/flashprefill bench --backend cuda --seq-len 32K "$@"
else
  echo "no usable GPU: running on the CPU (use --seq-len to change the size)" >&2
  exec ./build/flashprefill bench --backend cpu --shape small --seq-len 8K "$@"
fi
