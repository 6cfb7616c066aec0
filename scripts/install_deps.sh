#!/usr/bin/env bash
# Installs everything flashprefill needs on a fresh Debian 12 machine, unattended.
# CUDA is optional: without nvcc the CPU backend builds alone.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

apt_packages=(build-essential cmake ninja-build git pkg-config
              libgtest-dev zlib1g-dev python3 python3-pip)
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
