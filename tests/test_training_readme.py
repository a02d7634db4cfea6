"""Every Python snippet of the README's "Further mechanisms" section (local-global, RoPE, MoE, graphs,
training utilities) runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _snippets() -> list[str]:
    text = README.read_text()
    start = text.index("<!-- section:more -->")
    nxt = text.find("\n## ", start)
    return re.findall(r"```python\n(.*?)```", text[start : nxt if nxt != -1 else len(text)], flags=re.S)


SNIPPETS = _snippets()


def test_section_has_snippets() -> None:
    assert len(SNIPPETS) >= 5


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_snippet_runs(index: int) -> None:
    exec(compile(SNIPPETS[index], f"README.md further-mechanisms snippet {index}", "exec"), {"__name__": "__readme__"})
