"""The documentation site: a page for every registered mechanism, examples that run, and a strict build
(``mkdocs build --strict``: broken links, missing pages and unreadable docstrings fail it) whose pictures
are drawn at build time, are not blank and land in the site, not in the source tree."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from attnkit.mechanisms import registry

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md"))
SNIPPETS = [(p, i, code) for p in PAGES for i, code in enumerate(re.findall(r"```python\n(.*?)```", p.read_text(encoding="utf-8"), re.S))]


@pytest.mark.parametrize("name", registry.names())
def test_every_mechanism_has_a_page(name: str):
    page = DOCS / "mechanisms" / f"{name}.md"
    text = page.read_text(encoding="utf-8")
    assert f"mechanisms/{name}.md" in (ROOT / "mkdocs.yml").read_text()
    cls = registry.get(name)
    assert re.search(r"^\$\$\n.+?\n\$\$$", text, re.M | re.S), "no display formula"
    assert "**Paper**" in text and "```python" in text
    assert f"::: {cls.__module__}.{cls.__name__}" in text
    assert "../img/patterns/" in text or "No picture" in text


@pytest.mark.parametrize(("page", "index", "code"), SNIPPETS, ids=[f"{p.relative_to(DOCS)}:{i}" for p, i, _ in SNIPPETS])
def test_docs_example_runs(page: Path, index: int, code: str):
    if "import torch" in code:
        pytest.importorskip("torch")
    exec(compile(code, f"{page.relative_to(ROOT)} snippet {index}", "exec"), {"__name__": "__docs__"})


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""), "NO_MKDOCS_2_WARNING": "1"}
    before = sorted(p for p in DOCS.rglob("*") if "__pycache__" not in p.parts)
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(p for p in DOCS.rglob("*") if "__pycache__" not in p.parts) == before, "the build wrote into docs/"
    return out


@pytest.mark.docs
def test_strict_build_has_every_page_formula_and_table(site: Path):
    for name in registry.names():
        html = (site / "mechanisms" / name / "index.html").read_text(encoding="utf-8")
        assert 'class="formula"><img' in html and "data:image/svg+xml;base64," in html, name
        assert ":class:<code>" not in html and ":meth:<code>" not in html, name
    perf = (site / "performance" / "index.html").read_text(encoding="utf-8")
    assert "torch / attnkit" in perf and "<table>" in perf and "<!-- perf:" not in perf
    assert (site / "img" / "benchmark-dev-2core.png").is_file()
    front = (site / "front-ends" / "index.html").read_text(encoding="utf-8")
    assert "attnkit compute" in front and "--8&lt;--" not in front and "8<--" not in front


@pytest.mark.docs
def test_pictures_are_in_the_site_and_not_blank(site: Path):
    import matplotlib.image

    referenced = set()
    for html in site.rglob("*.html"):
        referenced |= {(html.parent / m).resolve() for m in re.findall(r'src="([^"]+\.png)"', html.read_text(encoding="utf-8"))}
    patterns = sorted((site / "img" / "patterns").glob("*.png"))
    assert len(patterns) >= 14
    assert {p.resolve() for p in patterns} <= referenced, "a picture no page shows"
    for png in referenced:
        assert png.is_file(), png
        img = matplotlib.image.imread(png)[..., :3]
        h, w = img.shape[:2]
        assert w >= 400 and h >= 300, (png.name, w, h)
        assert img.std() > 0.05, f"{png.name} is blank"
        # not one flat colour inside: at least a few hundred distinct colours (heatmaps, curves)
        assert len(np.unique((img * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 100, png.name
