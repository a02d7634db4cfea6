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

__all__ = ["sdpa_torch"]


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
        batch = tuple(torch.broadcast_shapes(q.shape[:-3], k.shape[:-3], v.shape[:-3], mshape))
        if q.shape[:-3] != batch or k.shape[:-3] != batch or v.shape[:-3] != batch:
            q, k, v = (t.expand(*batch, *t.shape[-3:]) for t in (q, k, v))
        n = math.prod(batch)
        q4, k4, v4 = (t.reshape(n, *t.shape[-3:]) for t in (q, k, v))
        if tensor_mask and attn_mask.ndim > 3:
            attn_mask = attn_mask.expand(*batch, *attn_mask.shape[-3:]).reshape(n, *attn_mask.shape[-3:])
        out = sdpa(q4, k4, v4, attn_mask=attn_mask, is_causal=is_causal, scale=scale, enable_gqa=True)
        return out.reshape(*batch, *out.shape[-3:])
    mshape = tuple(attn_mask.shape[:-2]) if tensor_mask and attn_mask.ndim > 2 else ()
    batch = tuple(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2], mshape))
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
