"""torch dispatch (``kernels.dense_torch``): torch's fused SDPA with attnkit's semantics.

Checked against the float64 reference and the generic kernel on torch tensors, including the
places where torch's conventions differ: fully masked rows (zeros, never NaN, also in the
gradient), bottom-right causal alignment, causal combined with a mask, broadcasting batches.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import TOL32, TOL64, ref_attention, rel_err, to_np

torch = pytest.importorskip("torch")

from attnkit.kernels import dense_torch  # noqa: E402
from attnkit.kernels.dense import sdpa, sdpa_generic  # noqa: E402


def _xp():  # noqa: ANN202
    import array_api_compat

    return array_api_compat.array_namespace(torch.empty(0))


def _inputs(rng, qb, kb, lq, lk, d=8, dv=8, dtype=torch.float32):  # noqa: ANN001, ANN202
    q = torch.from_numpy(rng.standard_normal((*qb, lq, d))).to(dtype)
    k = torch.from_numpy(rng.standard_normal((*kb, lk, d))).to(dtype)
    v = torch.from_numpy(rng.standard_normal((*kb, lk, dv))).to(dtype)
    return q, k, v


def _check(q, k, v, mask=None, causal=False):  # noqa: ANN001, ANN202
    scale = 1.0 / math.sqrt(q.shape[-1])
    out = dense_torch.sdpa_torch(q, k, v, scale=scale, mask=mask, causal=causal)
    assert out is not None and isinstance(out, torch.Tensor)
    assert out.dtype == q.dtype
    assert not torch.isnan(out).any()
    m = None if mask is None else to_np(mask)
    ref = ref_attention(to_np(q), to_np(k), to_np(v), m, causal, scale)
    tol = TOL32 if q.dtype == torch.float32 else TOL64
    assert rel_err(out, ref) <= tol
    gen = sdpa_generic(q, k, v, xp=_xp(), scale=scale, mask=mask, causal=causal)
    assert rel_err(out, to_np(gen)) <= 2 * tol
    return out


@pytest.mark.parametrize("lq,lk", [(12, 12), (7, 19), (19, 7), (1, 9), (9, 1)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_mask_and_bottom_right_causal(rng, lq, lk, causal, dtype) -> None:  # noqa: ANN001
    q, k, v = _inputs(rng, (2, 3), (2, 3), lq, lk, dtype=dtype)
    out = _check(q, k, v, causal=causal)
    if causal and lq > lk:
        assert torch.all(out[..., : lq - lk, :] == 0)  # these queries see no key


def test_matches_torch_lower_right_bias(rng) -> None:  # noqa: ANN001
    from torch.nn.attention.bias import causal_lower_right

    q, k, v = _inputs(rng, (2, 3), (2, 3), 6, 15)
    ours = dense_torch.sdpa_torch(q, k, v, scale=0.3, causal=True)
    theirs = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(6, 15), scale=0.3)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask_shape", [(14,), (10, 14), (3, 1, 14), (2, 3, 10, 14), (10, 1)])
def test_bool_masks_with_fully_masked_rows(rng, causal, mask_shape) -> None:  # noqa: ANN001
    q, k, v = _inputs(rng, (2, 3), (2, 3), 10, 14)
    mask = torch.from_numpy(rng.random(mask_shape) > 0.4)
    if len(mask_shape) >= 2 and mask_shape[-2] == 10:
        mask[..., 2, :] = False
    out = _check(q, k, v, mask=mask, causal=causal)
    if len(mask_shape) >= 2 and mask_shape[-2] == 10:
        assert torch.all(out[..., 2, :] == 0)


@pytest.mark.parametrize("causal", [False, True])
def test_float_masks_with_fully_masked_rows(rng, causal) -> None:  # noqa: ANN001
    q, k, v = _inputs(rng, (2,), (2,), 9, 13)
    bias = torch.from_numpy(rng.standard_normal((2, 9, 13))).float()
    bias[rng.random((2, 9, 13)) < 0.3] = -math.inf
    bias[1, 4] = -math.inf
    out = _check(q, k, v, mask=bias, causal=causal)
    assert torch.all(out[1, 4] == 0)


def test_causal_hides_every_key_for_early_rows_with_mask(rng) -> None:  # noqa: ANN001
    q, k, v = _inputs(rng, (2,), (2,), 12, 5)
    _check(q, k, v, mask=torch.ones(12, 5, dtype=torch.bool), causal=True)


def test_broadcast_batches(rng) -> None:  # noqa: ANN001
    q, _, _ = _inputs(rng, (2, 3), (2, 3), 6, 8)
    _, k, v = _inputs(rng, (1, 3), (1, 3), 6, 8)
    _check(q, k, v)
    _check(q, k, v, causal=True, mask=torch.from_numpy(rng.random((6, 8)) > 0.3))


def test_gradients_finite_and_match_generic_with_masked_rows(rng) -> None:  # noqa: ANN001
    q, k, v = (t.double().requires_grad_(True) for t in _inputs(rng, (2,), (2,), 7, 9))
    mask = torch.from_numpy(rng.random((7, 9)) > 0.3)
    mask[3] = False
    out = dense_torch.sdpa_torch(q, k, v, scale=0.4, mask=mask, causal=True)
    w = torch.from_numpy(rng.standard_normal(out.shape))
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    gen = sdpa_generic(q, k, v, xp=_xp(), scale=0.4, mask=mask, causal=True)
    ref_grads = torch.autograd.grad((gen * w).sum(), (q, k, v))
    for g, r in zip(grads, ref_grads, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-10)


def test_dispatch_goes_to_torch(rng, monkeypatch) -> None:  # noqa: ANN001
    q, k, v = _inputs(rng, (2, 3), (2, 3), 10, 10)
    calls = []
    real = dense_torch.sdpa_torch
    monkeypatch.setattr(dense_torch, "sdpa_torch", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    out = sdpa(q, k, v, xp=_xp(), scale=0.3, causal=True)
    assert calls
    assert rel_err(out, ref_attention(to_np(q), to_np(k), to_np(v), None, True, 0.3)) <= TOL32
    calls.clear()
    sdpa(q, k, v, xp=_xp(), scale=0.3, backend="generic")
    assert not calls


def test_flash_attention_with_torch_tensors(rng) -> None:  # noqa: ANN001
    """The public class: torch in, torch out, same numbers as the NumPy path."""
    from attnkit import FlashAttention

    x = rng.standard_normal((2, 20, 4, 8)).astype(np.float32)
    mask = rng.random((4, 20, 20)) > 0.3
    mask[:, 5] = False
    with FlashAttention(heads=4, dim=8, causal=True) as fa:
        a = fa.forward(torch.from_numpy(x), mask=torch.from_numpy(mask))
        b = fa.forward(x, mask=mask)
    assert isinstance(a, torch.Tensor)
    assert rel_err(a, b) <= TOL32
