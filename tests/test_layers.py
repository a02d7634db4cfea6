"""Layering of the front ends (issue 10): no import cycle in the SDK, the CLI's config file lives with
the CLI, and normalisation/feed-forward math lives in a kernel module that the pipeline calls."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "attnkit"


def _imports(path: Path) -> set[str]:
    """Every module a file imports (relative ones as written, e.g. '.builder'), anywhere in it."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            out.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_sdk_config_does_not_import_the_builder() -> None:
    assert not {m for m in _imports(SRC / "sdk" / "config.py") if m.endswith("builder")}
    assert ".config" in _imports(SRC / "sdk" / "builder.py")


def test_cli_config_file_lives_with_the_cli() -> None:
    assert not (SRC / "config.py").exists()
    mod = importlib.import_module("attnkit.cli.config")
    assert callable(mod.load_config) and "attention" in mod.SCHEMA
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("attnkit.config")


def test_pipeline_calls_the_norm_kernels() -> None:
    from attnkit.kernels import norm
    from attnkit.sdk import pipeline

    assert pipeline.layer_norm is norm.layer_norm and pipeline.rms_norm is norm.rms_norm
    assert "..kernels.norm" in _imports(SRC / "sdk" / "pipeline.py")
    defined = {n.name for n in ast.parse((SRC / "sdk" / "pipeline.py").read_text()).body if isinstance(n, ast.FunctionDef)}
    assert not defined & {"layer_norm", "rms_norm", "feed_forward", "activation"}
