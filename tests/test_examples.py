"""The SDK examples run as a user runs them: in a fresh interpreter, from the repository root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "basic.py": [
        "flash: FlashAttention(",
        "causal=True",
        "gpt2 preset: heads=16, causal=True",
        "chosen: flash",
        "chosen: linear",
        "[attention]",
        "built from TOML: LinearAttention(",
        "finite=True",
    ],
    "async_forward.py": ["4 requests of shape (512, 8, 64)", "largest difference from forward", "the event loop ran"],
    "streaming.py": ["chosen: flash", "chunk 6: output (144, 4, 64)", "streamed 6 chunks in order"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_example_runs(name: str) -> None:
    env = dict(os.environ, PYTHONWARNINGS="error::RuntimeWarning")
    r = subprocess.run([sys.executable, str(ROOT / "examples" / name)], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, f"{name} failed:\n{r.stdout}\n{r.stderr}"
    for text in CASES[name]:
        assert text in r.stdout, f"{name}: {text!r} not in output:\n{r.stdout}"
    assert "Traceback" not in r.stderr
