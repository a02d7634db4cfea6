"""Property tests (hypothesis) for invariants of exact attention.

Shapes, seeds, magnitudes and masks are drawn by hypothesis; array values come from a NumPy
generator seeded by the drawn seed (fast, and still shrinkable through the seed).
"""

from __future__ import annotations

import numpy as np
from conftest import TOL64, assert_close, lower_right_mask, ref_seq_attention
from hypothesis import given
from hypothesis import strategies as st

from attnkit import FlashAttention, MultiHeadAttention, ScaledDotProduct

seeds = st.integers(0, 2**32 - 1)
lengths = st.integers(1, 12)
magnitudes = st.sampled_from([1e-3, 1.0, 10.0, 300.0])


def arrays(seed, mag, *shapes):
    g = np.random.default_rng(seed)
    return [g.standard_normal(s) * mag for s in shapes]


def bool_mask(seed, shape, p_keep):
    return np.random.default_rng(seed + 1).random(shape) < p_keep


# ------------------------------------------------------------------ rows of weights sum to 1 (or 0)


@given(
    seed=seeds,
    lq=lengths,
    lk=lengths,
    h=st.integers(1, 3),
    d=st.integers(1, 6),
    mag=magnitudes,
    p_keep=st.sampled_from([0.0, 0.3, 1.0]),
    causal=st.booleans(),
)
def test_flash_scores_rows_sum_to_one_or_zero(seed, lq, lk, h, d, mag, p_keep, causal):
    q, k = arrays(seed, mag, (lq, h, d), (lk, h, d))
    mask = bool_mask(seed, (h, lq, lk), p_keep)
    w = FlashAttention(heads=h, dim=d, causal=causal).attention_scores(q, k, mask=mask)
    assert w.shape == (h, lq, lk) and np.isfinite(w).all() and (w >= 0).all()
    seen = mask & lower_right_mask(lq, lk) if causal else mask
    sums = w.sum(-1)
    np.testing.assert_allclose(sums, np.where(seen.any(-1), 1.0, 0.0), atol=1e-12)
    assert (w[~seen] == 0).all()  # nothing leaks to hidden keys


@given(seed=seeds, n=st.integers(1, 5), kk=st.integers(1, 10), d=st.integers(1, 6), mag=magnitudes, p_keep=st.sampled_from([0.0, 0.5, 1.0]))
def test_neighbour_weights_rows_sum_to_one_or_zero(seed, n, kk, d, mag, p_keep):
    q, k = arrays(seed, mag, (n, d), (n, kk, d))
    mask = bool_mask(seed, (n, kk), p_keep)
    w = ScaledDotProduct(d).attention_weights(q, k, mask=mask)
    assert np.isfinite(w).all() and (w >= 0).all()
    np.testing.assert_allclose(w.sum(-1), np.where(mask.any(-1), 1.0, 0.0), atol=1e-12)


@given(seed=seeds, lq=lengths, lk=lengths, h=st.sampled_from([1, 2, 4]), causal=st.booleans())
def test_mha_weights_rows_sum_to_one_or_zero(seed, lq, lk, h, causal):
    x, mem = arrays(seed, 1.0, (lq, 8), (lk, 8))
    mha = MultiHeadAttention(8, heads=h, causal=causal, seed=seed % 1000)
    mha.forward(x, mem)
    w = mha.get_attention_weights()
    seen = lower_right_mask(lq, lk) if causal else np.ones((lq, lk), dtype=bool)
    np.testing.assert_allclose(w.sum(-1), np.broadcast_to(seen.any(-1), (h, lq)).astype(float), atol=1e-12)


# ------------------------------------------------------------------ permuting keys and values together


@given(seed=seeds, lq=lengths, lk=lengths, h=st.integers(1, 3), d=st.integers(1, 5), mag=magnitudes, block=st.integers(1, 8), masked=st.booleans())
def test_flash_key_permutation_invariance(seed, lq, lk, h, d, mag, block, masked):
    q, k, v = arrays(seed, mag, (lq, h, d), (lk, h, d), (lk, h, d))
    mask = bool_mask(seed, (h, lq, lk), 0.6) if masked else None
    perm = np.random.default_rng(seed + 2).permutation(lk)
    f = FlashAttention(heads=h, dim=d, block_size=block)
    a = f.forward(q, k, v, mask=mask)
    b = f.forward(q, k[perm], v[perm], mask=None if mask is None else mask[..., perm])
    assert_close(b, a, TOL64)
    assert_close(a, ref_seq_attention(q, k, v, mask=mask), TOL64)


@given(seed=seeds, kk=st.integers(1, 10), d=st.integers(1, 5), mag=magnitudes)
def test_neighbour_key_permutation_invariance(seed, kk, d, mag):
    q, k, v = arrays(seed, mag, (3, d), (3, kk, d), (3, kk, 2))
    perm = np.random.default_rng(seed + 2).permutation(kk)
    sdp = ScaledDotProduct(d)
    assert_close(sdp.forward(q, k[:, perm], v[:, perm]), sdp.forward(q, k, v), TOL64)


@given(seed=seeds, lq=lengths, lk=lengths)
def test_mha_key_permutation_invariance(seed, lq, lk):
    x, mem = arrays(seed, 1.0, (lq, 8), (lk, 8))
    perm = np.random.default_rng(seed + 2).permutation(lk)
    mha = MultiHeadAttention(8, heads=2, seed=1)
    assert_close(mha.forward(x, mem[perm]), mha.forward(x, mem), TOL64)


# ------------------------------------------------------------------ causal flag == explicit lower-right mask


@given(seed=seeds, lq=lengths, lk=lengths, h=st.integers(1, 3), d=st.integers(1, 5), block=st.integers(1, 8), simd=st.booleans())
def test_flash_causal_flag_equals_lower_right_mask(seed, lq, lk, h, d, block, simd):
    q, k, v = arrays(seed, 1.0, (lq, h, d), (lk, h, d), (lk, h, d))
    a = FlashAttention(heads=h, dim=d, block_size=block, causal=True, simd=simd).forward(q, k, v)
    b = FlashAttention(heads=h, dim=d, block_size=block, simd=simd).forward(q, k, v, mask=lower_right_mask(lq, lk))
    assert_close(a, b, TOL64)
    assert np.isfinite(a).all()


@given(seed=seeds, lq=lengths, lk=lengths)
def test_mha_causal_flag_equals_lower_right_mask(seed, lq, lk):
    x, mem = arrays(seed, 1.0, (lq, 8), (lk, 8))
    a = MultiHeadAttention(8, heads=2, causal=True, seed=3).forward(x, mem)
    b = MultiHeadAttention(8, heads=2, seed=3).forward(x, mem, mask=lower_right_mask(lq, lk))
    assert_close(a, b, TOL64)


# ------------------------------------------------------------------ a single query == its row of a batch


@given(seed=seeds, lq=lengths, lk=lengths, h=st.integers(1, 3), d=st.integers(1, 5), block=st.integers(1, 8), causal=st.booleans())
def test_flash_single_query_equals_row(seed, lq, lk, h, d, block, causal):
    q, k, v = arrays(seed, 1.0, (lq, h, d), (lk, h, d), (lk, h, d))
    batched = FlashAttention(heads=h, dim=d, block_size=block, causal=causal).forward(q, k, v)
    f = FlashAttention(heads=h, dim=d, block_size=block)
    allowed = lower_right_mask(lq, lk)
    for i in range(lq):
        mask = allowed[i : i + 1] if causal else None  # a lone query is its own bottom row: say which keys it sees
        assert_close(f.forward(q[i : i + 1], k, v, mask=mask), batched[i : i + 1], TOL64)


@given(seed=seeds, n=st.integers(1, 6), kk=st.integers(1, 8), d=st.integers(1, 5), shared=st.booleans())
def test_neighbour_single_query_equals_row(seed, n, kk, d, shared):
    q, k, v = arrays(seed, 1.0, (n, d), (kk, d) if shared else (n, kk, d), (kk, 3) if shared else (n, kk, 3))
    sdp = ScaledDotProduct(d)
    batched = sdp.forward(q, k, v)
    for i in range(n):
        out = sdp.forward(q[i], k if shared else k[i], v if shared else v[i])
        assert out.shape == (3,)
        assert_close(out, batched[i], TOL64)


# ------------------------------------------------------------------ forward_batch == per-item forwards


@given(seed=seeds, n=st.integers(1, 4), lk=lengths, shared=st.booleans())
def test_forward_batch_equals_forwards(seed, n, lk, shared):
    g = np.random.default_rng(seed)
    lqs = g.integers(1, 6, size=n)
    qs = [g.standard_normal((int(lq), 2, 4)) for lq in lqs]
    ks = g.standard_normal((lk, 2, 4)) if shared else [g.standard_normal((lk, 2, 4)) for _ in range(n)]
    vs = g.standard_normal((lk, 2, 4)) if shared else [g.standard_normal((lk, 2, 4)) for _ in range(n)]
    f = FlashAttention(heads=2, dim=4)
    outs = f.forward_batch(qs, ks, vs)
    assert isinstance(outs, list) and len(outs) == n
    for i in range(n):
        ki, vi = (ks, vs) if shared else (ks[i], vs[i])
        np.testing.assert_array_equal(outs[i], f.forward(qs[i], ki, vi))

    sdp = ScaledDotProduct(4)
    nq = [g.standard_normal(4) for _ in range(n)]
    nk = g.standard_normal((lk, 4)) if shared else [g.standard_normal((lk, 4)) for _ in range(n)]
    nouts = sdp.forward_batch(nq, nk, nk)
    for i in range(n):
        np.testing.assert_array_equal(nouts[i], sdp.forward(nq[i], nk if shared else nk[i], nk if shared else nk[i]))

    mha = MultiHeadAttention(8, heads=2, seed=0)
    mq = [g.standard_normal((int(lq), 8)) for lq in lqs]
    mouts = mha.forward_batch(mq)
    for i in range(n):
        np.testing.assert_array_equal(mouts[i], mha.forward(mq[i]))
