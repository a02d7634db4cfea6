"""Run the JavaScript client's tests (``npm test`` in clients/js) from pytest.

Skipped only when node is not installed. The HTTP client's tests start the server themselves through
``ATTNKIT_BIN`` (here: this interpreter's ``attnkit`` command, or ``python -m attnkit.server`` when the CLI
is absent). The local engine's tests (``test/local.test.js``) export models with this interpreter
(``ATTNKIT_PYTHON``) and compare onnxruntime-node, onnxruntime-web in Chromium and the ``web/`` demo with
attnkit's NumPy results; they skip themselves without onnxruntime-node/-web. The headless Chromium tests
skip themselves when Chromium or playwright-core is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

JS = Path(__file__).resolve().parent.parent / "clients" / "js"


def _attnkit_bin() -> str:
    script = Path(sys.executable).with_name("attnkit")
    if script.exists():
        probe = subprocess.run([str(script), "serve", "--help"], capture_output=True, text=True, timeout=120)
        if probe.returncode == 0:
            return str(script)
    return f"{sys.executable} -m attnkit.server"


@pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None, reason="node/npm not installed")
def test_js_client_npm_test() -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    env = {
        **os.environ,
        "ATTNKIT_BIN": _attnkit_bin(),
        "ATTNKIT_PYTHON": sys.executable,
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
    }
    r = subprocess.run(["npm", "test", "--silent"], cwd=JS, env=env, capture_output=True, text=True, timeout=540)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    counts = {k: int(v) for k, v in re.findall(r"^# (pass|fail|tests|skipped) (\d+)$", out, re.M)}
    assert counts.get("fail") == 0 and counts.get("pass", 0) >= 15, out[-3000:]
    print(f"node tests: {counts}")  # shows in -rA / -s output; skipped browser tests are counted here
