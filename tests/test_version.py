"""The version is written once, in pyproject.toml; everything else reads it."""

from __future__ import annotations

import json
import re
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the cli extra brings tomli
    import tomli as tomllib

import attnkit

ROOT = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_source_tree_reads_pyproject():
    assert attnkit._source_version() == VERSION
    assert attnkit.__version__ == VERSION


def test_no_other_copy_of_the_version_in_python_sources():
    pattern = re.compile(r"""["']""" + re.escape(VERSION) + r"""["']""")
    copies = [str(p.relative_to(ROOT)) for p in (ROOT / "src").rglob("*.py") if pattern.search(p.read_text(encoding="utf-8"))]
    assert copies == []


def test_js_client_package_follows_pyproject():
    """npm needs a version in package.json: it must be pyproject's (release: change both, this test says so)."""
    for name in ("package.json", "package-lock.json"):
        data = json.loads((ROOT / "clients" / "js" / name).read_text())
        assert data["version"] == VERSION, name


def test_changelog_has_this_version():
    assert re.search(rf"^## \[?{re.escape(VERSION)}\]?", (ROOT / "CHANGELOG.md").read_text(), re.MULTILINE)
