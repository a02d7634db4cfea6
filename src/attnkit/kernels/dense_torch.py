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

Autograd flows through every branch. Returns ``None`` only for inputs torch cannot take (the
caller then uses the generic path).
"""

from __future__ import annotations

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

    if mask is None:
        if not causal or lq == lk:
            return _call(sdpa, q, k, v, None, causal, scale)
        if lq < lk:
            from torch.nn.attention.bias import causal_lower_right

            return _call(sdpa, q, k, v, causal_lower_right(lq, lk), False, scale)
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
    """torch SDPA with broadcasting batch dimensions (torch wants them equal)."""
    if attn_mask is not None and getattr(attn_mask, "ndim", 2) < 2:
        attn_mask = attn_mask.reshape(1, -1)  # a mask over keys only
    mshape = attn_mask.shape[:-2] if attn_mask is not None and attn_mask.ndim > 2 else ()
    if q.shape[:-2] != k.shape[:-2] or q.shape[:-2] != v.shape[:-2] or len(mshape) > q.ndim - 2:
        import torch

        batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2], mshape)
        q, k, v = (t.expand(*batch, *t.shape[-2:]) for t in (q, k, v))
    return sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale)
