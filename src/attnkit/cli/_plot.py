"""Pictures for the command line and the docs: attention-weight heatmaps and benchmark curves
(matplotlib, ``plot`` extra).

Heatmaps never hold a full ``(H, Lq, Lk)`` weight tensor for long inputs when they can avoid it.
:func:`pooled_weights` walks the weights tile by tile and max-pools each tile into a grid of at most
``size x size`` cells per head before anything is drawn, so the memory is O(H * L * block) plus the grid:

* mechanisms whose weights do not depend on query positions (flash without rotary embeddings,
  multi-head and cross attention, the head-less and neighbour mechanisms) are asked for the weights of
  one block of queries at a time, ``mech.attention_weights(q[r0:r1], k[:r1 + Lk - Lq])`` (with the
  bottom-right causal alignment, those keys keep each row's own mask);
* sequence mechanisms that need the whole sequence (local-global, which requires ``Lq == Lk``) and
  those without attention weights whose output is a weighted average of the values (linear attention)
  are probed with one-hot values: ``forward(q, k, V)`` with ``V[j, h, :] = e_j`` for the keys ``j`` of
  one block returns exactly those columns of the weights (for linear attention the implicit weights
  ``phi(q_i) . phi(k_j) / sum_j' phi(q_i) . phi(k_j')``); every row must sum to 1, which is checked;
* ``SelfAttention`` (one sequence, model width) is the exception: its weights are computed whole.

The colour scale is logarithmic (weights that are exactly 0, masked keys, are drawn grey), so the
small weights of a band or a causal triangle stay visible next to the large ones.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .._array import to_numpy
from ._common import MissingExtra

#: most weights computed at once in one tile (all heads; 64 MB in float64)
_TILE_ELEMENTS = 1 << 23
#: a weights method returning all of ``(H, Lq, Lk)`` at once is used up to this many elements
_FULL_ELEMENTS = 1 << 20


def _pyplot(what: str) -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MissingExtra(what, "matplotlib", "plot") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def default_picture_dir() -> str:
    """Where pictures go when the user names no path: ``$TMPDIR/attnkit`` (never the working tree)."""
    path = os.path.join(tempfile.gettempdir(), "attnkit")
    os.makedirs(path, exist_ok=True)
    return path


# ------------------------------------------------------------------------------------------ pooling
def _edges(n: int, size: int) -> np.ndarray:
    """Start index of each of ``min(n, size)`` nearly equal bins over ``range(n)`` (and ``n`` last)."""
    bins = min(n, size)
    return np.linspace(0, n, bins + 1).round().astype(np.int64)


@dataclasses.dataclass
class PooledWeights:
    """Attention weights pooled to a grid: ``grid[h]`` is head ``h``, ``(rows, cols)`` cells, each the
    largest weight of the queries and keys it covers. ``lq``/``lk`` are the full lengths,
    ``heads`` the number of heads the mechanism has (``grid`` may hold fewer, see ``drawn``)."""

    grid: np.ndarray
    lq: int
    lk: int
    heads: int
    how: str = "max"

    @property
    def drawn(self) -> int:
        return int(self.grid.shape[0])


class _Pooler:
    """Accumulates tiles ``(H, rows r0:r1, cols c0:c1)`` of a ``(H, Lq, Lk)`` matrix into a max-pooled grid."""

    def __init__(self, heads: int, lq: int, lk: int, size: int) -> None:
        self.re, self.ce = _edges(lq, size), _edges(lk, size)
        self.grid = np.zeros((heads, len(self.re) - 1, len(self.ce) - 1))
        self.lq, self.lk = lq, lk

    @staticmethod
    def _span(edges: np.ndarray, a: int, b: int) -> tuple[np.ndarray, int]:
        """Offsets (within ``a:b``) where a bin starts, and the first bin's index."""
        first = int(np.searchsorted(edges, a, side="right") - 1)
        last = int(np.searchsorted(edges, b - 1, side="right") - 1)
        starts = np.maximum(edges[first : last + 1], a) - a
        return starts, first

    def add(self, tile: np.ndarray, r0: int, c0: int) -> None:
        h, nr, nc = tile.shape
        rs, rf = self._span(self.re, r0, r0 + nr)
        cs, cf = self._span(self.ce, c0, c0 + nc)
        t = np.maximum.reduceat(np.maximum.reduceat(tile, rs, axis=1), cs, axis=2)
        view = self.grid[:h, rf : rf + t.shape[1], cf : cf + t.shape[2]]
        np.maximum(view, t, out=view)


def _as_heads(w: Any) -> np.ndarray:
    """Weights as ``(H, Lq, Lk)`` float64: ``(Lk,)``, ``(Lq, Lk)``, ``(H, Lq, Lk)``, first batch item of more."""
    a = np.asarray(to_numpy(w), dtype=np.float64)
    if a.ndim == 0:
        raise ValueError("weights: expected an array of attention weights, got a scalar")
    if a.ndim == 1:
        a = a[None, :]
    while a.ndim > 3:
        a = a[0]
    return a if a.ndim == 3 else a[None]


def pool_array(w: Any, size: int = 256, max_heads: int = 16) -> PooledWeights:
    """Max-pool weights already in memory (any of the shapes :func:`_as_heads` takes) to ``size`` cells."""
    a = _as_heads(w)
    heads, lq, lk = a.shape
    p = _Pooler(min(heads, max_heads), lq, lk, size)
    step = max(1, _TILE_ELEMENTS // max(lk, 1))
    for r0 in range(0, lq, step):
        p.add(a[: p.grid.shape[0], r0 : r0 + step], r0, 0)
    return PooledWeights(p.grid, lq, lk, heads)


def _probe(mech: Any, q: Any, k: Any, mask: Any, extras: Mapping[str, Any], lq: int, lk: int, heads: int, size: int, max_heads: int) -> PooledWeights:
    """Pooled weights from one-hot values: ``forward(q, k, V)`` with ``V[j, (h,) c] = [j == c0 + c]`` for
    the keys of one block returns those columns of the weights, ``(Lq, H, B)`` (sequence) or ``(Lq, B)``
    (head-less). Checked: a weighted average of the values has rows summing to 1 (0 where all is masked)."""
    from ..errors import AttentionError, ConfigError

    name = getattr(mech, "name", type(mech).__name__)
    no_weights = f"heatmap: mechanism {name!r} has no attention weights, and its output is not a weighted average of its values"
    qa = np.asarray(to_numpy(q))
    ka = qa if k is None else np.asarray(to_numpy(k))
    dtype = np.float64 if qa.dtype == np.float64 else np.float32
    block = max(1, min(lk, _TILE_ELEMENTS // max(lq * heads, 1)))
    p = _Pooler(min(heads, max_heads), lq, lk, size)
    sums = np.zeros((heads, lq))
    for c0 in range(0, lk, block):
        b = min(block, lk - c0)
        rows, cols = np.arange(c0, c0 + b), np.arange(b)
        if qa.ndim == 3:
            v = np.zeros((lk, heads, b), dtype=dtype)
            v[rows, :, cols] = 1.0
        else:
            v = np.zeros((lk, b), dtype=dtype)
            v[rows, cols] = 1.0
        try:
            out = np.asarray(to_numpy(mech.forward(q, ka, v, mask=mask, **extras)), dtype=np.float64)
        except AttentionError:
            raise ConfigError(no_weights) from None
        tile = np.moveaxis(out, 1, 0) if qa.ndim == 3 else out[None]  # (H, Lq, B)
        if tile.shape != (heads, lq, b):
            raise ConfigError(no_weights)
        sums += tile.sum(axis=2)
        p.add(tile[: p.grid.shape[0]], 0, c0)
    if not np.all((np.abs(sums - 1) < 1e-3) | (np.abs(sums) < 1e-6)):
        raise ConfigError(no_weights)
    return PooledWeights(p.grid, lq, lk, heads)


def _row_tiles_exact(mech: Any) -> bool:
    """Whether a block of queries, with the keys a causal mask lets it see, gets the same weights as in
    the whole: not where ``Lq == Lk`` is required, nor where positions matter (rotary embeddings on
    sequences, a local window)."""
    if getattr(mech, "same_length", False):
        return False
    try:
        opts = mech.options()
    except Exception:  # noqa: BLE001 - no options: do not assume
        return False
    return not opts.get("rope") and "window" not in opts and "global_tokens" not in opts


def _row_tiles(mech: Any, q: Any, k: Any, extras: Mapping[str, Any], lq: int, lk: int, size: int, max_heads: int) -> PooledWeights:
    """Weights of one block of queries at a time from ``mech.attention_weights``. Causal masks are
    aligned bottom-right (query ``i`` sees keys ``j <= i + Lk - Lq``), so rows ``r0:r1`` with the keys
    ``:r1 + Lk - Lq`` keep exactly their own mask; the keys after those get weight 0 in the whole."""
    qa = np.asarray(to_numpy(q))
    ka = qa if k is None else np.asarray(to_numpy(k))
    causal = bool(getattr(mech, "causal", False))
    heads = qa.shape[-2] if qa.ndim == 3 else int(getattr(mech, "heads", 1) or 1)
    step = max(1, _TILE_ELEMENTS // max(lk * heads, 1))
    p: _Pooler | None = None
    total = heads
    for r0 in range(0, lq, step):
        r1 = min(lq, r0 + step)
        kk = ka[: max(0, r1 + lk - lq)] if causal else ka
        if kk.shape[0] == 0:
            continue  # rows that see no key: all weights 0
        w = _as_heads(mech.attention_weights(qa[r0:r1], kk, **extras))  # (H, r1 - r0, Lk')
        if p is None:
            total = w.shape[0]
            p = _Pooler(min(total, max_heads), lq, lk, size)
        p.add(w[: p.grid.shape[0]], r0, 0)
    if p is None:
        p = _Pooler(min(total, max_heads), lq, lk, size)
    return PooledWeights(p.grid, lq, lk, total)


def pooled_weights(
    mech: Any, q: Any, k: Any = None, mask: Any = None, *, extras: Mapping[str, Any] | None = None, size: int = 256, max_heads: int = 16
) -> PooledWeights:
    """The attention weights of ``mech`` for ``(q, k)``, max-pooled to at most ``size x size`` per head,
    computed tile by tile where that is exact (see the module docstring). ``extras`` are forward's
    keyword inputs (edge features). Heads beyond ``max_heads`` are computed but not kept.

    Raises :class:`attnkit.errors.ConfigError` for a mechanism that has no attention weights and whose
    output is not a weighted average of its values (mixtures)."""
    from ..errors import ConfigError
    from ._common import attention_weights, has_weights

    extras = dict(extras or {})
    name = getattr(mech, "name", type(mech).__name__)
    layout = getattr(mech, "input_layout", "sequence")
    qa = np.asarray(to_numpy(q))
    lq = 1 if qa.ndim == 1 else qa.shape[0]
    lk = lq if k is None else np.asarray(to_numpy(k)).shape[0]
    seq_heads = qa.shape[1] if layout == "sequence" and qa.ndim == 3 else 1
    if not has_weights(mech):
        if layout in ("sequence", "headless") and qa.ndim >= 2:
            return _probe(mech, q, k, mask, extras, lq, lk, seq_heads, size, max_heads)
        raise ConfigError(f"heatmap: mechanism {name!r} has no attention weights")
    heads = seq_heads if layout == "sequence" else int(getattr(mech, "heads", 1) or 1)
    small = heads * lq * lk <= _FULL_ELEMENTS
    if small or mask is not None or qa.ndim == 1:
        return pool_array(attention_weights(mech, q, k, mask, **extras), size, max_heads)
    if _row_tiles_exact(mech) and not extras:
        return _row_tiles(mech, q, k, extras, lq, lk, size, max_heads)
    if layout == "sequence":
        return _probe(mech, q, k, mask, extras, lq, lk, seq_heads, size, max_heads)
    return pool_array(attention_weights(mech, q, k, mask, **extras), size, max_heads)  # O(H Lq Lk): no exact tiling


# ------------------------------------------------------------------------------------- structured data
def motif_inputs(mech: Any, length: int, *, motif: int = 8, noise: float = 0.15, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Inputs of ``mech`` with structure to see: a motif of ``motif`` positions repeated along the
    sequence (position ``i`` carries ``(1 - noise) * x[i % motif] + noise * x[i]`` of the mechanism's own
    random sample ``x``), so that a query resembles the keys a multiple of ``motif`` away and the weights
    form diagonals that each mechanism's masks and kernels then shape. A convex mixture of samples stays
    valid where inputs are constrained (points inside the Poincare ball)."""
    drawn = mech.sample_inputs(length, np.random.default_rng(seed))
    out = []
    for x in drawn:
        if not (isinstance(x, np.ndarray) and x.dtype.kind == "f" and x.ndim >= 1 and x.shape[0] == length):
            out.append(x)
            continue
        idx = np.arange(length) % min(motif, length)
        out.append(((1 - noise) * x[idx] + noise * x).astype(x.dtype))
    return tuple(out)


# ------------------------------------------------------------------------------------------ drawing
def _norm(panels: Sequence[np.ndarray]) -> Any:
    from matplotlib.colors import LogNorm

    vmax = max((float(p.max()) for p in panels), default=1.0) or 1.0
    positive = [float(p[p > 0].min()) for p in panels if np.any(p > 0)]
    vmin = max(min(positive, default=vmax * 1e-4), vmax * 1e-4)
    return LogNorm(vmin=min(vmin, vmax * 0.99), vmax=vmax, clip=False)


def _cmap() -> Any:
    import matplotlib

    # grey: exactly 0 (a masked key, drawn as NaN) and anything below the scale
    return matplotlib.colormaps["magma"].with_extremes(under="#d9d9d9", bad="#d9d9d9")


def _draw_panel(
    ax: Any, grid: np.ndarray, pw: PooledWeights, norm: Any, cmap: Any, title: str, labels: tuple[str, str] = ("key position", "query position")
) -> Any:
    img = np.where(grid > 0, grid, np.nan)
    im = ax.imshow(img, aspect="auto", cmap=cmap, norm=norm, interpolation="nearest", extent=(0, pw.lk, pw.lq, 0))
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(labels[0], fontsize=8)
    ax.set_ylabel(labels[1], fontsize=8)
    ax.tick_params(labelsize=7)
    return im


def _pooling_note(pw: PooledWeights) -> str:
    rows, cols = pw.grid.shape[1:]
    if (rows, cols) == (pw.lq, pw.lk):
        return ""
    return f"each cell: largest weight of {pw.lq / rows:.3g} x {pw.lk / cols:.3g} query x key positions"


def _save(fig: Any, plt: Any, path: str | os.PathLike[str]) -> str:
    from ..io import FileFormatError

    try:
        fig.savefig(os.fspath(path), dpi=110)
    except (OSError, ValueError) as exc:
        raise FileFormatError(f"heatmap: cannot write {os.fspath(path)!r}: {exc}") from None
    finally:
        plt.close(fig)
    return os.fspath(path)


def _wrap(text: str, width_in: float, fontsize: float = 10) -> str:
    """``text`` wrapped to lines that fit a figure ``width_in`` inches wide."""
    import textwrap

    chars = max(20, int(width_in * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.fill(line, chars) for line in text.split("\n"))


def heatmap(
    weights: Any,
    path: str | os.PathLike[str],
    title: str = "attention weights",
    *,
    size: int = 256,
    max_heads: int = 16,
    labels: tuple[str, str] = ("key position", "query position"),
) -> str:
    """Draw attention weights, one panel per head (at most ``max_heads``; the title says which are drawn),
    to the PNG/SVG/PDF ``path``; returns the path. ``weights`` is a :class:`PooledWeights` or an array
    ``(Lk,)``, ``(Lq, Lk)`` or ``(..., H, Lq, Lk)`` (pooled here to ``size`` cells a side). ``labels``
    names the x (key) and y (query) axes."""
    plt = _pyplot("--heatmap")
    pw = weights if isinstance(weights, PooledWeights) else pool_array(weights, size, max_heads)
    n = pw.drawn
    cols = min(4, math.ceil(math.sqrt(n)))  # 4 heads: 2 x 2; 16: 4 x 4
    rows = math.ceil(n / cols)
    width = 3.0 * cols + 1.4
    fig, axes = plt.subplots(rows, cols, figsize=(width, 2.9 * rows + 1.0), squeeze=False, layout="constrained")
    norm, cmap = _norm(list(pw.grid)), _cmap()
    im = None
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        im = _draw_panel(ax, pw.grid[i], pw, norm, cmap, f"head {i}" if pw.heads > 1 else "", labels)
    heads = f"all {pw.heads} heads" if n == pw.heads else f"heads 0-{n - 1} of {pw.heads}"
    if pw.heads == 1:
        heads = "one head"
    note = _pooling_note(pw)
    fig.suptitle(_wrap(title, width) + f"\n({heads}; Lq={pw.lq}, Lk={pw.lk})" + (f"\n{note}" if note else ""), fontsize=10)
    if im is not None:
        cb = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.9, label="attention weight (log scale; grey = 0)")
        cb.ax.tick_params(which="both", labelsize=8)
    return _save(fig, plt, path)


def heatmap_grid(items: Sequence[tuple[str, Any]], path: str | os.PathLike[str], title: str = "attnkit demo", *, size: int = 256) -> str:
    """One panel per ``(label, weights)`` item, head 0 of each (the label says so when there are more),
    each with its own logarithmic colour scale and bar; for ``attnkit demo``."""
    plt = _pyplot("the demo heatmap")
    pooled = [(label, w if isinstance(w, PooledWeights) else pool_array(w, size, 1)) for label, w in items]
    n = len(pooled)
    cols = min(max(n, 1), 4)
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.1 * rows + 0.6), squeeze=False, layout="constrained")
    cmap = _cmap()
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        label, pw = pooled[i]
        head = f" (head 0 of {pw.heads})" if pw.heads > 1 else ""
        im = _draw_panel(ax, pw.grid[0], pw, _norm([pw.grid[0]]), cmap, _wrap(label + head, 3.0, 9))
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(which="both", labelsize=7)
    fig.suptitle(title + "\ncolour: attention weight, log scale, one scale per panel; grey = exactly 0 (masked)", fontsize=10)
    return _save(fig, plt, path)


#: the pictures of ``attnkit demo`` and of the docs: label, mechanism, options chosen to show its pattern
PICTURES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("flash", "flash", {"heads": 4, "dim": 32}),
    ("flash, causal", "flash", {"heads": 4, "dim": 32, "causal": True}),
    ("local_global: window 16, 4 global", "local_global", {"heads": 4, "dim": 32, "window": 16, "global_tokens": 4}),
    ("linear (elu feature map)", "linear", {"heads": 4, "dim": 32}),
    ("linear, causal", "linear", {"heads": 4, "dim": 32, "causal": True}),
    ("hyperbolic", "hyperbolic", {"dim": 16}),
    ("scaled_dot_product", "scaled_dot_product", {"dim": 32}),
    ("mixed_curvature", "mixed_curvature", {"dim": 32}),
    ("graph_rope (query at position 0, keys at ranks 0..L-1)", "graph_rope", {"dim": 32}),
    ("multi_head", "multi_head", {"model_dim": 32, "heads": 4, "seed": 0}),
    ("self", "self", {"model_dim": 32, "heads": 4, "seed": 0}),
    ("cross", "cross", {"query_dim": 32, "key_dim": 32, "heads": 4, "seed": 0}),
)


def picture_weights(name: str, options: dict[str, Any], length: int, seed: int = 0, size: int = 256) -> PooledWeights:
    """Pooled self-attention weights of mechanism ``name`` built with ``options``, on the query of
    :func:`motif_inputs` of ``length`` (keys = values = query)."""
    from ..mechanisms import registry

    mech = registry.create(name, **options)
    inputs = motif_inputs(mech, length, seed=seed)
    query = inputs[0]  # self-attention: the motif meets itself (keys given where forward wants them)
    return pooled_weights(mech, query, query if len(inputs) > 1 else None, size=size)


def pictures(length: int, seed: int = 0, names: Sequence[str] | None = None) -> Iterator[tuple[str, str, Callable[[], PooledWeights]]]:
    """``(label, mechanism, compute)`` for each entry of :data:`PICTURES` (restricted to ``names``)."""
    for label, name, options in PICTURES:
        if names is None or name in names:
            yield label, name, (lambda n=name, o=options: picture_weights(n, dict(o), length, seed))


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
                [r["length"] for r in rs],
                [r.get("torch_median_ms") for r in rs],
                marker="x",
                linestyle="--",
                color=line.get_color(),
                label=f"{label} (torch)",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("length (sequence length / neighbours)")
    ax.set_ylabel("median latency (ms)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, plt, path)
