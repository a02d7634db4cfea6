"""The README's command-line session runs as written (all but `attnkit serve`, which blocks)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli_support import clean_env

README = Path(__file__).resolve().parents[1] / "README.md"


def _session() -> list[str]:
    text = README.read_text()
    start = text.index("<!-- section:cli -->")
    end = text.index("\n## ", start)
    blocks = re.findall(r"```bash\n(.*?)```", text[start:end], flags=re.S)
    assert blocks, "the cli section has no bash session"
    return blocks[0].strip().splitlines()


def test_readme_session_runs(tmp_path: Path):
    lines = _session()
    assert lines[0] == 'source .venv/bin/activate && cd "$(mktemp -d)"'
    assert lines[-1].startswith("attnkit serve")
    body = lines[1:-1]
    if any("import torch" in ln for ln in body):
        pytest.importorskip("torch")
    env = clean_env(tmp_path)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    proc = subprocess.run(["bash", "-e", "-c", "\n".join(body)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    for f in (
        "attnkit-demo.png",
        "out.npy",
        "out.json",
        "out.safetensors",
        "lin.csv",
        "back.npy",
        "attn.safetensors",
        "bert.safetensors",
        "bench.csv",
        "attnkit.toml",
        "repl.npy",
    ):
        assert (tmp_path / f).is_file(), f
    import numpy as np

    from attnkit import io as aio

    assert np.array_equal(np.load(tmp_path / "back.npy"), aio.read_array(tmp_path / "out.json"))
    assert set(aio.read_arrays(tmp_path / "bert.safetensors")) >= {"bert.encoder.layer.0.attention.self.query.weight"}
