"""``Pipeline``: attention, normalisation, dropout, residuals and custom stages, run for real.

Stages run in the order they were added, on any array-API array (NumPy by default):

- ``add_norm("layer")``: ``(x - mean) / sqrt(var + eps) * weight + bias`` over the last ``axes``
  axes (Ba et al. 2016); ``add_norm("rms")``: ``x / sqrt(mean(x^2) + eps) * weight`` (Zhang &
  Sennrich 2019). ``var`` is the biased variance, as in ``torch.nn.LayerNorm``.
- ``add_attention(mech)``: ``mech.forward(x, mask=mask)`` (self-attention), or
  ``mech.forward(x, context, context, mask=mask)`` when :meth:`Pipeline.run` is given a ``context``.
- ``add_dropout(p)``: inverted dropout, only in training mode: ``x * keep / (1 - p)`` with
  ``keep = rng.random(x.shape) >= p`` drawn from the pipeline's ``numpy.random.default_rng(seed)``.
- ``add_residual(norm=None)``: ``x = block_input + x``, then ``x = norm(x)`` if ``norm`` is given
  (post-norm). A *block* starts at the pipeline's input and again after every residual stage, so
  ``block_input`` is the activation there.
- ``add_custom(fn)``: ``x = fn(x)``.
- ``add_feed_forward(dim, hidden)``: ``W2 act(W1 x + b1) + b2`` (:class:`FeedForward`).

Transformer blocks (Vaswani et al. 2017; Xiong et al. 2020 for the pre-norm form):

- pre-norm  (``norm_first=True``):  ``x = x + drop(attn(norm1(x)))``; ``x = x + drop(ffn(norm2(x)))``
- post-norm (``norm_first=False``): ``x = norm1(x + drop(attn(x)))``; ``x = norm2(x + drop(ffn(x)))``

``train()`` switches dropout on for the pipeline and every attention stage's mechanism; ``eval()``
switches it off.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import array_api_compat
import numpy as np

from .._array import Array, as_float_array, namespace, non_negative_int, one_of, positive_float, positive_int, probability
from ..errors import ConfigError, ShapeError
from ..kernels.norm import ACTIVATIONS, NORMS, feed_forward, layer_norm, rms_norm

__all__ = ["Pipeline", "FeedForward", "layer_norm", "rms_norm"]

_NORMS = NORMS
_ACTIVATIONS = ACTIVATIONS


def _like(arr: np.ndarray | None, x: Array) -> Array | None:
    """``arr`` in the library, device and dtype of ``x``."""
    if arr is None:
        return None
    if isinstance(x, np.ndarray):
        return arr.astype(x.dtype, copy=False)
    xp = namespace(x)
    return xp.asarray(arr, dtype=x.dtype, device=array_api_compat.device(x))


class FeedForward:
    """The position-wise feed-forward layer ``W2 act(W1 x + b1) + b2`` of a transformer block.

    ``dim`` in and out, ``hidden`` (default ``4 * dim``) in the middle, ``activation`` one of
    ``gelu`` (the tanh form of Hendrycks & Gimpel 2016), ``relu``, ``silu``. Weights are drawn
    Glorot-uniform from ``numpy.random.default_rng(seed)``, biases are zero; ``w1: (dim, hidden)``,
    ``w2: (hidden, dim)``, so ``x @ w1`` maps the last axis.
    """

    def __init__(self, dim: int, hidden: int | None = None, activation: str = "gelu", seed: int | None = None) -> None:
        self.dim = positive_int(dim, "dim")
        self.hidden = positive_int(4 * self.dim if hidden is None else hidden, "hidden")
        self.activation = one_of(activation, "activation", _ACTIVATIONS)
        rng = np.random.default_rng(seed)
        lim = math.sqrt(6.0 / (self.dim + self.hidden))
        self.w1 = rng.uniform(-lim, lim, (self.dim, self.hidden))
        self.b1 = np.zeros(self.hidden)
        self.w2 = rng.uniform(-lim, lim, (self.hidden, self.dim))
        self.b2 = np.zeros(self.dim)

    def __call__(self, x: Array) -> Array:
        x = as_float_array(x, "x")
        if x.shape[-1] != self.dim:
            raise ShapeError(f"x: expected last axis = dim = {self.dim}, got shape {tuple(x.shape)}")
        return feed_forward(x, _like(self.w1, x), _like(self.b1, x), _like(self.w2, x), _like(self.b2, x), self.activation)

    def __repr__(self) -> str:
        return f"FeedForward(dim={self.dim}, hidden={self.hidden}, activation={self.activation!r})"


class _Stage:
    kind = ""

    def describe(self) -> str:  # pragma: no cover - overridden
        return self.kind


class _Norm(_Stage):
    kind = "norm"

    def __init__(self, norm: str, eps: float, axes: int, weight: Any, bias: Any) -> None:
        self.norm = one_of(norm, "norm", _NORMS)
        self.eps = positive_float(eps, "eps")
        self.axes = positive_int(axes, "axes")
        self.weight = None if weight is None else np.asarray(as_float_array(weight, "weight"))
        self.bias = None if bias is None else np.asarray(as_float_array(bias, "bias"))
        if self.norm == "rms" and bias is not None:
            raise ConfigError("bias: RMS normalisation has no bias; pass weight only")

    def __call__(self, x: Array) -> Array:
        if self.norm == "rms":
            return rms_norm(x, eps=self.eps, axes=self.axes, weight=_like(self.weight, x))
        return layer_norm(x, eps=self.eps, axes=self.axes, weight=_like(self.weight, x), bias=_like(self.bias, x))

    def describe(self) -> str:
        return f"norm({self.norm!r}, eps={self.eps}, axes={self.axes})"


class Pipeline:
    """A sequence of stages run by :meth:`run` (see the module docstring for each stage's formula).

    ``Pipeline(seed=0).add_norm("layer").add_attention(mech).add_dropout(0.1).add_residual()`` is a
    pre-norm attention block. ``seed`` seeds the dropout stages' shared generator.
    """

    def __init__(self, seed: int | None = None) -> None:
        self._stages: list[tuple[str, Any]] = []
        self.seed = None if seed is None else non_negative_int(seed, "seed")
        self._rng = np.random.default_rng(self.seed)
        self.training = False

    # ---------------------------------------------------------------- stages
    def add_norm(self, norm: str = "layer", *, eps: float = 1e-5, axes: int = 1, weight: Any = None, bias: Any = None) -> Pipeline:
        """Layer (``"layer"``) or RMS (``"rms"``) normalisation over the last ``axes`` axes.

        ``axes=2`` normalises a head layout ``(..., L, H, D)`` over the whole model width ``H*D``.
        ``weight``/``bias`` are the optional affine parameters (shape of the normalised axes).
        """
        self._stages.append(("norm", _Norm(norm, eps, axes, weight, bias)))
        return self

    def add_attention(self, mechanism: Any) -> Pipeline:
        """An attention stage: a mechanism (anything with ``forward``) or a builder (built now)."""
        if hasattr(mechanism, "build") and not hasattr(mechanism, "forward"):
            mechanism = mechanism.build()
        if not callable(getattr(mechanism, "forward", None)):
            raise ConfigError(f"mechanism: expected an attention mechanism or builder, got {type(mechanism).__name__}")
        self._stages.append(("attention", mechanism))
        return self

    def add_dropout(self, p: float) -> Pipeline:
        """Inverted dropout with probability ``p`` in [0, 1), applied only in training mode."""
        self._stages.append(("dropout", probability(p, "p")))
        return self

    def add_residual(self, norm: str | None = None, *, eps: float = 1e-5, axes: int = 1) -> Pipeline:
        """``x = block_input + x`` (then ``norm(x)`` if ``norm`` is ``"layer"``/``"rms"``: post-norm); a new block starts."""
        post = None if norm is None else _Norm(norm, eps, axes, None, None)
        self._stages.append(("residual", post))
        return self

    def add_custom(self, fn: Callable[[Array], Array], name: str | None = None) -> Pipeline:
        """``x = fn(x)``: any function of the activations."""
        if not callable(fn):
            raise ConfigError(f"fn: expected a callable, got {type(fn).__name__}")
        self._stages.append(("custom", (fn, name or getattr(fn, "__name__", type(fn).__name__))))
        return self

    def add_feed_forward(self, dim: int, hidden: int | None = None, activation: str = "gelu", seed: int | None = None) -> Pipeline:
        """A :class:`FeedForward` stage (``W2 act(W1 x + b1) + b2``)."""
        ff = FeedForward(dim, hidden, activation, seed)
        self._stages.append(("custom", (ff, repr(ff))))
        return self

    def add_transformer_block(
        self,
        attention: Any,
        *,
        norm: str = "layer",
        norm_first: bool = True,
        dropout: float = 0.0,
        feed_forward: Callable[[Array], Array] | None = None,
        eps: float = 1e-5,
        axes: int = 1,
    ) -> Pipeline:
        """A transformer block: attention (and ``feed_forward``, if given) sub-blocks with residuals.

        ``norm_first=True`` (pre-norm): ``x + drop(f(norm(x)))``; ``False`` (post-norm):
        ``norm(x + drop(f(x)))``, for ``f`` the attention, then the feed-forward layer.
        """
        if not isinstance(norm_first, bool):
            raise ConfigError(f"norm_first: expected true or false, got {norm_first!r}")
        subs: list[tuple[str, Any]] = [("attention", attention)]
        if feed_forward is not None:
            subs.append(("custom", feed_forward))
        for kind, f in subs:
            if norm_first:
                self.add_norm(norm, eps=eps, axes=axes)
            self.add_attention(f) if kind == "attention" else self.add_custom(f)
            if dropout:
                self.add_dropout(dropout)
            self.add_residual(None if norm_first else norm, eps=eps, axes=axes)
        return self

    def add_pre_norm_block(self, attention: Any, **kwargs: Any) -> Pipeline:
        """:meth:`add_transformer_block` with ``norm_first=True``."""
        return self.add_transformer_block(attention, norm_first=True, **kwargs)

    def add_post_norm_block(self, attention: Any, **kwargs: Any) -> Pipeline:
        """:meth:`add_transformer_block` with ``norm_first=False``."""
        return self.add_transformer_block(attention, norm_first=False, **kwargs)

    # ---------------------------------------------------------------- modes and description
    def train(self, mode: bool = True) -> Pipeline:
        """Dropout on (``mode=True``) or off, for this pipeline and its attention mechanisms."""
        self.training = bool(mode)
        for kind, stage in self._stages:
            if kind == "attention" and hasattr(stage, "train"):
                stage.train(self.training)
        return self

    def eval(self) -> Pipeline:
        return self.train(False)

    def reseed(self, seed: int | None = None) -> Pipeline:
        """Restart the dropout generator from ``seed`` (default: the constructor's seed)."""
        self._rng = np.random.default_rng(self.seed if seed is None else non_negative_int(seed, "seed"))
        return self

    @property
    def stages(self) -> list[str]:
        """One line per stage, in order."""
        out = []
        for kind, stage in self._stages:
            if kind == "norm":
                out.append(stage.describe())
            elif kind == "attention":
                out.append(f"attention({stage!r})")
            elif kind == "dropout":
                out.append(f"dropout({stage})")
            elif kind == "residual":
                out.append("residual()" if stage is None else f"residual(then {stage.describe()})")
            else:
                out.append(f"custom({stage[1]})")
        return out

    def __len__(self) -> int:
        return len(self._stages)

    def __repr__(self) -> str:
        return "Pipeline(" + " -> ".join(self.stages) + ")"

    def dispose(self) -> None:
        """Dispose every attention stage's mechanism."""
        for kind, stage in self._stages:
            if kind == "attention" and hasattr(stage, "dispose"):
                stage.dispose()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()

    # ---------------------------------------------------------------- running
    def run(self, x: Any, *, mask: Any = None, context: Any = None) -> Array:
        """Run every stage on ``x``; attention stages get ``mask`` and attend to ``context`` if given."""
        if not self._stages:
            raise ConfigError("pipeline: no stages; add some with add_attention, add_norm, ...")
        x = as_float_array(x, "x")
        block_input = x
        for kind, stage in self._stages:
            if kind == "norm":
                x = stage(x)
            elif kind == "attention":
                x = stage.forward(x, mask=mask) if context is None else stage.forward(x, context, context, mask=mask)
            elif kind == "dropout":
                if self.training and stage > 0.0:
                    keep = (self._rng.random(tuple(x.shape)) >= stage).astype(np.float64) / (1.0 - stage)
                    x = x * _like(keep, x)
            elif kind == "residual":
                if tuple(x.shape) != tuple(block_input.shape):
                    raise ShapeError(
                        f"x: the residual adds the block input of shape {tuple(block_input.shape)} to activations of shape {tuple(x.shape)}"
                    )
                x = block_input + x
                if stage is not None:
                    x = stage(x)
                block_input = x
            else:
                x = stage[0](x)
        return x

    __call__ = run

    async def run_async(self, x: Any, *, mask: Any = None, context: Any = None) -> Array:
        """:meth:`run` on a worker thread, off the event loop."""
        import asyncio

        return await asyncio.get_running_loop().run_in_executor(None, lambda: self.run(x, mask=mask, context=context))
