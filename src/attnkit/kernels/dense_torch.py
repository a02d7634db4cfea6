"""Dispatch to ``torch.nn.functional.scaled_dot_product_attention`` where its semantics match ours.

torch's fused kernels differ from attnkit in two places, both handled here: a query row whose keys
are all masked gives NaN in torch (zeros in attnkit), and torch's ``is_causal`` is top-left aligned
(attnkit is bottom-right). Where either could arise this returns ``None`` and the caller falls back
to the generic path.
"""

from __future__ import annotations

from typing import Any


def sdpa_torch(q: Any, k: Any, v: Any, *, scale: float, mask: Any = None, causal: bool = False) -> Any | None:
    """torch SDPA on heads-first tensors, or ``None`` where its semantics would differ."""
    import torch
    import torch.nn.functional as F

    lq, lk = q.shape[-2], k.shape[-2]
    if mask is not None and (causal or mask.dtype == torch.bool):
        return None  # bool masks may hide whole rows (torch gives NaN there); let the generic path decide
    if mask is not None and bool(torch.isinf(mask).any()):
        return None
    if causal and lq > lk:
        return None  # bottom-right causal hides every key from the first Lq - Lk queries
    if causal and lq != lk:
        from torch.nn.attention.bias import causal_lower_right

        mask_arg: Any = causal_lower_right(lq, lk)
        is_causal = False
    else:
        mask_arg, is_causal = mask, causal
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    q, k, v = (t.expand(*batch, *t.shape[-2:]) for t in (q, k, v))
    if mask_arg is not None and not is_causal and isinstance(mask_arg, torch.Tensor):
        mask_arg = mask_arg.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask_arg, is_causal=is_causal, scale=scale)
