#!/usr/bin/env bash
# Install Crucible and its development tools into ./.venv (created when missing).
# On a machine without an NVIDIA GPU, torch 2.13.0 (CPU build) is installed first, so that
# resolving `torch` does not pull a multi-GB CUDA build; GPU machines keep their own torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then pip install torch; else pip install torch==2.13.0; fi
fi
pip install -e ".[dev]"
