"""Typing and the top-level namespace: mypy sees real names (it flags a typed misuse), the
``TYPE_CHECKING`` block mirrors ``_LAZY``, and every subpackage the README names is an attribute of
``attnkit`` after a plain ``import attnkit``."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import attnkit

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

BAD = """\
import attnkit

attnkit.FlashAttention(heads="8")
"""

GOOD = """\
import attnkit
from attnkit.mechanisms import registry

m: attnkit.FlashAttention = attnkit.FlashAttention(heads=8, dim=16)
out = m.forward(m.example_inputs(4)[0])
b = attnkit.AttentionBuilder().type("flash").heads(2)
opt = attnkit.training.AdamW
name: str = registry.resolve_option("cross", "dim")
"""


def _mypy(tmp_path: Path, **files: str) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("mypy")
    for name, text in files.items():
        (tmp_path / f"{name}.py").write_text(text)
    env = {**os.environ, "MYPYPATH": str(SRC)}
    cmd = [
        sys.executable,
        "-m",
        "mypy",
        "--python-version",
        "3.10",
        "--no-error-summary",
        "--show-error-codes",
        "--config-file",
        str(ROOT / "pyproject.toml"),
        *(str(tmp_path / f"{n}.py") for n in files),
    ]
    # run from the repository root so the warm .mypy_cache is reused (a cold analysis of attnkit takes a while)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)


def test_mypy_flags_a_typed_misuse_and_passes_correct_code(tmp_path: Path) -> None:
    proc = _mypy(tmp_path, bad=BAD, good=GOOD)
    lines = [ln for ln in proc.stdout.splitlines() if ": error:" in ln]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert len(lines) == 1, proc.stdout
    assert "bad.py:3:" in lines[0] and '"heads"' in lines[0] and '"str"' in lines[0] and "[arg-type]" in lines[0], lines[0]


def _type_checking_names() -> tuple[set[str], set[str]]:
    tree = ast.parse((SRC / "attnkit" / "__init__.py").read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and isinstance(n.test, ast.Name) and n.test.id == "TYPE_CHECKING")
    names: dict[str, str] = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom)
        for alias in node.names:
            assert alias.asname == alias.name, f"re-export {alias.name} as itself"
            names[alias.name] = "attnkit" + ("." + node.module if node.module else "")
    return {n for n, mod in names.items() if mod != "attnkit"}, {n for n, mod in names.items() if mod == "attnkit"}


def test_type_checking_block_mirrors_lazy() -> None:
    lazy_names, subpackages = _type_checking_names()
    assert lazy_names == set(attnkit._LAZY)
    assert subpackages <= set(attnkit._SUBMODULES)


def test_subpackages_after_a_plain_import() -> None:
    code = textwrap.dedent(
        """
        import importlib.util, attnkit
        for name in ("sdk", "io", "weights", "kernels", "mechanisms", "training", "cli", "server", "system", "errors"):
            mod = getattr(attnkit, name)
            assert mod.__name__ == "attnkit." + name, mod
        assert attnkit.training.AdamW is not None and attnkit.sdk.AttentionBuilder is attnkit.AttentionBuilder
        try:
            attnkit.no_such_thing
        except AttributeError as exc:
            assert "no_such_thing" in str(exc)
        else:
            raise AssertionError("attnkit.no_such_thing resolved")
        print("ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
