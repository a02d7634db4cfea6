#!/usr/bin/env bash
# Set up everything attnkit needs on a fresh machine (Python, pip, git, node and npm present):
# a virtual environment in .venv with the CPU build of torch 2.13.0 (test oracle and optional
# backend), attnkit with all extras and the test tools. Idempotent: a second run is quick.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned: a looser requirement pulls a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[all,test]"
# --- further set-up steps (browser, JS client) go below this line ---
