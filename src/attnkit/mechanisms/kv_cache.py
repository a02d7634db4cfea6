"""``KVCache``: the keys and values (or the linear-attention state) of the tokens decoded so far.

A causal model that generates one token at a time recomputes nothing for the tokens it has seen: it
keeps their keys and values and, at each step, appends the new ones and attends over all of them
(the key/value cache of autoregressive Transformer decoding, Vaswani et al. 2017; Pope et al. 2022,
"Efficiently Scaling Transformer Inference"). Pass one cache to ``forward(..., cache=cache)`` of
:class:`~attnkit.FlashAttention`, :class:`~attnkit.LocalGlobalAttention`,
:class:`~attnkit.MultiHeadAttention` (self-attention) or a causal :class:`~attnkit.LinearAttention`;
decoding token by token then gives what the full causal forward gives on the whole sequence.

Storage. The buffers are preallocated, heads-first ``(*batch, kv_heads, capacity, dim)``, in the
array library that ``dtype`` belongs to (``np.float32`` -> NumPy, ``torch.bfloat16`` -> torch,
``jnp.float32`` -> JAX) and allocated on the first append, which fixes the batch shape (the leading
dimensions of that first key array; later appends must have the same) and, for torch, the device
(the keys' device unless ``device=`` is given). ``capacity`` is ``max_len``, or ``window`` for a
ring buffer.

Positions. :attr:`KVCache.length` counts every token appended (the RoPE position of the next one);
with ``window`` set, only the last ``window`` entries are kept and attention covers the last
``window`` tokens, the current one included (query ``p`` sees keys ``p - window + 1 .. p``, as
``FlashAttention(window=(window - 1, 0))`` on the whole sequence). Without ``window``, appending
past ``max_len`` raises :class:`~attnkit.errors.ShapeError`.

Magnitudes. The cache keeps ``max |k|`` and ``max |v|`` of every entry it holds (per slot, set when the
entry is written), so :meth:`KVCache.abs_max` costs ``O(size)`` numbers rather than a pass over the
keys and values, and the overflow guard of a decode step (:mod:`attnkit.kernels.overflow`) reads only
the new tokens.

JAX arrays are immutable: a JAX cache replaces its buffers by functionally updated ones
(``x.at[...].set``) on every append, eagerly. It cannot be used inside ``jax.jit`` (the cache is
Python state; a traced append raises :class:`~attnkit.errors.ConfigError`): jit the step function
over the arrays :attr:`KVCache.keys` / :attr:`KVCache.values` instead, or decode eagerly.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import array_api_compat
import numpy as np

from .._array import Array, Namespace, check_allocation, is_traced, moveaxis, namespace, note_magnitude, numpy_view, positive_int, shape_str, to_numpy
from ..errors import ConfigError, DTypeError, ShapeError
from ..kernels.masks import prepare_mask

__all__ = ["KVCache", "as_cache", "cache_mask"]


def _library(dtype: Any) -> tuple[str, Any]:
    """``(library, dtype)`` for a dtype of NumPy, torch or JAX (a float type)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point or dtype.is_complex:
            raise DTypeError(f"dtype: expected a float dtype for the cache, got {dtype}")
        return "torch", dtype
    if type(dtype).__module__.startswith("jax") or getattr(dtype, "__module__", "").startswith("jax"):
        import jax.numpy as jnp

        dt = jnp.dtype(dtype)
        if not jnp.issubdtype(dt, jnp.floating):
            raise DTypeError(f"dtype: expected a float dtype for the cache, got {dt}")
        return "jax", dt
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise DTypeError(f"dtype: expected a float dtype of NumPy, torch or JAX (np.float32, torch.bfloat16, jnp.float32), got {dtype!r}") from None
    if dt.kind != "f":
        raise DTypeError(f"dtype: expected a float dtype for the cache, got {dt}")
    return "numpy", dt


def _is_library(xp: Namespace, library: str) -> bool:
    if library == "numpy":
        return bool(array_api_compat.is_numpy_namespace(xp))
    if library == "torch":
        return bool(array_api_compat.is_torch_namespace(xp))
    return bool(array_api_compat.is_jax_namespace(xp))


class KVCache:
    """Preallocated keys and values of the tokens seen so far, for incremental decoding (see the module).

    ``max_len``: most tokens it may hold; ``kv_heads``, ``dim``: key/value heads and their width
    (``value_dim``, default ``dim``, for values of another width); ``dtype`` picks the array library
    and the storage dtype; ``window`` (optional, ``<= max_len``): keep only the last ``window``
    tokens in a ring buffer and attend over them; ``device`` (torch): where to allocate (default:
    the first keys' device).

    A causal :class:`~attnkit.LinearAttention` keeps its recurrent state in the cache instead
    (``S = sum_j phi(k_j) [v_j, 1]^T`` and the per-feature scale, Katharopoulos et al. 2020), so a
    cache serves one kind of mechanism: the first forward decides.
    """

    def __init__(
        self,
        max_len: int,
        kv_heads: int,
        dim: int,
        dtype: Any = np.float32,
        window: int | None = None,
        *,
        value_dim: int | None = None,
        device: Any = None,
    ) -> None:
        self.max_len = positive_int(max_len, "max_len")
        self.kv_heads = positive_int(kv_heads, "kv_heads")
        self.dim = positive_int(dim, "dim")
        self.value_dim = self.dim if value_dim is None else positive_int(value_dim, "value_dim")
        self.window = None if window is None else positive_int(window, "window")
        if self.window is not None and self.window > self.max_len:
            raise ConfigError(f"window: expected at most max_len = {self.max_len} entries, got {self.window}")
        self.library, self.dtype = _library(dtype)
        self.device = device
        self._k: Any = None
        self._v: Any = None
        self._state: tuple[Any, Any] | None = None
        self._batch: tuple[int, ...] | None = None
        self._length = 0
        self._kind: str | None = None
        # max |k| and max |v| of the entry in each slot (over batch, heads and dim), set as entries are written
        self._kmax: np.ndarray | None = None
        self._vmax: np.ndarray | None = None

    # ------------------------------------------------------------------ description
    def __repr__(self) -> str:
        dt = self.dtype if self.library != "torch" else str(self.dtype)
        win = "" if self.window is None else f", window={self.window}"
        return f"KVCache(max_len={self.max_len}, kv_heads={self.kv_heads}, dim={self.dim}, dtype={dt}{win}, length={self._length})"

    @property
    def capacity(self) -> int:
        """Entries the buffers hold: ``window`` for a ring buffer, else ``max_len``."""
        return self.window if self.window is not None else self.max_len

    @property
    def length(self) -> int:
        """Tokens appended so far: the position (for RoPE) of the next token."""
        return self._length

    def __len__(self) -> int:
        return self._length

    @property
    def size(self) -> int:
        """Entries held now: ``min(length, capacity)``."""
        return min(self._length, self.capacity)

    @property
    def batch_shape(self) -> tuple[int, ...] | None:
        """The batch dimensions fixed by the first append (``None`` before it)."""
        return self._batch

    @property
    def nbytes(self) -> int:
        held = [self._k, self._v] + list(self._state or ())
        return sum(int(getattr(x, "nbytes", 0) or 0) for x in held)

    def abs_max(self) -> tuple[float, float]:
        """``(max |keys|, max |values|)`` over the entries held now (``(0.0, 0.0)`` when empty; NaN where
        one holds NaN), from the per-entry maxima kept as entries are written: no pass over the buffers."""
        self._need_kv("abs_max")
        if self._kmax is None or self.size == 0:
            return 0.0, 0.0
        n = self.size  # the held entries occupy slots 0 .. size - 1 (a ring buffer wraps only when full)
        assert self._vmax is not None  # set together with _kmax
        return float(self._kmax[:n].max()), float(self._vmax[:n].max())

    def reset(self) -> None:
        """Forget every token (the buffers and batch shape stay)."""
        self._length = 0
        self._state = None

    def truncate(self, length: int) -> None:
        """Drop the newest tokens so that ``length`` remain (e.g. rejected draft tokens of speculative
        decoding). Keys and values only; a ring buffer only until it first wraps."""
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or not 0 <= int(length) <= self._length:
            raise ConfigError(f"length: expected an integer between 0 and the cache's length {self._length}, got {length!r}")
        if self._kind == "linear" and int(length) != self._length:
            raise ConfigError("length: a linear-attention state cannot forget tokens; keep a copy of cache.state to roll back")
        if self.window is not None and self._length > self.window and int(length) != self._length:
            raise ConfigError(f"length: this ring buffer has overwritten tokens before the last {self.window}; it cannot go back to {length}")
        self._length = int(length)

    # ------------------------------------------------------------------ views
    def _span(self, n: int) -> tuple[Array, Array]:
        """The last ``n`` (``<= size``) entries in time order, heads-first: views, or a copy where the ring wraps."""
        cap = self.capacity
        a = (self._length - n) % cap
        b = a + n
        if b <= cap:
            return self._k[..., a:b, :], self._v[..., a:b, :]
        xp = self._xp()
        return (
            xp.concat([self._k[..., a:, :], self._k[..., : b - cap, :]], axis=-2),
            xp.concat([self._v[..., a:, :], self._v[..., : b - cap, :]], axis=-2),
        )

    def _need_kv(self, what: str) -> None:
        if self._kind == "linear":
            raise ConfigError(f"cache: this KVCache holds a linear-attention state, not keys and values ({what})")

    @property
    def keys(self) -> Array | None:
        """The cached keys, oldest first, ``(*batch, size, kv_heads, dim)`` (a view unless a ring buffer wrapped; ``None`` when empty)."""
        self._need_kv("keys")
        if self._k is None or self._length == 0:
            return None
        return moveaxis(self._span(self.size)[0], -2, -3, self._xp())

    @property
    def values(self) -> Array | None:
        """The cached values, oldest first, ``(*batch, size, kv_heads, value_dim)`` (``None`` when empty)."""
        self._need_kv("values")
        if self._v is None or self._length == 0:
            return None
        return moveaxis(self._span(self.size)[1], -2, -3, self._xp())

    @property
    def state(self) -> tuple[Array, Array] | None:
        """The linear-attention state ``(S, M)`` (see :func:`attnkit.kernels.linear.key_state`), or ``None``."""
        return self._state

    # ------------------------------------------------------------------ appending
    def _xp(self) -> Namespace:
        return namespace(self._k)

    def append(self, key: Any, value: Any) -> None:
        """Append keys ``(*batch, L, kv_heads, dim)`` and values ``(*batch, L, kv_heads, value_dim)``.

        The mechanisms call this themselves from ``forward(..., cache=cache)``; call it directly to
        fill a cache from keys and values computed elsewhere.
        """
        xp = namespace(key, value)
        k, v = xp.asarray(key), xp.asarray(value)
        if k.ndim < 3 or v.ndim < 3:
            raise ShapeError(f"key, value: expected shape (..., L, kv_heads={self.kv_heads}, D), got {shape_str(k.shape)} and {shape_str(v.shape)}")
        self.extend(moveaxis(k, -3, -2, xp), moveaxis(v, -3, -2, xp), ordered=True)

    def _check(self, k: Array, v: Array) -> Namespace:
        """Library, heads, widths, lengths and batch of heads-first ``k: (..., Hkv, L, D)``, ``v``."""
        xp = namespace(k, v)
        if not _is_library(xp, self.library):
            raise ConfigError(
                f"cache: this KVCache holds {self.library} arrays (dtype={self.dtype}); got {type(k).__module__.split('.')[0]} inputs. "
                "Create the cache with a dtype of the inputs' library"
            )
        if self.library == "jax" and (is_traced(k) or is_traced(v)):
            raise ConfigError("cache: a JAX KVCache updates eagerly and cannot be used inside jax.jit; decode eagerly or jit over the arrays")
        if int(k.shape[-3]) != self.kv_heads or int(v.shape[-3]) != self.kv_heads:
            raise ShapeError(f"key: expected kv_heads = {self.kv_heads} key/value heads (the cache's), got {int(k.shape[-3])} and {int(v.shape[-3])}")
        if int(k.shape[-1]) != self.dim:
            raise ShapeError(f"key: expected head dim {self.dim} (the cache's dim), got {int(k.shape[-1])}")
        if int(v.shape[-1]) != self.value_dim:
            raise ShapeError(f"value: expected head dim {self.value_dim} (the cache's value_dim), got {int(v.shape[-1])}")
        if int(k.shape[-2]) != int(v.shape[-2]):
            raise ShapeError(f"value: expected {int(k.shape[-2])} new entries (as key), got {int(v.shape[-2])}")
        if tuple(k.shape[:-3]) != tuple(v.shape[:-3]):
            raise ShapeError(f"key, value: expected the same batch dimensions, got {shape_str(k.shape[:-3])} and {shape_str(v.shape[:-3])}")
        batch = tuple(int(d) for d in k.shape[:-3])
        if self._batch is not None and batch != self._batch:
            raise ShapeError(f"key: expected batch dimensions {shape_str(self._batch)} (fixed by the cache's first append), got {shape_str(batch)}")
        n = int(k.shape[-2])
        if self.window is None and self._length + n > self.max_len:
            raise ShapeError(
                f"cache: appending {n} token(s) to a KVCache holding {self._length} would exceed max_len = {self.max_len}; "
                "create a larger cache, or one with window= (a ring buffer of the last window tokens)"
            )
        return xp

    def _allocate(self, k: Array, xp: Namespace) -> None:
        batch = tuple(int(d) for d in k.shape[:-3])
        per = self.kv_heads * self.capacity * (self.dim + self.value_dim) * math.prod(batch)
        itemsize = int(getattr(self.dtype, "itemsize", 0) or 4)
        check_allocation(per * itemsize, "max_len, kv_heads, dim", "the KVCache buffers")
        dev = self.device if self.device is not None else array_api_compat.device(k)
        kshape = (*batch, self.kv_heads, self.capacity, self.dim)
        vshape = (*batch, self.kv_heads, self.capacity, self.value_dim)
        if self.library == "numpy":
            self._k, self._v = np.empty(kshape, self.dtype), np.empty(vshape, self.dtype)
        elif self.library == "torch":
            import torch

            self._k = torch.empty(kshape, dtype=self.dtype, device=dev)
            self._v = torch.empty(vshape, dtype=self.dtype, device=dev)
        else:
            self._k = xp.zeros(kshape, dtype=self.dtype)
            self._v = xp.zeros(vshape, dtype=self.dtype)
        self._batch = batch
        self._kmax = np.zeros(self.capacity, dtype=np.float64)
        self._vmax = np.zeros(self.capacity, dtype=np.float64)

    def _set(self, buf: Array, a: int, b: int, piece: Array) -> Array:
        if self.library == "jax":
            return buf.at[..., a:b, :].set(piece)
        buf[..., a:b, :] = piece
        return buf

    def _write(self, k: Array, v: Array, xp: Namespace) -> None:
        """Store the last ``min(L, capacity)`` of the new entries at their slots (position % capacity)."""
        n = int(k.shape[-2])
        cap = self.capacity
        if k.dtype != self._k.dtype:
            k = xp.astype(k, self._k.dtype)
        if v.dtype != self._v.dtype:
            v = xp.astype(v, self._v.dtype)
        if n > cap:
            k, v, start = k[..., n - cap :, :], v[..., n - cap :, :], self._length + n - cap
            n = cap
        else:
            start = self._length
        a = start % cap
        first = min(n, cap - a)
        km, vm = _entry_max(k, xp), _entry_max(v, xp)
        assert self._kmax is not None and self._vmax is not None  # allocated with the buffers
        self._k = self._set(self._k, a, a + first, k[..., :first, :])
        self._v = self._set(self._v, a, a + first, v[..., :first, :])
        self._kmax[a : a + first], self._vmax[a : a + first] = km[:first], vm[:first]
        if first < n:
            self._k = self._set(self._k, 0, n - first, k[..., first:, :])
            self._v = self._set(self._v, 0, n - first, v[..., first:, :])
            self._kmax[: n - first], self._vmax[: n - first] = km[first:], vm[first:]

    def extend(self, k: Array, v: Array, *, ordered: bool = False) -> tuple[Array, Array, int | None]:
        """Append heads-first ``k: (*batch, Hkv, L, D)``, ``v``; return what the ``L`` new queries attend.

        Returns ``(keys, values, left)``: keys and values in time order ending with the new ones (so
        the new queries are bottom-right aligned), and ``left``, the window the queries must keep
        (query ``p`` sees keys ``p - left .. p``; ``None``: all of ``keys``). Without ``window`` these
        are views of the buffers. With a ring buffer they are the last ``window - 1`` old entries and
        the new ones (a copy), with ``left = window - 1``; except for one new query with
        ``ordered=False`` (the caller's scores do not depend on key order: no ALiBi, no own window),
        which gets the ring's slots as they are (views), every one visible.
        """
        if self._kind == "linear":
            raise ConfigError("cache: this KVCache holds a linear-attention state; use a new KVCache for keys and values")
        xp = self._check(k, v)
        if self._k is None:
            self._allocate(k, xp)
        self._kind = "kv"
        n = int(k.shape[-2])
        if self.window is None:
            self._write(k, v, xp)
            self._length += n
            return (*self._noted(*self._span(self._length)), None)
        if n == 1 and not ordered:
            self._write(k, v, xp)
            self._length += 1
            return (*self._noted(self._k[..., : self.size, :], self._v[..., : self.size, :]), None)
        old = min(self._length, self.window - 1)
        if old:
            ok, ov = self._span(old)
            if k.dtype != ok.dtype:
                k, v = xp.astype(k, ok.dtype), xp.astype(v, ok.dtype)
            keys, values = xp.concat([ok, k], axis=-2), xp.concat([ov, v], axis=-2)
        else:
            keys, values = k, v
        self._write(k, v, xp)
        self._length += n
        return keys, values, self.window - 1

    def _noted(self, keys: Array, values: Array) -> tuple[Array, Array]:
        """``keys, values`` (views of every held entry), their maxima noted for this call's overflow guard
        (:func:`attnkit._array.note_magnitude`), so it does not read the whole cache for them."""
        km, vm = self.abs_max()
        note_magnitude(keys, km, True)
        note_magnitude(values, vm, True)
        return keys, values

    # ------------------------------------------------------------------ linear attention
    def linear_state(self, k: Array, v: Array) -> tuple[Any, Any] | None:
        """Check heads-first new keys/values for a linear-attention step; return the state so far (``None``: none yet)."""
        if self._kind == "kv":
            raise ConfigError("cache: this KVCache holds keys and values; a LinearAttention needs a KVCache of its own")
        if self.window is not None:
            raise ConfigError(f"cache: a LinearAttention state sums every token and cannot keep a window (got window={self.window})")
        self._check(k, v)
        return self._state

    def set_linear_state(self, state: tuple[Any, Any], n: int, batch: tuple[int, ...]) -> None:
        """Store the state after ``n`` more tokens."""
        self._kind = "linear"
        self._state = state
        self._batch = batch
        self._length += int(n)


def _entry_max(x: Array, xp: Namespace) -> np.ndarray:
    """``max |x|`` of each entry of heads-first ``x: (*batch, Hkv, n, D)`` (over all axes but the entries'),
    float64 ``(n,)``; NaN where an entry holds NaN."""
    n = int(x.shape[-2])
    axes = tuple(i for i in range(x.ndim) if i != x.ndim - 2)
    if math.prod(int(d) for d in x.shape) == 0:
        return np.zeros(n, dtype=np.float64)
    view = numpy_view(x)
    if view is not None:
        return np.abs(view).max(axis=axes).astype(np.float64, copy=False)
    if hasattr(x, "detach"):
        x = x.detach()
    return to_numpy(xp.max(xp.abs(x), axis=axes)).astype(np.float64)


def cache_mask(mask: Any, cache: KVCache, xp: Namespace, batch: tuple[int, ...], heads: int, lq: int, lk: int, dtype: Any, device: Any) -> Any:
    """A user ``mask`` over the attended keys, ``(..., H, Lq, Lk)`` (``Lk``: every cached key, the new ones
    included); ``None`` stays ``None``. A ring buffer (``window``) takes none: its slots are not positions."""
    if mask is None:
        return None
    if cache.window is not None:
        raise ConfigError("mask: a mask cannot be combined with a KVCache that has a window (its keys are a ring buffer)")
    return prepare_mask(mask, xp, (*batch, heads, lq, lk), dtype, device=device)


def as_cache(cache: object) -> KVCache:
    """``cache`` if it is a :class:`KVCache`, else a :class:`~attnkit.errors.ConfigError`."""
    if not isinstance(cache, KVCache):
        raise ConfigError(f"cache: expected an attnkit.KVCache, got {type(cache).__name__}")
    return cache
