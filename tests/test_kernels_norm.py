"""kernels.norm: layer_norm, rms_norm and feed_forward against torch's own, in float64."""

from __future__ import annotations

import numpy as np
import pytest

from attnkit.kernels import norm

torch = pytest.importorskip("torch")
F = torch.nn.functional


@pytest.mark.parametrize("axes", [1, 2])
def test_norms_match_torch(axes: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 6)) * 3 + 1
    shape = x.shape[-axes:]
    w, b = rng.standard_normal(shape), rng.standard_normal(shape)
    tx, tw, tb = (torch.from_numpy(a) for a in (x, w, b))
    np.testing.assert_allclose(
        norm.layer_norm(x, eps=1e-5, axes=axes, weight=w, bias=b), F.layer_norm(tx, shape, tw, tb, eps=1e-5).numpy(), rtol=1e-12, atol=1e-12
    )
    np.testing.assert_allclose(norm.rms_norm(x, eps=1e-6, axes=axes, weight=w), F.rms_norm(tx, shape, tw, eps=1e-6).numpy(), rtol=1e-12, atol=1e-12)
    # the same function on torch tensors, in torch
    got = norm.layer_norm(tx, axes=axes, weight=tw, bias=tb)
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), F.layer_norm(tx, shape, tw, tb).numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("name", "ref"), [("gelu", lambda h: F.gelu(h, approximate="tanh")), ("relu", F.relu), ("silu", F.silu)])
def test_feed_forward_matches_torch(name: str, ref) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 6))
    w1, b1, w2, b2 = rng.standard_normal((6, 10)), rng.standard_normal(10), rng.standard_normal((10, 6)), rng.standard_normal(6)
    t = [torch.from_numpy(a) for a in (x, w1, b1, w2, b2)]
    expected = (ref(t[0] @ t[1] + t[2]) @ t[3] + t[4]).numpy()
    np.testing.assert_allclose(norm.feed_forward(x, w1, b1, w2, b2, name), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="activation"):
        norm.activation(x, "tanh")
