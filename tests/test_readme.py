"""Every Python snippet of the README's quick tour runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _tour_snippets() -> list[str]:
    text = README.read_text()
    start = text.index("<!-- section:tour -->")
    end = text.index("\n## ", start)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


SNIPPETS = _tour_snippets()


def test_tour_has_snippets() -> None:
    assert len(SNIPPETS) >= 7


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_tour_snippet_runs(index: int) -> None:
    code = SNIPPETS[index]
    if "import torch" in code:
        pytest.importorskip("torch")
    exec(compile(code, f"README.md tour snippet {index}", "exec"), {"__name__": "__readme__"})
