"""``layout="bhsd"`` (torch's SDPA layout) and packed variable-length batches (issue 11).

Oracles: the default ``bshd`` result transposed, torch's ``scaled_dot_product_attention`` on the same
``(B, H, L, D)`` tensors, and for packed batches (FlashAttention-2's ``cu_seqlens`` and torch's jagged
nested tensors) a loop over the sequences with the float64 reference of tests/test_flash_options.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TOL64, assert_close, randn, to_np
from test_flash_options import reference

from attnkit import FlashAttention, LinearAttention, LocalGlobalAttention
from attnkit.errors import ConfigError, ShapeError


def _t(x: np.ndarray) -> np.ndarray:
    return np.swapaxes(x, -3, -2)


@pytest.mark.parametrize(
    "make,hk",
    [
        (lambda **kw: FlashAttention(heads=4, dim=8, causal=True, **kw), 2),
        (lambda **kw: FlashAttention(heads=4, dim=8, window=(3, 2), alibi_slopes=True, rope=True, **kw), 4),
        (lambda **kw: LocalGlobalAttention(heads=4, dim=8, window=5, global_tokens=1, **kw), 2),
        (lambda **kw: LinearAttention(heads=4, dim=8, causal=True, **kw), 1),
    ],
)
def test_bhsd_equals_bshd_transposed(rng: np.random.Generator, make, hk: int) -> None:
    q, k, v = randn(rng, 2, 11, 4, 8), randn(rng, 2, 11, hk, 8), randn(rng, 2, 11, hk, 8)
    expected = make()(q, k, v)
    for arrays in ((q, k, v), tuple(torch.from_numpy(x) for x in (q, k, v))):
        out = make(layout="bhsd")(*(x.transpose(-3, -2) if isinstance(x, torch.Tensor) else _t(x) for x in arrays))
        assert_close(_t(to_np(out)), expected, TOL64)
    # one sequence without a batch dim, (H, L, D), and the flat spec form read as (H, L, D)
    out3 = make(layout="bhsd")(*(_t(x[0]) for x in (q, k, v)))
    assert out3.shape == (4, 11, 8)
    assert_close(_t(out3), expected[0], TOL64)
    flat = make(layout="bhsd")(_t(q[0]).reshape(-1), _t(k[0]).reshape(-1), _t(v[0]).reshape(-1)) if hk == 4 else None
    if flat is not None:
        assert_close(_t(flat.reshape(4, 11, 8)), expected[0], TOL64)


def test_bhsd_matches_torch_sdpa_and_reaches_it_without_copies(monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator) -> None:
    seen: list[torch.Tensor] = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, k, v, **kw: seen.append(q) or real(q, k, v, **kw))
    for hk, causal in ((4, False), (2, True), (1, False)):
        q = torch.from_numpy(randn(rng, 2, 4, 9, 8))
        k, v = torch.from_numpy(randn(rng, 2, hk, 9, 8)), torch.from_numpy(randn(rng, 2, hk, 9, 8))
        expected = real(q, k, v, is_causal=causal, enable_gqa=hk != 4)
        seen.clear()
        out = FlashAttention(heads=4, dim=8, causal=causal, layout="bhsd")(q, k, v)
        assert_close(to_np(out), to_np(expected), TOL64)
        assert len(seen) == 1 and seen[0].data_ptr() == q.data_ptr() and seen[0].stride() == q.stride()  # the caller's tensor, as is
        seen.clear()
        out3 = FlashAttention(heads=4, dim=8, causal=causal, layout="bhsd")(q[1], k[1], v[1])  # (H, L, D)
        assert_close(to_np(out3), to_np(expected[1]), TOL64)
        assert len(seen) == 1 and seen[0].ndim == 4 and seen[0].data_ptr() == q[1].data_ptr()  # a 4-D view, the fused kernel


def test_layout_errors_name_the_option_and_the_layout(rng: np.random.Generator) -> None:
    with pytest.raises(ConfigError, match=r"^layout: expected one of 'bshd', 'bhsd', got 'bsh'"):
        FlashAttention(heads=4, dim=8, layout="bsh")
    with pytest.raises(ShapeError, match=r"query: expected H = heads = 4 along axis -3 \(layout 'bhsd'\)"):
        FlashAttention(heads=4, dim=8, layout="bhsd")(randn(rng, 2, 9, 4, 8))
    assert FlashAttention(heads=4, dim=8, layout="BHSD").layout == "bhsd"
    assert LinearAttention(dim=8, heads=4, layout="bhsd").example_inputs(5)[0].shape == (4, 5, 8)


# ---------------------------------------------------------------------------------------------- varlen


def _packed(rng: np.random.Generator, lens_q: list[int], lens_k: list[int], h: int, hk: int, d: int) -> tuple[np.ndarray, ...]:
    cq, ck = np.concatenate([[0], np.cumsum(lens_q)]), np.concatenate([[0], np.cumsum(lens_k)])
    return randn(rng, int(cq[-1]), h, d), randn(rng, int(ck[-1]), hk, d), randn(rng, int(ck[-1]), hk, d), cq, ck


def _loop(q, k, v, cq, ck, **opts) -> np.ndarray:  # noqa: ANN001
    outs = []
    for i in range(len(cq) - 1):
        qi, ki, vi = q[cq[i] : cq[i + 1]], k[ck[i] : ck[i + 1]], v[ck[i] : ck[i + 1]]
        outs.append(reference(qi, ki, vi, **opts)[1] if len(ki) else np.zeros((len(qi), q.shape[1], v.shape[2])))
    return np.concatenate(outs)


@pytest.mark.parametrize(
    "opts",
    [dict(), dict(causal=True), dict(causal=True, window=(3, 0)), dict(window=(2, 4), slopes=np.array([0.5, 0.25, 0.125, 0.0625]), softcap=3.0)],
)
def test_cu_seqlens_equal_a_loop_over_sequences(rng: np.random.Generator, opts: dict) -> None:
    lens_q, lens_k = [3, 0, 7, 5, 2], [4, 2, 7, 9, 0]  # Lq != Lk, an empty query sequence, a sequence with no keys
    q, k, v, cq, ck = _packed(rng, lens_q, lens_k, 4, 2, 8)
    expected = _loop(q, k, v, cq, ck, **opts)
    extra = dict(window=opts.get("window"), alibi_slopes=opts.get("slopes"), softcap=opts.get("softcap"))
    fa = FlashAttention(heads=4, dim=8, causal=opts.get("causal", False), **extra)
    out = fa(q, k, v, cu_seqlens_q=cq, cu_seqlens_k=ck, max_seqlen_q=7, max_seqlen_k=9)
    assert out.shape == q.shape
    assert_close(out, expected, TOL64)
    qt, kt, vt = (torch.from_numpy(x).requires_grad_(True) for x in (q, k, v))
    out_t = fa(qt, kt, vt, cu_seqlens_q=torch.tensor(cq, dtype=torch.int32), cu_seqlens_k=torch.tensor(ck, dtype=torch.int32))
    assert_close(to_np(out_t.detach()), expected, TOL64)
    out_t.sum().backward()
    assert qt.grad is not None and np.isfinite(to_np(qt.grad)).all()


def test_cu_seqlens_self_attention_and_rope_restart_per_sequence(rng: np.random.Generator) -> None:
    """One offsets array serves both sides; rotary positions restart at 0 in each sequence (a loop over them)."""
    q, _, _, cq, _ = _packed(rng, [5, 8, 3], [5, 8, 3], 2, 2, 8)
    fa = FlashAttention(heads=2, dim=8, causal=True, rope=True)
    expected = np.concatenate([fa(q[cq[i] : cq[i + 1]]) for i in range(3)])
    assert_close(fa(q, cu_seqlens_q=cq), expected, TOL64)
    assert_close(fa(q, q, q, cu_seqlens_k=list(cq)), expected, TOL64)


def test_nested_jagged_tensors_in_and_out(rng: np.random.Generator) -> None:
    lens_q, lens_k = [3, 7, 5], [4, 7, 9]
    q, k, v, cq, ck = _packed(rng, lens_q, lens_k, 4, 2, 8)
    expected = _loop(q, k, v, cq, ck, causal=True)

    def nest(x: np.ndarray, c: np.ndarray) -> torch.Tensor:
        return torch.nested.nested_tensor([torch.from_numpy(x[c[i] : c[i + 1]]) for i in range(len(c) - 1)], layout=torch.jagged)

    nq, nk, nv = nest(q, cq), nest(k, ck), nest(v, ck)
    out = FlashAttention(heads=4, dim=8, causal=True)(nq, nk, nv)
    assert out.is_nested and out.layout == torch.jagged and out.size(0) == 3
    assert_close(to_np(out.values()), expected, TOL64)
    for i, piece in enumerate(out.unbind()):
        assert_close(to_np(piece), expected[cq[i] : cq[i + 1]], TOL64)
    out_b = FlashAttention(heads=4, dim=8, causal=True, layout="bhsd")(nq.transpose(1, 2), nk.transpose(1, 2), nv.transpose(1, 2))
    assert_close(to_np(out_b.transpose(1, 2).values()), expected, TOL64)
    strided = torch.nested.nested_tensor([torch.from_numpy(q[:3]), torch.from_numpy(q[3:10])])
    with pytest.raises(ConfigError, match=r"^query: expected a nested tensor of layout torch.jagged"):
        FlashAttention(heads=4, dim=8)(strided)


def test_varlen_bad_inputs(rng: np.random.Generator) -> None:
    q, k, v, cq, ck = _packed(rng, [3, 4], [3, 4], 4, 4, 8)
    fa = FlashAttention(heads=4, dim=8)
    with pytest.raises(ShapeError, match=r"^cu_seqlens_q: expected non-decreasing offsets from 0 to the packed length 7"):
        fa(q, k, v, cu_seqlens_q=[0, 4, 3, 7])
    with pytest.raises(ShapeError, match=r"^cu_seqlens_k: expected non-decreasing offsets from 0 to the packed length 7, got \[0, 3, 8\]"):
        fa(q, k, v, cu_seqlens_q=cq, cu_seqlens_k=[0, 3, 8])
    with pytest.raises(ConfigError, match=r"^cu_seqlens_q: expected a 1-D array of B \+ 1 >= 2 integer offsets"):
        fa(q, k, v, cu_seqlens_q=np.array([0.0, 7.0]))
    with pytest.raises(ConfigError, match=r"^max_seqlen_q: expected an int >= the longest sequence \(4\), got 3"):
        fa(q, k, v, cu_seqlens_q=cq, max_seqlen_q=3)
    with pytest.raises(ShapeError, match=r"^query: packed sequences need a \(total, H, D\) array"):
        fa(q[None], cu_seqlens_q=cq)
    with pytest.raises(ShapeError, match=r"^cu_seqlens_k: expected 2 sequences \(as cu_seqlens_q\), got 1"):
        fa(q, k, v, cu_seqlens_q=cq, cu_seqlens_k=[0, 7])
    with pytest.raises(ConfigError, match=r"^mask: not used with packed sequences"):
        fa(q, k, v, cu_seqlens_q=cq, mask=np.ones((7, 7), bool))


def test_bhsd_empty_batch_and_empty_query(rng: np.random.Generator) -> None:
    fa = FlashAttention(heads=4, dim=8, layout="bhsd")
    assert fa(np.zeros((0, 4, 5, 8))).shape == (0, 4, 5, 8)
    out = fa(np.zeros((2, 4, 0, 8)), randn(rng, 2, 4, 3, 8), randn(rng, 2, 4, 3, 8))
    assert out.shape == (2, 4, 0, 8)
