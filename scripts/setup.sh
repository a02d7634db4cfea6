#!/usr/bin/env bash
# Set up everything attnkit needs on a fresh machine (Python, pip, git, node and npm present):
# a virtual environment in .venv with the CPU build of torch 2.13.0 (test oracle and optional
# backend), attnkit with all extras, the test tools and the docs tools (mkdocs: the strict docs
# build is a test). Idempotent: a second run is quick.
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
python -m pip install -q -e ".[all,test,docs]"
# --- further set-up steps (browser, JS client) go below this line ---
# JS client dev dependencies (playwright-core drives Chromium in tests; pyodide is the browser build's runtime;
# onnxruntime-node/-web run exported models: their CPU/wasm binaries ship in the npm packages, so the optional
# CUDA download of onnxruntime-node's install script is skipped).
if command -v npm >/dev/null 2>&1 && { [ ! -f clients/js/node_modules/.package-lock.json ] \
     || [ clients/js/package-lock.json -nt clients/js/node_modules/.package-lock.json ]; }; then
  (cd clients/js && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --loglevel=error >/dev/null 2>&1) \
    || echo "setup: npm ci in clients/js failed; the browser tests will skip" >&2
fi
# Debian's Chromium for the headless browser tests (root with apt-get only; otherwise they skip).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "setup: could not install chromium; the browser tests will skip" >&2
fi
