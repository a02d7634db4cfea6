"""Rotary position embedding (RoPE; Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary
Position Embedding", arXiv:2104.09864).

Feature pairs ``(x_a, x_b)`` of a query or key at position ``m`` are rotated by the angle
``m' * theta_i`` with ``theta_i = base^(-2i/dim)``, ``i = 0 .. dim/2 - 1`` and ``m' = m / scaling``:

    x_a' = x_a cos(m' theta_i) - x_b sin(m' theta_i)
    x_b' = x_a sin(m' theta_i) + x_b cos(m' theta_i)

so that ``<R_m q, R_n k>`` depends on ``q``, ``k`` and ``m - n`` only (the relative-position property).
``scaling > 1`` is linear position interpolation (Chen et al. 2023, "Extending Context Window of Large
Language Models via Positional Interpolation"): positions are divided by ``scaling``.

Two pairings are in use and both are offered:

* ``layout="half"`` (GPT-NeoX, Hugging Face LLaMA ``rotate_half``): pair ``i`` is ``(x_i, x_{i + dim/2})``;
* ``layout="interleaved"`` (RoFormer, GPT-J, Meta's LLaMA reference): pair ``i`` is ``(x_{2i}, x_{2i+1})``.

Only the first ``dim`` features of the last axis are rotated; any further features pass through
unchanged ("partial rotary", as in GPT-NeoX's ``rotary_pct``). The angles are computed in float64 on the
host and cast to the input's dtype, so large positions keep their precision. The rotation itself is
array-API generic: torch tensors stay torch (on their device, with autograd through ``x``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import array_api_compat
import numpy as np

from .._array import (
    Array,
    as_float_array,
    check_allocation,
    finite_float,
    is_graph,
    namespace,
    one_of,
    positive_float,
    positive_int,
    reshape_lead,
    shape_str,
    to_numpy,
)
from .._array import broadcast_shapes as _bshapes
from .._array import length as _dim
from ..errors import ConfigError, DTypeError, ShapeError

__all__ = ["RotaryEmbedding", "rope_angles"]


def rope_angles(positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """Angles ``positions[..., None] * inv_freq`` in float64, shape ``(*positions.shape, dim/2)``."""
    return np.asarray(positions, dtype=np.float64)[..., None] * inv_freq


class RotaryEmbedding:
    """Rotary position embedding with ``apply(x, positions)``.

    ``dim``: how many leading features of the last axis are rotated (even; usually the head width);
    ``base``: the wavelength base (10000 in the paper); ``scaling``: linear position interpolation factor
    (positions are divided by it; 1.0 = none); ``layout``: ``"half"`` or ``"interleaved"`` pairing (see
    the module docstring). The object is a small stateful helper: it caches the cos/sin table of the
    last ``arange`` positions it was asked for.
    """

    def __init__(self, dim: int, base: float = 10000.0, scaling: float = 1.0, layout: str = "half") -> None:
        self.dim = positive_int(dim, "dim")
        if self.dim % 2:
            raise ConfigError(f"dim: expected an even number of rotated features, got {dim!r}")
        self.base = positive_float(base, "base")
        if self.base == 1.0:
            raise ConfigError("base: expected a number > 0 other than 1 (base 1 makes every frequency equal), got 1.0")
        self.scaling = positive_float(scaling, "scaling")
        self.layout = one_of(layout, "layout", ("half", "interleaved"))
        half = self.dim // 2
        # the frequencies, and the angle, cosine and sine tables of at least one position (float64 each)
        check_allocation(32.0 * half, "dim", "rotary frequency and cos/sin tables")
        #: theta_i = base^(-2i/dim), float64
        self.inv_freq = self.base ** (-np.arange(half, dtype=np.float64) * 2.0 / self.dim)
        self._table: tuple[int, np.ndarray, np.ndarray] | None = None

    def __repr__(self) -> str:
        return f"RotaryEmbedding(dim={self.dim}, base={self.base!r}, scaling={self.scaling!r}, layout={self.layout!r})"

    def options(self) -> dict[str, Any]:
        return {"dim": self.dim, "base": self.base, "scaling": self.scaling, "layout": self.layout}

    # ------------------------------------------------------------------ tables
    def _cos_sin(self, positions: np.ndarray | None, length: int) -> tuple[np.ndarray, np.ndarray]:
        """float64 cos/sin of shape ``(*positions.shape, dim/2)`` (``positions=None``: ``arange(length)``)."""
        count = length if positions is None else int(positions.size)
        check_allocation(24.0 * count * len(self.inv_freq), "dim, positions", "rotary angle, cosine and sine tables")
        if positions is None:
            if self._table is not None and self._table[0] >= length:
                return self._table[1][:length], self._table[2][:length]
            ang = rope_angles(np.arange(length, dtype=np.float64) / self.scaling, self.inv_freq)
            cos, sin = np.cos(ang), np.sin(ang)
            self._table = (length, cos, sin)
            return cos, sin
        ang = rope_angles(positions / self.scaling, self.inv_freq)
        return np.cos(ang), np.sin(ang)

    def _positions(self, positions: Any, length: int, seq_axis: int, ndim: int) -> np.ndarray | None:
        if positions is None:
            return None
        if isinstance(positions, (int, float, np.integer, np.floating)) and not isinstance(positions, bool):
            finite_float(positions, "positions")
            return np.full((length,), float(positions)) if ndim else np.asarray(float(positions))
        try:
            p = to_numpy(positions) if array_api_compat.is_array_api_obj(positions) else np.asarray(positions)
        except (TypeError, ValueError) as exc:
            raise ShapeError(f"positions: expected an array of numbers ({exc})") from exc
        if p.dtype.kind not in "iuf":
            raise DTypeError(f"positions: expected integer or float positions, got dtype {p.dtype}")
        p = p.astype(np.float64)
        if p.size and not np.isfinite(p).all():
            raise ConfigError("positions: expected finite positions, found NaN or infinity")
        return p

    # ------------------------------------------------------------------ apply
    def apply(self, x: Any, positions: Any = None, seq_axis: int = -2) -> Array:
        """Rotate the first ``dim`` features of ``x`` by the angles of ``positions``.

        ``x``: ``(..., L, D)`` with ``D >= dim`` (any axis can hold the sequence: ``seq_axis``, default
        ``-2``; use ``-3`` for the ``(..., L, H, D)`` layout). ``positions``:

        * ``None``: ``0 .. L-1`` along ``seq_axis``;
        * a 1-D array of length ``L``: positions along ``seq_axis`` (int or float, may be negative);
        * an array of more dimensions: broadcast against ``x.shape[:-1]`` directly (per-batch or
          per-node positions);
        * a scalar: every row at that position.

        Returns an array of ``x``'s library, device, dtype and shape.
        """
        xp = namespace(x)
        x = as_float_array(x, "x", xp)
        if x.ndim < 1:
            raise ShapeError(f"x: expected shape (..., L, D) with D >= dim = {self.dim}, got a scalar")
        if x.shape[-1] is not None and x.shape[-1] < self.dim:
            raise ShapeError(f"x: expected at least dim = {self.dim} features along the last axis, got {x.shape[-1]} (shape {shape_str(x.shape)})")
        lead = x.ndim - 1
        if isinstance(seq_axis, bool) or not isinstance(seq_axis, (int, np.integer)):
            raise ConfigError(f"seq_axis: expected an integer axis, got {seq_axis!r}")
        ax = int(seq_axis)
        if lead == 0:
            length = 1
        else:
            if not -x.ndim <= ax < x.ndim or (ax % x.ndim) == x.ndim - 1:
                raise ConfigError(f"seq_axis: expected an axis of x other than the feature axis, in [{-x.ndim}, {x.ndim - 2}], got {seq_axis}")
            ax = ax % x.ndim
            length = _dim(x.shape[ax])
        if is_graph(xp):  # a graph being exported: the angles are computed in the graph (any length)
            return self._apply_graph(x, positions, ax, lead, xp)
        p = self._positions(positions, length, ax, lead)
        if p is None or p.ndim == 1 and lead > 0:
            if p is not None and p.shape[0] != length:
                raise ShapeError(f"positions: expected {length} positions (the length of x along axis {seq_axis}), got {p.shape[0]}")
            cos, sin = self._cos_sin(p, length)  # (L, dim/2)
            # put L on axis `ax` of x.shape[:-1]
            shape = [1] * lead
            if lead:
                shape[ax] = length
            cos = cos.reshape((*shape, cos.shape[-1]))
            sin = sin.reshape((*shape, sin.shape[-1]))
        else:
            try:
                _bshapes(p.shape, tuple(x.shape[:-1]))
            except ValueError:
                raise ShapeError(
                    f"positions: expected a 1-D array of {length} positions or a shape that broadcasts to "
                    f"{shape_str(x.shape[:-1])}, got {shape_str(p.shape)}"
                ) from None
            if p.ndim > lead:
                raise ShapeError(f"positions: shape {shape_str(p.shape)} has more dimensions than x.shape[:-1] = {shape_str(x.shape[:-1])}")
            cos, sin = self._cos_sin(p, length)
        dev = array_api_compat.device(x)
        cdt = np.float32 if (isinstance(x, np.ndarray) and x.dtype == np.float16) else x.dtype
        if isinstance(x, np.ndarray):
            c, s = cos.astype(cdt), sin.astype(cdt)
            xc = x.astype(cdt, copy=False)
        else:
            c = xp.asarray(cos, dtype=cdt, device=dev)
            s = xp.asarray(sin, dtype=cdt, device=dev)
            xc = x
        out = self._rotate(xc, c, s, xp)
        if out.dtype != x.dtype:
            out = xp.astype(out, x.dtype)
        return out

    __call__ = apply

    def _apply_graph(self, x: Array, positions: Any, ax: int, lead: int, xp: Any) -> Array:
        """:meth:`apply` in a graph-building namespace: positions (default ``0..L-1`` along ``ax``, counted by
        cumulative sums, since ``L`` is symbolic) and ``cos``/``sin`` of ``positions[..., None] * inv_freq``
        are graph operations; the rotation is :meth:`_rotate`, as in every other namespace."""
        base = xp.ones_like(x[..., 0])  # x.shape[:-1]
        if positions is None:
            p = xp.cumulative_sum(base, axis=ax) - 1.0 if lead else xp.zeros_like(base)
        elif isinstance(positions, (int, float, np.integer, np.floating)) and not isinstance(positions, bool):
            p = base * finite_float(positions, "positions")
        else:
            p = xp.asarray(positions)
            p = xp.astype(p, x.dtype) if p.dtype != x.dtype else p
            if p.ndim == 1 and lead > 1:
                shape = [1] * lead
                shape[ax] = -1
                p = xp.reshape(p, tuple(shape))
        inv = xp.asarray(self.inv_freq, dtype=x.dtype)
        ang = xp.expand_dims(p / self.scaling, axis=-1) * inv
        return self._rotate(x, xp.cos(ang), xp.sin(ang), xp)

    def _rotate(self, x: Array, cos: Array, sin: Array, xp: Any) -> Array:
        d, h = self.dim, self.dim // 2
        rot, rest = x[..., :d], x[..., d:]
        if self.layout == "half":
            a, b = rot[..., :h], rot[..., h:]
            out = xp.concat([a * cos - b * sin, a * sin + b * cos], axis=-1)
        else:
            pairs = reshape_lead(rot, rot.ndim - 1, (h, 2), xp)
            a, b = pairs[..., 0], pairs[..., 1]
            out = reshape_lead(xp.stack([a * cos - b * sin, a * sin + b * cos], axis=-1), rot.ndim - 1, (d,), xp)
        if rest.shape[-1]:
            out = xp.concat([out, rest], axis=-1)
        return out

    def inverse(self, x: Any, positions: Any = None, seq_axis: int = -2) -> Array:
        """Undo :meth:`apply` (rotation by the negated angles)."""
        xp = namespace(x)
        x = as_float_array(x, "x", xp)
        length = _dim(x.shape[seq_axis]) if x.ndim > 1 else 1
        p = self._positions(positions, length, seq_axis, x.ndim - 1)
        if p is None:
            p = np.arange(length, dtype=np.float64)
        return self.apply(x, -p, seq_axis=seq_axis)


def as_rope(value: Any, dim: int, name: str = "rope") -> RotaryEmbedding | None:
    """Validate a mechanism's ``rope=`` option.

    ``None``/``False``: no rotary embedding; a :class:`RotaryEmbedding`: used as given (its ``dim`` must not
    exceed the head width ``dim``); ``True``, ``"half"`` or ``"interleaved"``: a default embedding over the
    whole head width with that layout (the string form is what the CLI and config files pass); a mapping
    of :class:`RotaryEmbedding`'s options (``{"base": 500000.0}``; ``dim`` defaults to the head width),
    which is how a config file or preset gives the base.
    """
    if value is None or value is False:
        return None
    if isinstance(value, Mapping):
        unknown = sorted(set(map(str, value)) - {"dim", "base", "scaling", "layout"})
        if unknown:
            raise ConfigError(f"{name}: unknown RotaryEmbedding option {unknown[0]!r}; expected dim, base, scaling, layout")
        return as_rope(RotaryEmbedding(**{"dim": dim, **{str(k): v for k, v in value.items()}}), dim, name)
    if isinstance(value, RotaryEmbedding):
        if value.dim > dim:
            raise ConfigError(f"{name}: the RotaryEmbedding rotates {value.dim} features but the head width is {dim}")
        return value
    if value is True:
        return RotaryEmbedding(dim)
    if isinstance(value, str) and value.strip().lower() in ("half", "interleaved"):
        return RotaryEmbedding(dim, layout=value.strip().lower())
    if isinstance(value, str) and value.strip().lower() in ("none", "off", "false", "no", "0", ""):
        return None
    if isinstance(value, str) and value.strip().lower() in ("true", "on", "yes", "1"):
        return RotaryEmbedding(dim)
    raise ConfigError(f"{name}: expected a RotaryEmbedding, None, True, 'half' or 'interleaved', got {value!r}")


def apply_rope_qk(rope: RotaryEmbedding | None, q: Array, k: Array, start: int = 0) -> tuple[Array, Array]:
    """Rotate heads-first ``q: (..., H, Lq, D)`` and ``k: (..., H, Lk, D)`` for a sequence mechanism's
    ``rope=`` option. Keys sit at positions ``start .. start+Lk-1`` and queries at the last ``Lq`` of
    them (bottom-right aligned, as causal masking is: the queries are the newest tokens). ``start``: the
    tokens before these keys (a KV cache's length when decoding). ``rope=None`` returns ``q, k`` unchanged."""
    if rope is None:
        return q, k
    xp = namespace(q)
    if is_graph(xp) and start == 0:
        # symbolic lengths (an exported graph): Lk - Lq is counted in the graph, so the model places its
        # queries right at every length, not at the example's
        ones_q, ones_k = xp.ones_like(q[..., 0]), xp.ones_like(k[..., 0])  # (..., H, Lq), (..., H, Lk)
        shift = xp.sum(ones_k, axis=-1, keepdims=True) - xp.sum(ones_q, axis=-1, keepdims=True)
        return rope.apply(q, xp.cumulative_sum(ones_q, axis=-1) - 1.0 + shift, seq_axis=-2), rope.apply(k, None, seq_axis=-2)
    lq, lk = _dim(q.shape[-2]), _dim(k.shape[-2])
    qpos = None if lq == lk and start == 0 else np.arange(start + lk - lq, start + lk, dtype=np.float64)
    kpos = None if start == 0 else np.arange(start, start + lk, dtype=np.float64)
    return rope.apply(q, qpos, seq_axis=-2), rope.apply(k, kpos, seq_axis=-2)
