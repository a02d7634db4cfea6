"""MkDocs hooks of the attnkit site (``hooks:`` in mkdocs.yml); nothing here is published.

* Pictures: every attention-pattern picture is drawn at build time by :mod:`attnkit.cli._plot` (the
  code ``attnkit demo`` uses) into a temporary directory and added to the site as ``img/patterns/*.png``;
  nothing is written into the source tree. The benchmark figure comes from ``benchmarks/results``.
* Formulas: a display formula between ``$$`` lines is rendered to SVG by matplotlib's mathtext (no
  JavaScript, no network) and inlined.
* Tables: ``<!-- perf:NAME -->`` is replaced by a table built from ``benchmarks/results/*.json``.
* Docstrings: Sphinx roles such as ``:class:`~attnkit.X``` are shown as code (``X``).
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))  # draw with this checkout's attnkit, installed or not
RESULTS = ROOT / "benchmarks" / "results"
PICTURE_LENGTH = 96
_OUT: dict[str, Path] = {}


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


# ------------------------------------------------------------------------------------------ pictures
def _graph_picture(path: Path) -> None:
    """Edge attention of EdgeFeaturedAttention on an 8 x 8 grid graph, drawn as a sparse node x node matrix."""
    import numpy as np

    import attnkit
    from attnkit.cli import _plot

    side = 8
    n = side * side
    src, dst = [], []
    for i in range(n):
        r, c = divmod(i, side)
        for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            if 0 <= r + dr < side and 0 <= c + dc < side:
                src.append((r + dr) * side + c + dc)
                dst.append(i)
    edges = np.array([src, dst])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 16)).astype(np.float32)
    ef = rng.standard_normal((edges.shape[1], 4)).astype(np.float32)
    mech = attnkit.EdgeFeaturedAttention(dim=16, edge_dim=4, heads=2, seed=0)
    used, alpha = mech.graph_attention_weights(x, edges, ef)
    alpha = np.asarray(alpha)
    dense = np.zeros((alpha.shape[1], n, n))
    for e, (s, d) in enumerate(used.T):
        dense[:, d, s] = alpha[e]  # row: target node (the query), column: source node (the key)
    _plot.heatmap(
        dense,
        path,
        title="edge_featured on an 8 x 8 grid graph: attention of each node over its incoming edges",
        labels=("source node", "target node"),
    )


def _draw_pictures(out: Path) -> None:
    from attnkit.cli import _plot

    items = []
    for label, _name, compute in _plot.pictures(PICTURE_LENGTH, seed=0):
        pw = compute()
        items.append((label, pw))
        _plot.heatmap(pw, out / f"{slug(label)}.png", title=f"{label}, self-attention on a repeated 8-position motif")
    _plot.heatmap_grid(items, out / "demo.png", title=f"attnkit demo: attention weights on a repeated 8-position motif (L={PICTURE_LENGTH})")
    _graph_picture(out / "edge-featured.png")


def on_config(config: Any) -> Any:
    if "pictures" not in _OUT:
        out = Path(tempfile.mkdtemp(prefix="attnkit-docs-"))
        _draw_pictures(out)
        _OUT["pictures"] = out
    return config


def on_files(files: Files, config: Any) -> Files:
    for png in sorted(_OUT["pictures"].glob("*.png")):
        files.append(File.generated(config, f"img/patterns/{png.name}", abs_src_path=str(png)))
    files.append(File.generated(config, "img/benchmark-dev-2core.png", abs_src_path=str(RESULTS / "dev-2core.png")))
    return files


# ------------------------------------------------------------------------------------------ formulas
_FORMULA = re.compile(r"^\$\$\n(.+?)\n\$\$$", re.MULTILINE | re.DOTALL)


def _svg(tex: str) -> str:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import mathtext
    from matplotlib.font_manager import FontProperties

    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "mathtext.fontset": "cm"}):
        mathtext.math_to_image(f"${tex}$", buf, prop=FontProperties(size=15), format="svg")
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<p class="formula"><img alt="{html.escape(tex)}" src="data:image/svg+xml;base64,{data}"></p>'


def _formulas(markdown: str) -> str:
    return _FORMULA.sub(lambda m: _svg(" ".join(m.group(1).split())), markdown)


# ------------------------------------------------------------------------------------------ tables
def _fmt(x: Any, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _perf_dense() -> str:
    import math

    data = json.loads((RESULTS / "dev-2core.json").read_text())
    rows = ["| (B, H, L, D) | causal | attnkit ms | torch ms | torch / attnkit |", "|---|:--:|--:|--:|--:|"]
    main = []
    for r in data["dense"]["rows"]:
        scaled = r.get("q_scale", 1.0) != 1.0
        causal = ("yes" if r["causal"] else "no") + (f", q x {r['q_scale']:g}" if scaled else "")
        shape = f"({r['batch']}, {r['heads']}, {r['length']}, {r['dim']})"
        rows.append(f"| {shape} | {causal} | {_fmt(r['attnkit_s'] * 1e3)} | {_fmt(r['torch_s'] * 1e3)} | {_fmt(r['ratio'])} |")
        if r["batch"] == 1 and r["dim"] == 64 and not scaled:
            main.append(r["ratio"])
    env = data["environment"]
    geo = math.exp(sum(math.log(x) for x in main) / len(main))
    rows += [
        "",
        f"Batch 1, d 64, every L and both causal settings ({len(main)} rows): geometric mean of torch / attnkit "
        f"**{geo:.2f}**, smallest **{min(main):.2f}**. Rows marked *q x 8* scale the queries so that every tile takes "
        "the online-softmax path.",
        "",
        f"*Run `{data['name']}`: {env.get('cpu')}, {env.get('cpus')} cores, Python {env.get('python')}, NumPy {env.get('numpy')}, "
        f"torch {env.get('torch')}; from `benchmarks/results/dev-2core.json`.*",
    ]
    return "\n".join(rows)


def _perf_other() -> str:
    data = json.loads((RESULTS / "dev-2core.json").read_text())
    m, lin, nb = data["memory"], data["linear"], data["neighbour"]
    return "\n".join(
        [
            "| measurement | result | target met |",
            "|---|---|:--:|",
            f"| memory, L = {m['length']}, {m['heads']} heads, d {m['dim']} | {m['traced_peak_beyond_output_mb']:.1f} MB traced beyond the "
            f"{m['output_mb']:.0f} MB output (dense scores would be {m['naive_scores_mb']:.0f} MB) | {'yes' if m['passed'] else 'no'} |",
            f"| linear attention, L = {lin['length']} | {lin['linear_s'] * 1e3:.0f} ms against {lin['exact_s']:.1f} s exact "
            f"({lin['speedup']:.0f}x) | {'yes' if lin['passed'] else 'no'} |",
            f"| neighbour attention, {nb['queries']} queries x {nb['neighbours']} neighbours, d {nb['dim']} | one call "
            f"{nb['one_call_s'] * 1e3:.0f} ms, Python loop {nb['python_loop_s'] * 1e3:.0f} ms ({nb['speedup']:.1f}x) | "
            f"{'yes' if nb['passed'] else 'no'} |",
        ]
    )


def _perf_server() -> str:
    out = ["| stack | body | concurrency | requests/s | p50 ms | p99 ms | errors |", "|---|---|--:|--:|--:|--:|--:|"]
    for name in ("server_load.json", "server_load_fast.json"):
        data = json.loads((RESULTS / name).read_text())
        stack = f"{data['json_parser']}, {data['http_parser']}, {data['event_loop']}"
        for r in data["results"]:
            out.append(
                f"| {stack} | {r['format']} | {r['concurrency']} | {r['req_per_s']:.0f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['errors']} |"
            )
    data = json.loads((RESULTS / "server_load.json").read_text())
    out.append("")
    out.append(f"*Request: {data['request']}; server {data['server']}; client: {data['client']}.*")
    return "\n".join(out)


_TABLES = {"dense": _perf_dense, "other": _perf_other, "server": _perf_server}


# the docstrings use Sphinx roles (:class:`~attnkit.X`); Markdown renders them as ":class:<code>~attnkit.X</code>"
_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|attr|obj|data|exc|const):<code>(~?)([^<]+)</code>")


def _role(m: re.Match[str]) -> str:
    target = m.group(2)
    return f"<code>{target.rsplit('.', 1)[-1] if m.group(1) else target}</code>"


def on_page_content(html_text: str, page: Any, config: Any, files: Files) -> str:
    return _ROLE.sub(_role, html_text)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    markdown = re.sub(r"<!-- perf:(\w+) -->", lambda m: _TABLES[m.group(1)](), markdown)
    return _formulas(markdown)
