"""Normalisation and the position-wise feed-forward map of a transformer block: stateless math.

- :func:`layer_norm`: ``(x - mean) / sqrt(var + eps) * weight + bias`` over the last ``axes`` axes,
  with the biased variance as in ``torch.nn.LayerNorm`` (Ba, Kiros & Hinton 2016, "Layer
  Normalization", arXiv:1607.06450).
- :func:`rms_norm`: ``x / sqrt(mean(x^2) + eps) * weight`` (Zhang & Sennrich 2019, "Root Mean Square
  Layer Normalization", NeurIPS).
- :func:`feed_forward`: ``act(x W1 + b1) W2 + b2`` (Vaswani et al. 2017, "Attention Is All You Need",
  section 3.3), with ``act`` one of :data:`ACTIVATIONS`: ``gelu`` in the tanh form of Hendrycks &
  Gimpel 2016 (arXiv:1606.08415), ``relu``, ``silu`` (``h * sigmoid(h)``, Elfwing et al. 2018).

Every function takes and returns arrays of any array-API library; parameters must already be in the
input's library, device and dtype (:class:`attnkit.sdk.Pipeline` and :class:`attnkit.sdk.FeedForward`
see to that).
"""

from __future__ import annotations

import math
from typing import Any

from .._array import Array, namespace
from ..errors import ShapeError

__all__ = ["layer_norm", "rms_norm", "feed_forward", "activation", "ACTIVATIONS", "NORMS"]

#: the normalisations by name
NORMS = ("layer", "rms")
#: the feed-forward activations by name
ACTIVATIONS = ("gelu", "relu", "silu")


def _axes(x: Array, axes: int) -> tuple[int, ...]:
    if x.ndim < axes:
        raise ShapeError(f"x: normalising over the last {axes} axes needs at least {axes} dimensions, got shape {tuple(x.shape)}")
    return tuple(range(-axes, 0))


def layer_norm(x: Array, *, eps: float = 1e-5, axes: int = 1, weight: Array | None = None, bias: Array | None = None) -> Array:
    """Layer normalisation over the last ``axes`` axes (Ba, Kiros & Hinton 2016)."""
    xp = namespace(x)
    ax = _axes(x, axes)
    mean = xp.mean(x, axis=ax, keepdims=True)
    centred = x - mean
    var = xp.mean(centred * centred, axis=ax, keepdims=True)
    out = centred / xp.sqrt(var + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


def rms_norm(x: Array, *, eps: float = 1e-5, axes: int = 1, weight: Array | None = None) -> Array:
    """Root-mean-square normalisation over the last ``axes`` axes (Zhang & Sennrich 2019)."""
    xp = namespace(x)
    ax = _axes(x, axes)
    out = x / xp.sqrt(xp.mean(x * x, axis=ax, keepdims=True) + eps)
    return out if weight is None else out * weight


def activation(h: Array, name: str, xp: Any = None) -> Array:
    """``relu(h) = max(h, 0)``; ``silu(h) = h / (1 + exp(-h))``;
    ``gelu(h) = h/2 (1 + tanh(sqrt(2/pi) (h + 0.044715 h^3)))`` (the tanh form)."""
    xp = namespace(h) if xp is None else xp
    if name == "relu":
        return xp.maximum(h, xp.zeros_like(h))
    if name == "silu":
        return h / (1.0 + xp.exp(-h))
    if name == "gelu":
        return 0.5 * h * (1.0 + xp.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * h * h * h)))
    raise ValueError(f"activation: expected one of {', '.join(ACTIVATIONS)}, got {name!r}")


def feed_forward(x: Array, w1: Array, b1: Array, w2: Array, b2: Array, act: str = "gelu") -> Array:
    """The position-wise feed-forward map ``act(x @ w1 + b1) @ w2 + b2`` on the last axis of ``x``
    (``w1: (dim, hidden)``, ``w2: (hidden, dim)``)."""
    xp = namespace(x)
    return activation(x @ w1 + b1, act, xp) @ w2 + b2
