"""Pictures for the command line: attention-weight heatmaps and benchmark curves (matplotlib, ``plot`` extra)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._array import to_numpy
from ._common import MissingExtra


def _pyplot(what: str) -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MissingExtra(what, "matplotlib", "plot") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def weights_panels(w: Any, max_heads: int = 8) -> list[np.ndarray]:
    """Attention weights as 2-D ``(Lq, Lk)`` panels: one per head of the first batch item.

    Accepts ``(Lk,)`` (one query), ``(Lq, Lk)``, ``(H, Lq, Lk)`` and leading batch dimensions.
    """
    a = np.asarray(to_numpy(w), dtype=np.float64)
    if a.ndim == 0:
        raise ValueError("weights: expected an array of attention weights, got a scalar")
    if a.ndim == 1:
        return [a[None, :]]
    if a.ndim == 2:
        return [a]
    while a.ndim > 3:
        a = a[0]
    return [a[h] for h in range(min(a.shape[0], max_heads))]


def _save(fig: Any, plt: Any, path: str | os.PathLike[str]) -> None:
    from ..io import FileFormatError

    try:
        fig.savefig(os.fspath(path), dpi=110)
    except (OSError, ValueError) as exc:
        raise FileFormatError(f"heatmap: cannot write {os.fspath(path)!r}: {exc}") from None
    finally:
        plt.close(fig)


def heatmap(weights: Any, path: str | os.PathLike[str], title: str = "attention weights") -> str:
    """Draw ``weights`` (one panel per head) to the PNG/SVG/PDF ``path``; returns the path."""
    plt = _pyplot("--heatmap")
    panels = weights_panels(weights)
    n = len(panels)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        im = ax.imshow(panels[i], aspect="auto", cmap="viridis", vmin=0.0, interpolation="nearest")
        ax.set_title(f"head {i}" if n > 1 else title, fontsize=9)
        ax.set_xlabel("key", fontsize=8)
        ax.set_ylabel("query", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if n > 1:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, plt, path)
    return os.fspath(path)


def heatmap_grid(items: Sequence[tuple[str, Any]], path: str | os.PathLike[str], title: str = "attnkit demo") -> str:
    """One panel per ``(label, weights)`` item (the first head of each), for ``attnkit demo``."""
    plt = _pyplot("the demo heatmap")
    n = len(items)
    cols = min(max(n, 1), 4)
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.0 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        label, w = items[i]
        panel = weights_panels(w, max_heads=1)[0]
        im = ax.imshow(panel, aspect="auto", cmap="viridis", vmin=0.0, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("key", fontsize=8)
        ax.set_ylabel("query", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, plt, path)
    return os.fspath(path)


def benchmark_plot(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> str:
    """Median latency against length, one line per (type, dim); torch lines dashed when present."""
    plt = _pyplot("--plot")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["type"], r.get("dim")), []).append(r)
    for (name, dim), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["length"])
        label = f"{name} dim={dim}" if dim is not None else name
        (line,) = ax.plot([r["length"] for r in rs], [r["median_ms"] for r in rs], marker="o", label=label)
        if any(r.get("torch_median_ms") is not None for r in rs):
            ax.plot(
                [r["length"] for r in rs], [r.get("torch_median_ms") for r in rs],
                marker="x", linestyle="--", color=line.get_color(), label=f"{label} (torch)",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("length (sequence length / neighbours)")
    ax.set_ylabel("median latency (ms)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, plt, path)
    return os.fspath(path)
