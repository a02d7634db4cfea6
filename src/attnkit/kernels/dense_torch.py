"""Dispatch to ``torch.nn.functional.scaled_dot_product_attention`` with attnkit's semantics.

torch's fused kernels compute ``softmax(scale q k^T + bias) v`` like :func:`.dense.sdpa_generic`
but differ in three conventions, each handled here so the result is attnkit's:

* a query row whose keys are all masked must give zeros (torch's backends give NaN or zeros
  depending on the kernel): such rows are unmasked before the call (so no backend computes a NaN,
  in the forward or the backward pass) and their output is set to zero afterwards;
* ``causal`` is bottom-right aligned (query ``i`` sees key ``j <= i + Lk - Lq``; torch's
  ``is_causal`` is top-left): for ``Lq < Lk`` torch's ``causal_lower_right`` bias is used, for
  ``Lq > Lk`` the first ``Lq - Lk`` rows see no key and are zeros, the rest is a square causal
  problem;
* ``causal`` together with a mask: torch takes one or the other, so the two are combined into one
  mask.

Grouped-query attention (``k``/``v`` with fewer heads than ``q``, axis -3) goes to torch's kernel
with ``enable_gqa=True``; the bottom-right causal mask is then given as a bool mask (torch's
``CausalBias`` kernels take equal head counts).

Autograd flows through every branch. Returns ``None`` only for inputs torch cannot take (the
caller then uses the generic path).
"""

from __future__ import annotations

import math
from typing import Any

from .._array import torch_compiling

__all__ = ["sdpa_torch", "sdpa_torch_window"]


def _causal_keep(torch: Any, lq: int, lk: int, device: Any) -> Any:
    """Bool ``(Lq, Lk)``: key ``j`` visible to query ``i`` iff ``j <= i + Lk - Lq``."""
    return torch.ones(lq, lk, dtype=torch.bool, device=device).tril(lk - lq)


def sdpa_torch(q: Any, k: Any, v: Any, *, scale: float, mask: Any = None, causal: bool = False) -> Any | None:
    """torch SDPA on heads-first tensors ``(..., H, L, D)`` with attnkit's masking semantics."""
    import torch
    import torch.nn.functional as F

    if not (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)):
        return None
    if mask is not None and not isinstance(mask, torch.Tensor):
        return None
    if q.dtype != k.dtype or q.dtype != v.dtype or not q.dtype.is_floating_point:
        return None
    lq, lk = q.shape[-2], k.shape[-2]
    if lq == 0 or lk == 0:
        return None
    sdpa = F.scaled_dot_product_attention
    gqa = q.ndim >= 3 and k.ndim >= 3 and v.ndim >= 3 and q.shape[-3] != k.shape[-3]

    if mask is None:
        if not causal or lq == lk:
            return _call(sdpa, q, k, v, None, causal, scale)
        if lq < lk:
            from torch.nn.attention.bias import causal_lower_right

            bias = _causal_keep(torch, lq, lk, q.device) if gqa else causal_lower_right(lq, lk)
            return _call(sdpa, q, k, v, bias, False, scale)
        # Lq > Lk: the first Lq - Lk queries see no key; the last Lk form a square causal problem
        tail = _call(sdpa, q[..., lq - lk :, :], k, v, None, True, scale)
        head = tail.new_zeros((*tail.shape[:-2], lq - lk, tail.shape[-1]))
        return torch.cat([head, tail], dim=-2)

    # a mask (and maybe causal): one combined mask, fully hidden rows unmasked and zeroed afterwards
    if mask.dtype == torch.bool:
        keep = mask & _causal_keep(torch, lq, lk, mask.device) if causal else mask
        row_ok = keep.any(dim=-1, keepdim=True)
        all_ok = _all(row_ok)
        attn_mask = keep if all_ok else keep | ~row_ok
    elif mask.dtype.is_floating_point:
        bias = mask.to(q.dtype)
        if causal:
            bias = bias.masked_fill(~_causal_keep(torch, lq, lk, bias.device), float("-inf"))
        row_ok = (bias != float("-inf")).any(dim=-1, keepdim=True)
        all_ok = _all(row_ok)
        attn_mask = bias if all_ok else bias.masked_fill(~row_ok, 0.0)
    else:
        return None
    out = _call(sdpa, q, k, v, attn_mask, False, scale)
    if not all_ok:
        out = out.masked_fill(~row_ok, 0.0)
    return out


def _all(flags: Any) -> bool:
    """``bool(flags.all())``; ``False`` while torch.compile traces (a graph cannot branch on values, and the
    ``False`` path, which unmasks fully hidden rows and zeroes them afterwards, is right either way)."""
    return False if torch_compiling() else bool(flags.all())


def _batch(torch: Any, a: Any, b: Any, c: Any, m: tuple[Any, ...]) -> tuple[Any, ...]:
    """The broadcast batch shape; equal shapes (the common case) skip ``torch.broadcast_shapes`` (~0.1 ms a call)."""
    if a == b == c and (not m or tuple(m) == tuple(a)):
        return tuple(a)
    return tuple(torch.broadcast_shapes(a, b, c, m))


def _call(sdpa: Any, q: Any, k: Any, v: Any, attn_mask: Any, is_causal: bool, scale: float) -> Any:
    """torch SDPA with broadcasting batch dimensions (torch wants them equal), always on 4-D tensors.

    torch's fused kernels (flash attention on CPU; flash / memory-efficient on CUDA) take only
    ``(B, H, L, D)``: a 3-D ``(H, L, D)`` call, as a sequence ``(L, H, D)`` without a batch dim gives, or
    a 5-D one runs the unfused math path (5.5x slower on CPU). Other ranks are viewed as 4-D here
    (a leading 1, or the batch dimensions merged, which stays a view for the strided heads-first
    layouts attnkit passes) and the result is viewed back. ``attn_mask`` is a tensor or torch's
    ``CausalBias`` (a tensor subclass whose ``shape`` is not a mask shape: it takes no part in
    broadcasting). Grouped-query attention (key heads dividing the query heads, axis -3) keeps the
    heads out of the broadcast and calls torch with ``enable_gqa=True``.
    """
    import torch
    from torch.nn.attention.bias import CausalBias

    tensor_mask = isinstance(attn_mask, torch.Tensor) and not isinstance(attn_mask, CausalBias)
    if tensor_mask and attn_mask.ndim < 2:
        attn_mask = attn_mask.reshape(1, -1)  # a mask over keys only
    gqa = q.ndim >= 3 and k.ndim >= 3 and q.shape[-3] != k.shape[-3]
    if gqa:
        mshape = tuple(attn_mask.shape[:-3]) if tensor_mask and attn_mask.ndim > 3 else ()
        batch = _batch(torch, q.shape[:-3], k.shape[:-3], v.shape[:-3], mshape)
        if q.shape[:-3] != batch or k.shape[:-3] != batch or v.shape[:-3] != batch:
            q, k, v = (t.expand(*batch, *t.shape[-3:]) for t in (q, k, v))
        n = math.prod(batch)
        q4, k4, v4 = (t.reshape(n, *t.shape[-3:]) for t in (q, k, v))
        if tensor_mask and attn_mask.ndim > 3:
            attn_mask = attn_mask.expand(*batch, *attn_mask.shape[-3:]).reshape(n, *attn_mask.shape[-3:])
        out = sdpa(q4, k4, v4, attn_mask=attn_mask, is_causal=is_causal, scale=scale, enable_gqa=True)
        return out.reshape(*batch, *out.shape[-3:])
    mshape = tuple(attn_mask.shape[:-2]) if tensor_mask and attn_mask.ndim > 2 else ()
    batch = _batch(torch, q.shape[:-2], k.shape[:-2], v.shape[:-2], mshape)
    if q.shape[:-2] != batch or k.shape[:-2] != batch or v.shape[:-2] != batch:
        q, k, v = (t.expand(*batch, *t.shape[-2:]) for t in (q, k, v))
    if len(batch) == 2:
        return sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale)
    lead = (1, *batch) if len(batch) < 2 else (math.prod(batch[:-1]), batch[-1])
    lead = (1, *lead) if len(lead) < 2 else lead
    q4, k4, v4 = (t.reshape(*lead, *t.shape[-2:]) for t in (q, k, v))
    if attn_mask is not None and len(mshape) > 0:
        full = (*batch, *attn_mask.shape[-2:])
        attn_mask = attn_mask.expand(*full).reshape(*lead, *attn_mask.shape[-2:])
    out = sdpa(q4, k4, v4, attn_mask=attn_mask, is_causal=is_causal, scale=scale)
    return out.reshape(*batch, *out.shape[-2:])


def _positional_mask(torch: Any, rows: Any, cols: Any, lo: int, hi: int, slopes: Any, dtype: Any) -> Any:
    """Mask of a tile whose entries have ``rel = cols[None, :] - rows[:, None]``: bool (band) without ALiBi,
    else the float bias ``-slope |rel|`` inside the band and ``-inf`` outside, ``(H, R, C)``."""
    rel = cols[None, :] - rows[:, None]
    keep = (rel >= lo) & (rel <= hi)
    if slopes is None:
        return keep
    bias = -slopes.to(dtype)[:, None, None] * rel.abs().to(dtype)
    return bias.masked_fill(~keep, float("-inf"))


#: Query rows per block of the windowed path (the last block size is the band when it is narrower).
WINDOW_BLOCK = 256


def sdpa_torch_window(
    q: Any,
    k: Any,
    v: Any,
    *,
    scale: float,
    mask: Any = None,
    causal: bool = False,
    window: tuple[int, int] = (-1, -1),
    alibi_slopes: Any = None,
    block: int | None = None,
) -> Any | None:
    """Sliding-window attention (FlashAttention-2's ``window_size``, bottom-right aligned) in O(Lq * window).

    Query ``i`` sees key ``j`` iff ``lo <= j - i - (Lk - Lq) <= hi`` with ``lo = -left``, ``hi = right``
    (``hi = min(right, 0)`` when causal); ALiBi adds ``-slope_h |j - i - (Lk - Lq)|`` (Press et al. 2022).
    Queries are cut in blocks of ``b`` rows (``block``, default :data:`WINDOW_BLOCK`); block ``[q0, q0 + b)`` needs only the ``b + hi - lo`` keys
    from ``q0 + Lk - Lq + lo``, and its band is the same ``(b, b + hi - lo)`` pattern for every block.
    The interior blocks (whose keys all exist) go to torch's fused kernel in ONE call, as a batch of
    ``(b, span)`` problems sharing one broadcast mask (keys gathered with ``unfold``: one O(L * span * D / b)
    copy); the few blocks at either end, whose window leaves the sequence, go through :func:`sdpa_torch`
    with their own small mask. Returns ``None`` where this does not pay (no bounded window on both sides,
    a user mask, batch-dependent slopes, or a window not narrower than half the keys): the caller then
    hands torch one dense mask.
    """
    import torch
    import torch.nn.functional as F

    if mask is not None or not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
        return None
    if q.dtype != k.dtype or q.dtype != v.dtype or not q.dtype.is_floating_point or q.ndim < 3 or k.ndim < 3:
        return None
    left, right = int(window[0]), int(window[1])
    if left < 0 or (right < 0 and not causal):
        return None
    lo, hi = -left, right
    if causal:
        hi = 0 if right < 0 else min(right, 0)
    lq, lk = int(q.shape[-2]), int(k.shape[-2])
    off = lk - lq
    b = max(1, min(WINDOW_BLOCK if block is None else block, lq))
    span = b + hi - lo
    if 2 * span > lk:
        return None
    slopes = None
    if alibi_slopes is not None:
        slopes = torch.as_tensor(alibi_slopes, device=q.device)
        if slopes.ndim > 1 and slopes.shape[:-1].numel() != 1:
            return None  # slopes that vary along batch dims: the dense mask path
        slopes = slopes.reshape(-1)
    # interior query blocks [qa, qz): every key of their window exists
    qa = -(-max(0, -(off + lo)) // b) * b
    qmax0 = min(lq - b, lk - off - hi - b)
    ni = (qmax0 - qa) // b + 1 if qmax0 >= qa else 0
    if ni <= 0:  # no block whose window lies inside the keys: all queries as one edge problem
        qa = lq
    qz = qa + ni * b
    h, hk = int(q.shape[-3]), int(k.shape[-3])
    batch = _batch(torch, q.shape[:-3], k.shape[:-3], v.shape[:-3], ())
    q, k, v = (t.expand(*batch, *t.shape[-3:]) if tuple(t.shape[:-3]) != batch else t for t in (q, k, v))
    d, dv = int(q.shape[-1]), int(v.shape[-1])
    dev = q.device
    mid = None
    if ni > 0:
        ka = qa + off + lo  # first key of the first interior block
        qi = q[..., qa:qz, :].reshape(*batch, h, ni, b, d).transpose(-4, -3).reshape(-1, h, b, d)
        kw = k[..., ka : ka + (ni - 1) * b + span, :]
        vw = v[..., ka : ka + (ni - 1) * b + span, :]
        ki = kw.unfold(-2, span, b).transpose(-1, -2).transpose(-4, -3).reshape(-1, hk, span, d)
        vi = vw.unfold(-2, span, b).transpose(-1, -2).transpose(-4, -3).reshape(-1, hk, span, dv)
        rows = torch.arange(b, device=dev)
        cols = torch.arange(span, device=dev) + lo  # rel = (c + lo) - r inside every interior block
        pm = _positional_mask(torch, rows, cols, lo, hi, slopes, q.dtype)
        if h != hk:
            oi = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=pm, scale=scale, enable_gqa=True)
        else:
            oi = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=pm, scale=scale)
        mid = oi.reshape(*batch, ni, h, b, dv).transpose(-4, -3).reshape(*batch, h, ni * b, dv)
    parts: list[Any] = []
    for q0, q1 in ((0, qa), (qz, lq)):  # the edges: small problems with their own mask
        if q1 <= q0:
            parts.append(None)
            continue
        k0, k1 = max(0, q0 + off + lo), min(lk, q1 - 1 + off + hi + 1)
        if k1 <= k0:
            parts.append(q.new_zeros((*batch, h, q1 - q0, dv)))
            continue
        rows = torch.arange(q0 + off, q1 + off, device=dev)
        cols = torch.arange(k0, k1, device=dev)
        em = _positional_mask(torch, rows, cols, lo, hi, slopes, q.dtype)
        out = sdpa_torch(q[..., q0:q1, :], k[..., k0:k1, :], v[..., k0:k1, :], scale=scale, mask=em)
        if out is None:
            return None
        parts.append(out)
    pieces = [p for p in (parts[0], mid, parts[1]) if p is not None]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-2)
