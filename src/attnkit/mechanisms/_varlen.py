"""Packed variable-length batches: FlashAttention-2's varlen API and torch's nested (jagged) tensors.

``B`` sequences are packed along the sequence axis into one ``(total, H, D)`` array (``(H, total, D)``
with ``layout="bhsd"``); ``cu_seqlens`` holds the ``B + 1`` cumulative offsets ``0 = c_0 <= c_1 <= ...
<= c_B = total``, sequence ``b`` being rows ``c_b .. c_{b+1} - 1`` (Dao 2023, FlashAttention-2,
``flash_attn_varlen_func``). Each query sequence attends only to the key sequence of the same index,
with every option of the mechanism applied per sequence (causal and windows bottom-right aligned
within it, rotary positions restarting at 0): the result equals a loop over the sequences, which is
what :func:`varlen_forward` runs (each one on the fast kernels). A sequence with no keys gives zeros.

A torch nested tensor of the jagged layout (``torch.nested.nested_tensor(..., layout=torch.jagged)``,
logical shape ``(B, j, H, D)``, or ``(B, H, j, D)`` with ``layout="bhsd"``) is read the same way
through its ``values()`` and ``offsets()``, and the result is a nested tensor of the same structure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .._array import Array, is_traced, namespace, shape_str
from ..errors import ConfigError, ShapeError

__all__ = ["is_nested", "varlen_forward"]


def is_nested(*xs: Any) -> bool:
    """Whether any of ``xs`` is a torch nested tensor (without importing torch)."""
    return any(getattr(x, "is_nested", False) is True for x in xs)


def _offsets(cu: Any, name: str, total: int, max_seqlen: Any) -> list[int]:
    """``cu_seqlens`` as Python ints, checked: 1-D, integer, from 0 to ``total``, non-decreasing."""
    if is_traced(cu):
        raise ConfigError(f"{name}: expected concrete offsets (Python ints or an array outside jit/compile), got a traced value")
    if hasattr(cu, "detach"):
        cu = cu.detach().cpu().numpy()
    try:
        arr = np.asarray(cu)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a 1-D array of B + 1 integer offsets, got {cu!r}") from None
    if arr.ndim != 1 or arr.size < 2 or not (arr.dtype.kind in "iu" or (arr.dtype == object and all(isinstance(c, (int, np.integer)) for c in arr))):
        raise ConfigError(f"{name}: expected a 1-D array of B + 1 >= 2 integer offsets, got shape {shape_str(arr.shape)} of {arr.dtype}")
    offs = [int(c) for c in arr]
    if offs[0] != 0 or offs[-1] != total or any(b < a for a, b in zip(offs, offs[1:], strict=False)):
        raise ShapeError(f"{name}: expected non-decreasing offsets from 0 to the packed length {total}, got {offs}")
    if max_seqlen is not None:
        longest = max(b - a for a, b in zip(offs, offs[1:], strict=False))
        if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, (int, np.integer)) or int(max_seqlen) < longest:
            raise ConfigError(f"max_seqlen{name[len('cu_seqlens') :]}: expected an int >= the longest sequence ({longest}), got {max_seqlen!r}")
    return offs


def _unnest(x: Any, name: str, bhsd: bool) -> tuple[Any, list[int]]:
    """A jagged nested tensor -> its packed values (in the mechanism's layout) and offsets."""
    import torch

    if x.layout != torch.jagged:
        raise ConfigError(
            f"{name}: expected a nested tensor of layout torch.jagged (torch.nested.nested_tensor(..., layout=torch.jagged)) "
            f"or a packed array with cu_seqlens, got a nested tensor of layout {x.layout}"
        )
    want = 2 if bhsd else 1
    if x.dim() != 4 or x._ragged_idx != want:
        form = "(B, H, j, D)" if bhsd else "(B, j, H, D)"
        raise ShapeError(f"{name}: expected a jagged nested tensor {form} (ragged axis {want}), got shape {tuple(x.shape)}")
    if bhsd:
        x = x.transpose(1, 2)
    vals = x.values()
    return (vals.transpose(0, 1) if bhsd else vals), [int(c) for c in x.offsets().tolist()]


def varlen_forward(
    run: Callable[..., Array],
    query: Any,
    key: Any,
    value: Any,
    *,
    mask: Any,
    cu_seqlens_q: Any = None,
    cu_seqlens_k: Any = None,
    max_seqlen_q: Any = None,
    max_seqlen_k: Any = None,
    layout: str = "bshd",
) -> Array:
    """``run(q_b, k_b, v_b)`` on each packed sequence ``b``, the outputs packed again (see the module doc).

    ``cu_seqlens_k`` defaults to ``cu_seqlens_q`` (and the other way round); ``key``/``value`` default
    to ``query``. Nested inputs bring their own offsets.
    """
    bhsd = layout == "bhsd"
    if mask is not None:
        raise ConfigError("mask: not used with packed sequences (cu_seqlens or nested tensors): each sequence attends within itself; pass mask=None")
    nested = is_nested(query, key, value)
    if nested:
        if cu_seqlens_q is not None or cu_seqlens_k is not None:
            raise ConfigError("cu_seqlens_q: nested tensors carry their own offsets; pass either nested tensors or cu_seqlens, not both")
        for name, x in (("query", query), ("key", key), ("value", value)):
            if x is not None and not is_nested(x):
                raise ConfigError(f"{name}: expected a nested tensor like the query (or None), got {type(x).__name__}")
        raw_q = query
        query, cu_seqlens_q = _unnest(query, "query", bhsd)
        offsets_q = None if bhsd else raw_q.offsets()  # the result shares the query's ragged structure
        if key is not None:
            key, cu_seqlens_k = _unnest(key, "key", bhsd)
            value, cu_v = _unnest(value, "value", bhsd)
            if cu_v != cu_seqlens_k:
                raise ShapeError(f"value: expected the key's sequence lengths (offsets {cu_seqlens_k}), got offsets {cu_v}")
    if (key is None) != (value is None):
        raise ShapeError("key, value: pass both keys and values, or neither (self-attention)")
    if key is None:
        key = value = query
    lax = -2 if bhsd else -3
    for name, x in (("query", query), ("key", key), ("value", value)):
        if getattr(x, "ndim", None) != 3:
            form = "(H, total, D)" if bhsd else "(total, H, D)"
            raise ShapeError(f"{name}: packed sequences need a {form} array (no batch dims), got shape {shape_str(getattr(x, 'shape', ()))}")
    if cu_seqlens_q is None:
        cu_seqlens_q = cu_seqlens_k
    if cu_seqlens_k is None:
        cu_seqlens_k = cu_seqlens_q
    cq = _offsets(cu_seqlens_q, "cu_seqlens_q", int(query.shape[lax]), max_seqlen_q)
    ck = _offsets(cu_seqlens_k, "cu_seqlens_k", int(key.shape[lax]), max_seqlen_k)
    if int(value.shape[lax]) != ck[-1]:
        raise ShapeError(f"value: expected the packed key length {ck[-1]} along axis {lax}, got {int(value.shape[lax])}")
    if len(cq) != len(ck):
        raise ShapeError(f"cu_seqlens_k: expected {len(cq) - 1} sequences (as cu_seqlens_q), got {len(ck) - 1}")
    xp = namespace(query, key, value)

    def seq(x: Any, a: int, b: int) -> Any:
        return x[:, a:b, :] if bhsd else x[a:b]

    outs: list[Any] = [None] * (len(cq) - 1)
    for i in range(len(cq) - 1):
        if cq[i + 1] > cq[i] and ck[i + 1] > ck[i]:
            outs[i] = run(seq(query, cq[i], cq[i + 1]), seq(key, ck[i], ck[i + 1]), seq(value, ck[i], ck[i + 1]))
    done = next((o for o in outs if o is not None), None)
    heads = int(query.shape[-3 if bhsd else -2])
    dv = int(value.shape[-1])
    dtype = done.dtype if done is not None else query.dtype
    dev = getattr(query, "device", None)
    for i, o in enumerate(outs):
        if o is None:  # no keys (or no queries): zeros, as any row with no visible key
            n = cq[i + 1] - cq[i]
            outs[i] = xp.zeros((heads, n, dv) if bhsd else (n, heads, dv), dtype=dtype, device=dev)
    out = xp.concat(outs, axis=lax) if len(outs) > 1 else outs[0]
    if nested:
        import torch

        if bhsd:
            packed = torch.nested.nested_tensor_from_jagged(out.transpose(0, 1), offsets=torch.tensor(cq, device=out.device))
            return packed.transpose(1, 2)
        return torch.nested.nested_tensor_from_jagged(out, offsets=offsets_q)
    return out
