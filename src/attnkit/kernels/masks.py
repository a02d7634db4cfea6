"""Attention masks: construction, validation and per-tile application.

Conventions (DESIGN.md): a boolean mask is True where a query may attend (PyTorch's convention); a
float mask is added to the scores (``-inf`` forbids). Masks broadcast to ``(..., H, Lq, Lk)``.
Causal masking with ``Lq != Lk`` is aligned bottom-right: query ``i`` sees key ``j`` iff
``j <= i + (Lk - Lq)``, which is what decoding with a key/value cache needs and what torch's
``causal_lower_right`` bias does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import array_api_compat
import numpy as np

from .._array import Array, Namespace, is_traced, shape_str
from .._array import broadcast_shapes as _bshapes
from .._array import length as _dim
from ..errors import ConfigError, DTypeError, NonFiniteError, ShapeError

__all__ = [
    "window_skips",
    "create_mask",
    "prepare_mask",
    "unflatten_mask",
    "causal_allowed",
    "index_grid",
    "window_allowed",
    "alibi_bias",
    "alibi_slopes",
    "mask_tile",
    "apply_mask",
    "apply_mask_tile",
    "key_padding_mask",
    "combine_masks",
    "append_key_columns",
    "causal_like",
]


def create_mask(kind: str, seq_len: int, positions: Sequence[int] | None = None) -> np.ndarray:
    """Build a boolean ``(seq_len, seq_len)`` mask, True = may attend.

    * ``"causal"``: lower triangle (query i sees keys 0..i).
    * ``"padding"``: keys at ``positions`` are padding and nobody attends to them.
    * ``"block"``: block-diagonal; ``positions`` are the start indices of the blocks (0 is implied),
      so tokens attend only within their block. Without positions the whole sequence is one block.
    """
    from .._array import check_allocation, one_of, positive_int

    kind = one_of(kind, "kind", ("causal", "padding", "block"))
    n = positive_int(seq_len, "seq_len")
    check_allocation(float(n) * n, "seq_len", f"a ({n}, {n}) bool mask")
    pos = _positions(positions, n)
    if kind == "causal":
        if pos:
            raise ConfigError("positions: not used by a causal mask; pass None")
        return np.tril(np.ones((n, n), dtype=bool))
    if kind == "padding":
        keep = np.ones(n, dtype=bool)
        keep[list(pos)] = False
        return np.broadcast_to(keep, (n, n)).copy()
    starts = sorted({0, *pos})
    block_id = np.zeros(n, dtype=np.int64)
    for b, s in enumerate(starts):
        block_id[s:] = b
    return block_id[:, None] == block_id[None, :]


def _positions(positions: Sequence[int] | None, n: int) -> list[int]:
    if positions is None:
        return []
    if isinstance(positions, (str, bytes)) or not hasattr(positions, "__iter__"):
        raise ConfigError(f"positions: expected a list of integer indices in [0, {n}), got {type(positions).__name__} {positions!r}")
    out: list[int] = []
    for p in positions:
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)):
            raise ConfigError(f"positions: expected integers, got {p!r}")
        if not 0 <= int(p) < n:
            raise ConfigError(f"positions: expected indices in [0, {n}), got {int(p)}")
        out.append(int(p))
    return out


def prepare_mask(
    mask: Any,
    xp: Namespace,
    target: tuple[int, ...],
    dtype: Any,
    device: Any = None,
    name: str = "mask",
    layout: str = "(..., H, Lq, Lk)",
) -> Array | None:
    """Validate ``mask`` against the score shape ``target = (..., H, Lq, Lk)``.

    Returns a bool array (True = attend) or a float array of ``dtype`` to add, in ``xp``.
    """
    if mask is None:
        return None
    if not array_api_compat.is_array_api_obj(mask):
        try:
            mask = np.asarray(mask)
        except (ValueError, TypeError) as exc:
            raise ShapeError(f"{name}: expected a rectangular array ({exc})") from exc
        if mask.dtype.kind in "iuf":
            mask = mask.astype(dtype if mask.dtype.kind == "f" else np.float32)
    mxp = array_api_compat.array_namespace(mask)
    if array_api_compat.is_numpy_namespace(mxp) and not array_api_compat.is_numpy_namespace(xp):
        mask = xp.asarray(mask, device=device)
        mxp = xp
    elif _library(mxp) != _library(xp):
        raise DTypeError(f"{name}: expected an array of the same library as the inputs, got {type(mask).__name__}")
    if mxp.isdtype(mask.dtype, "bool"):
        kind = "bool"
    elif mxp.isdtype(mask.dtype, "real floating"):
        kind = "float"
    else:
        raise DTypeError(f"{name}: expected a bool mask (True = attend) or a float mask (added to scores), got {mask.dtype}")
    if mask.ndim < 1 or mask.ndim > len(target):
        raise ShapeError(f"{name}: expected a shape that broadcasts to {shape_str(target)}, got {shape_str(mask.shape)}")
    try:
        _bshapes(tuple(mask.shape), tuple(target))
    except ValueError:
        raise ShapeError(f"{name}: expected a shape that broadcasts to {shape_str(target)} {layout}, got {shape_str(mask.shape)}") from None
    full = _bshapes(tuple(mask.shape), tuple(target))
    if tuple(full) != tuple(target):
        raise ShapeError(f"{name}: shape {shape_str(mask.shape)} would enlarge the scores {shape_str(target)}")
    if kind == "float":
        bad = mxp.any(xp.isnan(mask)) | mxp.any(mask == mxp.inf)
        if not is_traced(bad) and bool(bad):
            raise NonFiniteError(f"{name}: a float mask may hold -inf but not NaN or +inf")
        mask = xp.astype(mask, dtype) if mask.dtype != dtype else mask
    return mask


def _library(ns: Namespace) -> str:
    """The array library behind a namespace: ``numpy`` for both ``numpy`` and ``array_api_compat.numpy``."""
    name = str(getattr(ns, "__name__", type(ns).__name__))
    return name.removeprefix("array_api_compat.").split(".")[0]


def unflatten_mask(mask: Any, lq: int, lk: int, name: str = "mask") -> Any:
    """Read the spec's flat mask (length ``Lq*Lk``) as ``(Lq, Lk)``; other masks pass through."""
    if mask is None or np.ndim(mask) != 1:
        return mask
    if not array_api_compat.is_array_api_obj(mask):
        mask = np.asarray(mask)
    if _dim(mask.shape[0]) != lq * lk:
        raise ShapeError(f"{name}: a flat mask needs length Lq*Lk = {lq * lk}, got {_dim(mask.shape[0])}")
    return array_api_compat.array_namespace(mask).reshape(mask, (lq, lk))


def causal_allowed(xp: Namespace, q0: int, q1: int, k0: int, k1: int, offset: int, device: Any) -> Array:
    """Bool ``(q1-q0, k1-k0)`` tile: key j visible to query i iff ``j <= i + offset`` (offset = Lk - Lq)."""
    rows = xp.arange(q0, q1, device=device)
    cols = xp.arange(k0, k1, device=device)
    return cols[None, :] <= rows[:, None] + offset


def index_grid(s: Array, xp: Namespace) -> tuple[Array, Array]:
    """Query and key indices ``(i, j)`` (as ``s``'s float dtype, each ``(Lq, Lk)``) for scores ``s (..., Lq, Lk)``.

    Counted from ``s`` itself (cumulative sums of ones) instead of from Python lengths, so they hold when
    the lengths are symbolic (a graph being exported).
    """
    ones = xp.ones_like(s[(0,) * (s.ndim - 2) + (...,)])
    return xp.cumulative_sum(ones, axis=0) - 1.0, xp.cumulative_sum(ones, axis=1) - 1.0


def window_allowed(xp: Namespace, q0: int, q1: int, k0: int, k1: int, offset: int, window: tuple[int, int], device: Any) -> Array | None:
    """Bool ``(q1-q0, k1-k0)`` tile of a sliding window ``(left, right)`` (FlashAttention-2's ``window_size``).

    Query ``i`` sees key ``j`` iff ``i + offset - left <= j <= i + offset + right`` (offset = Lk - Lq:
    bottom-right aligned, as the causal mask); a negative ``left``/``right`` leaves that side
    unbounded. ``None`` when neither side is bounded.
    """
    left, right = int(window[0]), int(window[1])
    if left < 0 and right < 0:
        return None
    rel = xp.arange(k0, k1, device=device)[None, :] - (xp.arange(q0, q1, device=device)[:, None] + offset)  # j - i - offset
    if left < 0:
        return rel <= right
    if right < 0:
        return rel >= -left
    return xp.logical_and(rel >= -left, rel <= right)


def window_skips(q0: int, q1: int, k0: int, k1: int, offset: int, window: tuple[int, int]) -> bool:
    """True when no query of ``q0..q1-1`` sees any key of ``k0..k1-1`` under :func:`window_allowed`."""
    left, right = int(window[0]), int(window[1])
    if right >= 0 and k0 > q1 - 1 + offset + right:
        return True
    return left >= 0 and k1 - 1 < q0 + offset - left


def alibi_bias(xp: Namespace, slopes: Array, q0: int, q1: int, k0: int, k1: int, offset: int) -> Array:
    """ALiBi tile ``-slope * |i + offset - j|`` (Press et al. 2022, "Train Short, Test Long"), bottom-right aligned.

    ``slopes`` is ``(..., H, 1, 1)`` in the score dtype; the result is ``(..., H, q1-q0, k1-k0)``.
    """
    dev = array_api_compat.device(slopes)
    # distances in integers, then cast: positions past 256 (bfloat16) or 2048 (float16) are not
    # exact in a half type, their small differences near the diagonal are
    rows = xp.arange(q0 + offset, q1 + offset, device=dev)
    cols = xp.arange(k0, k1, device=dev)
    return -slopes * xp.astype(xp.abs(rows[:, None] - cols[None, :]), slopes.dtype)


def alibi_slopes(heads: int) -> np.ndarray:
    """The ALiBi slopes of Press et al. 2022 for ``heads`` heads (float64, ``(heads,)``).

    For ``n`` a power of two, ``2^(-8 i / n)``, ``i = 1..n``; otherwise the slopes of the closest
    smaller power of two ``m``, followed by every other slope of ``2m`` (the paper's reference code,
    as BLOOM's ``build_alibi_tensor``).
    """
    n = int(heads)
    m = 2 ** int(np.floor(np.log2(n)))
    base = 2.0 ** (-8.0 / m)
    out = base ** np.arange(1, m + 1, dtype=np.float64)
    if m < n:
        extra = (2.0 ** (-4.0 / m)) ** np.arange(1, 2 * (n - m), 2, dtype=np.float64)
        out = np.concatenate([out, extra])
    return out


def mask_tile(mask: Array, q0: int, q1: int | None, k0: int, k1: int | None) -> Array:
    """Slice the (broadcastable) mask to a query/key tile, leaving size-1 axes alone."""
    if mask.shape[-1] is None or (mask.ndim > 1 and mask.shape[-2] is None):
        return mask  # symbolic lengths (a graph being exported): the whole-sequence form, one tile
    ks = slice(None) if mask.shape[-1] == 1 else slice(k0, k1)
    if mask.ndim == 1:  # a key mask (Lk,): no query axis to slice
        return mask[ks]
    qs = slice(None) if mask.shape[-2] == 1 else slice(q0, q1)
    return mask[..., qs, ks]


def apply_mask(s: Array, mask: Array | None, xp: Namespace) -> Array:
    """Apply a prepared mask to scores ``s``: a bool mask sets the scores it hides (False) to ``-inf``,
    a float mask is added."""
    if mask is None:
        return s
    if xp.isdtype(mask.dtype, "bool"):
        return xp.where(mask, s, xp.asarray(-xp.inf, dtype=s.dtype, device=array_api_compat.device(s)))
    return s + mask


def apply_mask_tile(s: Array, mask: Array | None, xp: Namespace, q0: int, q1: int | None, k0: int, k1: int | None) -> Array:
    """Apply a prepared mask to a score tile ``s`` of shape ``(..., q1-q0, k1-k0)``."""
    if mask is None:
        return s
    return apply_mask(s, mask_tile(mask, q0, q1, k0, k1), xp)


# ------------------------------------------------------------------ torch MultiheadAttention's key masks
def key_padding_mask(
    kpm: Any, xp: Namespace, target: tuple[int, ...], dtype: Any, device: Any = None, name: str = "key_padding_mask"
) -> Array | None:
    """A ``key_padding_mask`` of shape ``(..., Lk)`` as torch's ``MultiheadAttention`` takes it -> an attnkit mask.

    torch's convention is the opposite of attnkit's: a bool ``True`` marks a key to **ignore** (padding);
    a float mask is added to the scores, as attnkit's float masks are. The result broadcasts to
    ``target = (..., H, Lq, Lk)``: shape ``(..., 1, 1, Lk)``, bool True = may attend, or float.
    """
    if kpm is None:
        return None
    if not array_api_compat.is_array_api_obj(kpm):
        try:
            kpm = np.asarray(kpm)
        except (ValueError, TypeError) as exc:
            raise ShapeError(f"{name}: expected a rectangular (..., Lk) array ({exc})") from exc
    lk = _dim(target[-1])
    batch = tuple(target[:-3])
    if kpm.ndim < 1 or kpm.ndim > len(batch) + 1 or _dim(kpm.shape[-1]) != lk:
        raise ShapeError(
            f"{name}: expected shape (..., Lk) with Lk = {lk} and batch dimensions that broadcast to {shape_str(batch)}, got {shape_str(kpm.shape)}"
        )
    mxp = array_api_compat.array_namespace(kpm)
    if mxp.isdtype(kpm.dtype, "bool"):
        kpm = mxp.logical_not(kpm)  # torch: True = padding; attnkit: True = attend
    kpm = mxp.reshape(kpm, (*tuple(kpm.shape[:-1]), 1, 1, lk))
    return prepare_mask(kpm, xp, target, dtype, device=device, name=name, layout="(..., Lk)")


def combine_masks(a: Array | None, b: Array | None, xp: Namespace, dtype: Any) -> Array | None:
    """Both masks at once: ``a & b`` for two bool masks; otherwise the sum of their additive forms
    (a bool mask becomes ``0`` where True and ``-inf`` where False)."""
    if a is None or b is None:
        return b if a is None else a
    if xp.isdtype(a.dtype, "bool") and xp.isdtype(b.dtype, "bool"):
        return xp.logical_and(a, b)
    return _additive(a, xp, dtype) + _additive(b, xp, dtype)


def _additive(m: Array, xp: Namespace, dtype: Any) -> Array:
    if not xp.isdtype(m.dtype, "bool"):
        return m
    zero = xp.zeros((), dtype=dtype, device=array_api_compat.device(m))
    return xp.where(m, zero, zero - xp.inf)


def causal_like(s: Array, xp: Namespace) -> Array:
    """Bool ``(Lq, Lk)`` bottom-right causal mask (``j <= i + Lk - Lq``) for scores shaped like ``s (..., Lq, Lk)``,
    counted from ``s`` itself (:func:`index_grid`), so it holds when the lengths are symbolic (a graph being exported)."""
    i, j = index_grid(s, xp)
    offset = (xp.max(j[:1, :]) + 1.0) - (xp.max(i[:, :1]) + 1.0)
    return j <= i + offset


def append_key_columns(mask: Array | None, xp: Namespace, lk: int, extra: int) -> Array | None:
    """``mask (..., Lq, Lk or 1)`` widened to ``Lk + extra`` keys, the ``extra`` appended keys visible to every
    query (True, or ``0`` added), as torch's ``MultiheadAttention`` pads its masks for ``add_bias_kv`` and
    ``add_zero_attn``."""
    if mask is None or extra == 0:
        return mask
    is_bool = xp.isdtype(mask.dtype, "bool")
    if _dim(mask.shape[-1]) != lk:  # a mask broadcast over the keys: give it its Lk columns first
        cols = xp.ones((lk,), dtype=xp.bool, device=array_api_compat.device(mask))
        mask = xp.logical_and(mask, cols) if is_bool else mask + xp.zeros((lk,), dtype=mask.dtype, device=array_api_compat.device(mask))
    fill = xp.ones_like(mask[..., :1]) if is_bool else xp.zeros_like(mask[..., :1])
    return xp.concat([mask, *([fill] * extra)], axis=-1)
