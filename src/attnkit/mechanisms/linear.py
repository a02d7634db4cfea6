"""LinearAttention: kernelised attention in O(L) time and memory.

    out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / (phi(q_i)^T sum_j phi(k_j) + eps)

(Katharopoulos et al. 2020, "Transformers are RNNs"), with the feature maps ``elu`` (elu + 1),
``relu``, ``dpfp`` (Schlag et al. 2021) and ``favor`` (Performer FAVOR+, Choromanski et al. 2021,
an unbiased estimate of softmax attention with scale ``1/sqrt(D)``). The math, the stabilisation
that keeps features from underflowing and the chunked causal form are documented in
:mod:`attnkit.kernels.linear`.

Inputs follow the sequence layout of DESIGN.md: ``q: (..., Lq, H, D)``, ``k: (..., Lk, H, D)``,
``v: (..., Lk, H, Dv)`` (batch dimensions broadcast), or the spec's flat arrays of length ``L*H*D``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import array_api_compat
import numpy as np

from .._array import Array, as_float_array, broadcast_shapes, is_graph, is_traced, non_negative_int, one_of, positive_float, positive_int, shape_str
from .._array import length as _dim
from ..errors import ConfigError, ShapeError
from ..kernels.gqa import group_keys, group_queries, ungroup
from ..kernels.linear import (
    DEFAULT_CHUNK_SIZE,
    FEATURE_MAPS,
    causal_shard,
    default_nb_features,
    feature_dim,
    key_state,
    linear_attention,
    merge_key_states,
    orthogonal_random_features,
)
from ..kernels.masks import prepare_mask
from ._sequence import SequenceInputs, prepare_sequence
from .base import Mechanism
from .kv_cache import KVCache, as_cache
from .registry import register

__all__ = ["LinearAttention"]

_PROJECTION = "favor_projection"


@register
class LinearAttention(Mechanism):
    """Linear attention over ``heads`` heads of width ``dim`` (the spec's ``WasmLinearAttention``).

    Options: ``dim`` per head (required), ``heads`` (8), ``feature_map`` (``"elu"``, ``"relu"``,
    ``"dpfp"`` or ``"favor"``), ``eps`` (1e-6, > 0, added to the denominator as in the paper; see
    :mod:`attnkit.kernels.linear` for rows whose features are all tiny),
    ``causal`` (False; bottom-right aligned when ``Lq != Lk``), ``nb_features`` (``favor`` only: the
    number m of random features, default ``ceil(D ln D)``, 267 for D = 64), ``nu`` (``dpfp`` only,
    >= 1: feature dimension ``2 * D * nu``), ``seed`` (``favor``: seeds the random projection, which
    is drawn once and kept in :meth:`parameters` so outputs are reproducible; see
    :meth:`redraw_features`), ``chunk_size`` (causal form: rows per chunk, 64), ``check_finite``
    (reject NaN/inf input).

    ``mask`` is a key mask: which keys exist, the same for every query. Accepted shapes: ``(Lk,)``;
    ``(*batch, Lk)`` when the inputs have batch dimensions ``batch`` (like torch's
    ``key_padding_mask``, but True = key present, DESIGN.md's convention), unless the last batch
    dimension equals ``Lq > 1``: such a mask is read as the score layout ``(..., Lq, Lk)`` below
    (pass ``(*batch, 1, 1, Lk)`` then); or any shape that
    broadcasts to ``(*batch, H, 1, Lk)``. A mask of the attention-score layout ``(..., Lq, Lk)`` is
    accepted only if all its query rows are equal (``create_mask("padding", L)`` is). A bool mask
    drops the keys that are False; a float mask is added to ``log phi(k_j)`` (``-inf`` drops the key;
    for ``favor`` it is exactly an additive key bias on the softmax scores). A mask that differs
    between queries (causal, block) cannot be expressed in linear attention and raises
    :class:`~attnkit.errors.ShapeError`; use ``causal=True`` or :class:`~attnkit.FlashAttention`. A
    query with no visible key returns zeros.
    """

    name = "linear"
    summary = "linear attention phi(q) (phi(k)^T v) with elu/relu/dpfp/FAVOR+ feature maps: O(L) time and memory"
    input_layout = "sequence"
    shape_options = {"heads": ("query", -2), "dim": ("query", -1)}
    example_options = {"dim": 4, "heads": 2}

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        feature_map: str = "elu",
        eps: float = 1e-6,
        causal: bool = False,
        nb_features: int | None = None,
        nu: int = 1,
        seed: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        self.dim = positive_int(dim, "dim")
        self.heads = positive_int(heads, "heads")
        self.feature_map = one_of(feature_map, "feature_map", FEATURE_MAPS)
        self.eps = positive_float(eps, "eps")
        self.causal = bool(causal)
        self.nu = positive_int(nu, "nu")
        if self.nu != 1 and self.feature_map != "dpfp":
            raise ConfigError(f"nu: only used by feature_map='dpfp'; got nu={nu!r} with feature_map={self.feature_map!r}")
        if self.feature_map == "favor":
            self.nb_features: int | None = default_nb_features(self.dim) if nb_features is None else positive_int(nb_features, "nb_features")
        else:
            if nb_features is not None:
                raise ConfigError(
                    f"nb_features: only used by feature_map='favor'; got nb_features={nb_features!r} with feature_map={self.feature_map!r}"
                )
            self.nb_features = None
        self.seed = None if seed is None else non_negative_int(seed, "seed")
        self.chunk_size = positive_int(chunk_size, "chunk_size")
        self.check_finite = bool(check_finite)
        if self.feature_map == "favor":
            # float64 projection plus the Gaussian draws behind it (3 more of its size), refused before any is drawn
            self._check_param_memory(extra_bytes=20.0 * self.feature_dim * self.dim, what="FAVOR+ projection")
            self.redraw_features()

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """``projection (nb_features, dim)`` with ``feature_map='favor'`` (drawn, not learned); none otherwise."""
        if self.feature_map != "favor":
            return {}
        assert self.nb_features is not None
        return {_PROJECTION: (self.nb_features, self.dim)}

    # ------------------------------------------------------------------ properties
    @property
    def feature_dim(self) -> int:
        """F, the width of ``phi(x)``: D for elu/relu, 2 D nu for dpfp, nb_features for favor."""
        return feature_dim(self.feature_map, self.dim, self.nu, self.nb_features)

    def redraw_features(self) -> np.ndarray:
        """Draw a new FAVOR+ projection (block-orthogonal, chi row norms) from this object's seeded generator.

        The first draw happens in the constructor, so ``LinearAttention(..., seed=s)`` always starts
        from the same projection. Returns it (float64, ``(nb_features, dim)``).
        """
        self._check_alive()
        if self.feature_map != "favor":
            raise ConfigError(f"feature_map: redraw_features needs feature_map='favor', got {self.feature_map!r}")
        assert self.nb_features is not None
        w = orthogonal_random_features(self.nb_features, self.dim, self._rng())
        self._params[_PROJECTION] = w
        self._cache.pop("converted", None)
        return w

    # ------------------------------------------------------------------ forward
    def forward(self, query: Any, key: Any = None, value: Any = None, *, mask: Any = None, cache: KVCache | None = None) -> Array:
        """Linear attention output ``(..., Lq, H, Dv)`` (flat in, flat out). ``key, value`` default to ``query``.

        ``cache`` (``causal=True``): a :class:`~attnkit.KVCache` that holds the recurrent state
        ``S = sum_j phi(k_j) [v_j, 1]^T`` of the tokens so far instead of their keys and values
        (Katharopoulos et al. 2020, "Transformers are RNNs"): ``key``/``value`` are the new tokens'
        (as many as queries), query ``i`` of the chunk sees the state and the new keys ``<= i``, and the
        state is then updated. O(F * Dv) memory and time per token, whatever the length.
        """
        if cache is None:
            return self._run_forward(query, key, value, mask=mask)
        return self._run_forward(query, key, value, mask=mask, cache=cache)

    def _forward(self, params: Mapping[str, Array], query: Any, key: Any, value: Any, *, mask: Any = None, cache: Any = None) -> Array:
        """Linear attention output ``(..., Lq, H, Dv)`` (flat in, flat out). ``key, value`` default to ``query``."""
        if cache is not None:
            return self._forward_cached(params, query, key, value, mask, as_cache(cache))
        s = prepare_sequence(query, key, value, None, heads=self.heads, dim=self.dim, check=self.check_finite, grouped=True)
        key_mask = self._key_mask(mask, s)
        projection = None
        if self.feature_map == "favor":
            projection = self._params_like(params, s.q)[_PROJECTION]
        out = linear_attention(
            s.q,
            s.k,
            s.v,
            xp=s.xp,
            feature_map=self.feature_map,
            eps=self.eps,
            causal=self.causal,
            chunk_size=self.chunk_size,
            key_mask=key_mask,
            nu=self.nu,
            projection=projection,
        )
        return s.finish(out)

    def _forward_cached(self, params: Mapping[str, Array], query: Any, key: Any, value: Any, mask: Any, cache: KVCache) -> Array:
        """``forward(..., cache=cache)``: the chunk's causal outputs after the cached state, then the state updated."""
        if not self.causal:
            raise ConfigError("cache: a KVCache holds the state of causal linear attention; construct with causal=True")
        if mask is not None:
            raise ConfigError("mask: not taken with a KVCache (decoding is causal; every earlier token is in the state)")
        s = prepare_sequence(query, key, value, None, heads=self.heads, dim=self.dim, check=self.check_finite, same_length=True, grouped=True)
        xp = s.xp
        if is_graph(xp):
            raise ConfigError("cache: a KVCache is Python state and cannot be exported to ONNX; export the forward without cache=")
        prefix = cache.linear_state(s.k, s.v)
        projection = self._params_like(params, s.q)[_PROJECTION] if self.feature_map == "favor" else None
        kw: dict[str, Any] = dict(xp=xp, feature_map=self.feature_map, nu=self.nu, projection=projection)
        hk = int(s.k.shape[-3])
        q, k, v, pre = s.q, s.k, s.v, prefix
        if hk != self.heads:  # grouped-query attention: the key side broadcasts over each group (see kernels.gqa)
            q, k, v = group_queries(q, hk, xp), group_keys(k, xp), group_keys(v, xp)
            pre = None if prefix is None else (group_keys(prefix[0], xp), group_keys(prefix[1], xp))
        out = causal_shard(q, k, v, pre, eps=self.eps, chunk=self.chunk_size, **kw)
        if hk != self.heads:
            out = ungroup(out, xp)
        new = key_state(s.k, s.v, **kw)
        state = new if prefix is None else merge_key_states(prefix, new, xp)
        cache.set_linear_state(state, int(s.k.shape[-2]), tuple(int(d) for d in s.k.shape[:-3]))
        return s.finish(out)

    def _key_mask(self, mask: Any, s: SequenceInputs) -> Array | None:
        """Validate ``mask`` as a key mask; return it as ``(..., H|1, Lk, 1)`` (bool or float)."""
        if mask is None:
            return None
        xp = s.xp
        lq, lk, heads = s.lq, s.lk, self.heads
        batch = broadcast_shapes(tuple(s.q.shape[:-3]), tuple(s.k.shape[:-3]), tuple(s.v.shape[:-3]))
        if not hasattr(mask, "shape") or not hasattr(mask, "dtype"):
            try:
                mask = np.asarray(mask)
            except (ValueError, TypeError) as exc:
                raise ShapeError(f"mask: expected a rectangular array ({exc})") from exc
            if mask.dtype.kind not in "biuf":
                mask = as_float_array(mask, "mask", None)
        mshape = tuple(_dim(d) for d in mask.shape)
        reshape = array_api_compat.array_namespace(mask)  # the mask's own library (prepare_mask checks it)
        if s.flat and lq is not None and lk is not None and len(mshape) == 1 and lq > 1 and mshape[0] == lq * lk:
            mask = reshape.reshape(mask, (lq, lk))  # the spec's flat (Lq*Lk) mask
            mshape = (lq, lk)
        if len(mshape) == 0:
            raise ShapeError(f"mask: expected a key mask of shape (Lk,) = ({lk},), (*batch, Lk) or (..., H, 1, Lk), got a scalar")
        if len(mshape) == 1 or self._is_batch_key_mask(mshape, batch, lq):
            if mshape[-1] != lk:
                raise ShapeError(f"mask: expected a key mask with Lk = {lk} entries along the last axis, got shape {shape_str(mshape)}")
            mask = reshape.reshape(mask, (*mshape[:-1], 1, 1, -1) if len(mshape) > 1 else (1, -1))
        target = (*batch, heads, lq, lk)
        pm = prepare_mask(mask, xp, target, s.q.dtype, device=s.device)
        assert pm is not None
        if pm.shape[-2] is None:  # symbolic (a graph being exported): values cannot be compared
            raise ConfigError("mask: linear attention exports key masks only (shape (Lk,) or (*batch, Lk)); got a mask with a query axis")
        if int(pm.shape[-2]) != 1:
            # skipped on traced masks (jax.jit, torch.compile: no value to compare); the first row is used
            same = xp.all(pm == pm[..., :1, :])
            if not is_traced(same) and not bool(same):
                raise ShapeError(
                    f"mask: linear attention can only drop or weight keys for all queries at once (a key mask of shape "
                    f"(Lk,), (*batch, Lk) or (..., H, 1, Lk)); got a mask of shape {shape_str(mshape)} whose query rows differ. "
                    "Use causal=True for causal masking, or FlashAttention for a general mask"
                    + (
                        f" (a {len(mshape)}-d mask whose second-to-last axis is Lq = {lq} is read as (..., Lq, Lk); "
                        "pass per-batch key masks as (*batch, 1, 1, Lk))"
                        if len(mshape) == len(batch) + 1 and mshape[-2] == lq
                        else ""
                    )
                )
            pm = pm[..., :1, :]
        return xp.matrix_transpose(pm)

    @staticmethod
    def _is_batch_key_mask(mshape: tuple[int, ...], batch: tuple[int, ...], lq: int | None) -> bool:
        """Whether a mask of shape ``mshape`` is read as ``(*batch, Lk)``, one key mask per batch entry.

        It is when it has one axis more than ``batch``, its leading axes broadcast to ``batch``, and
        it cannot be the attention-score layout ``(..., Lq, Lk)``: a mask whose second-to-last axis
        has length ``Lq > 1`` is read as ``(..., Lq, Lk)`` (as by every other mechanism), so that
        ``create_mask(kind, L)`` means the same here whatever the batch size.
        """
        if not batch or len(mshape) != len(batch) + 1:
            return False
        if any(m not in (1, b) for m, b in zip(mshape[:-1], batch, strict=True)):
            return False
        return not (lq is not None and lq > 1 and mshape[-2] == lq)

    def example_inputs(self, seq_len: int = 8, rng: np.random.Generator | None = None) -> tuple[np.ndarray, ...]:
        rng = rng or np.random.default_rng()
        shape = (seq_len, self.heads, self.dim)
        return tuple(rng.standard_normal(shape, dtype=np.float32) for _ in range(3))
