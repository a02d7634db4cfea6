"""MoEAttention: a learned router sends each query to its top-k attention experts.

Mixture of experts (Shazeer et al. 2017; Lepikhin et al. 2021; Fedus et al. 2022) over attention
mechanisms: for query ``q_t`` the router computes ``p_t = softmax(W_r q_t + b_r)`` over ``E`` experts,
keeps the ``top_k`` largest with gates renormalised to sum to 1, and

    out_t = sum_{e in topk(t), kept} g_{t,e} * Expert_e(q_t, keys, values)

Every expert sees the same keys and values; queries are routed independently (so experts must treat
queries independently: non-causal ones). Capacity, overflow, jitter and the load-balancing loss follow
:mod:`attnkit.kernels.moe`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import array_api_compat
import numpy as np

from .._array import (
    Array,
    as_float_array,
    broadcast_lead,
    check_allocation,
    is_traced,
    namespace,
    one_of,
    positive_float,
    positive_int,
    probability,
    reshape_lead,
    shape_str,
    to_numpy,
)
from .._array import length as _dim
from ..errors import ConfigError, DTypeError, ShapeError
from ..kernels.masks import prepare_mask
from ..kernels.moe import expert_capacity, load_balancing_loss, router_probs, token_count, top_k_routing
from ._headless import prepare_headless
from ._learned import LearnedParams, glorot
from .base import Mechanism
from .registry import register

__all__ = ["MoEAttention"]

#: options given to experts built from a name (so that any expert takes (n, dim) vectors)
#: the most experts one layer may have: each is a mechanism object, built and routed to one by one
#: (Switch Transformers use up to 2048); ``_EXPERT_BUILD_S`` is the measured build time of one (seconds)
MAX_EXPERTS = 4096
_EXPERT_BUILD_S = 1e-3

_EXPERT_DEFAULTS: dict[str, dict[str, Any]] = {
    "linear": {"heads": 1},
    "flash": {"heads": 1},
    "hyperbolic": {"input_space": "tangent"},
}


def _expert_kind(expert: Any) -> str:
    """How to call an expert: 'hyperbolic', 'sequence' ((L, H, D) layout) or 'vectors' ((n, D) queries)."""
    from .flash import FlashAttention
    from .hyperbolic import HyperbolicAttention
    from .linear import LinearAttention

    if isinstance(expert, HyperbolicAttention):
        return "hyperbolic"
    if isinstance(expert, (FlashAttention, LinearAttention)):
        return "sequence"
    return "vectors"


@register
class MoEAttention(LearnedParams, Mechanism):
    """Mixture of attention experts with a learned top-k router.

    Options: ``dim`` query/key width (64); ``num_experts`` ``E`` (4); ``top_k`` (2, at most ``E``);
    ``expert_capacity``: capacity factor (1.25; ``None`` = unlimited) giving each expert at most
    ``ceil(factor * T * top_k / E)`` of the ``T`` queries of a call; ``jitter_noise``: in training mode
    the router input is multiplied by ``Uniform(1 - j, 1 + j)`` noise (Switch Transformer), drawn from the
    seeded generator; ``experts``: registry names (comma-separated string or list), cycled over the
    ``E`` experts, or mechanism instances (default ``"scaled_dot_product,linear,hyperbolic"``);
    ``overflow``: ``"drop"`` (default: an assignment over capacity contributes nothing, so a token
    dropped by every expert gets zeros, as in Switch where the residual connection carries it) or
    ``"pass_through"`` (a token dropped by every expert returns its query unchanged; needs
    ``Dv == dim``); ``seed`` (router initialisation and jitter); ``check_finite``.

    Experts built from names take ``dim``-wide vectors: ``linear``/``flash`` with one head,
    ``hyperbolic`` with ``input_space="tangent"`` and its output mapped back by ``log_0`` so every
    expert's output lives in the same Euclidean space. Causal experts are refused (routing takes
    queries out of their sequence).

    Inputs (head-less, like ``ScaledDotProduct``/``HyperbolicAttention``): ``q (..., Lq, dim)`` or one
    query ``(dim,)``, ``keys (..., Lk, dim)`` (default ``q``), ``values (..., Lk, Dv)`` (default
    ``keys``), ``mask``: a bool key mask ``(..., Lk)`` (True = attend).

    Exports to ONNX (:func:`attnkit.export_onnx`): routing and the capacity (from the run-time token count)
    are computed in the graph, so the model drops the tokens the library drops at every length.

    After each forward: :attr:`last_aux_loss` (the load-balancing loss, a float for NumPy input and a
    tensor carrying gradient for torch), :meth:`usage_stats` (cumulative), :meth:`reset_stats`.
    Parameters: ``router.weight (E, dim)``, ``router.bias (E,)`` and each expert's own as
    ``experts.<i>.<name>``.
    """

    name = "moe"
    summary = "mixture of attention experts: learned top-k router, capacity, load-balancing loss"
    input_layout = "headless"
    has_attention_weights = False
    shape_options = {"dim": ("query", -1)}
    example_options = {"dim": 4, "num_experts": 2, "top_k": 1}

    def __init__(
        self,
        dim: int = 64,
        num_experts: int = 4,
        top_k: int = 2,
        expert_capacity: float | None = 1.25,
        jitter_noise: float = 0.0,
        experts: str | Sequence[Any] = "scaled_dot_product,linear,hyperbolic",
        overflow: str = "drop",
        seed: int | None = 0,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        self.dim = positive_int(dim, "dim")
        self.num_experts = positive_int(num_experts, "num_experts")
        if self.num_experts > MAX_EXPERTS:
            raise ConfigError(
                f"num_experts: expected at most {MAX_EXPERTS} (each expert is a mechanism object, built and routed to one "
                f"by one: {self.num_experts} would take about {self.num_experts * _EXPERT_BUILD_S:.0f} s to build), got {self.num_experts}"
            )
        self.top_k = positive_int(top_k, "top_k")
        if self.top_k > self.num_experts:
            raise ConfigError(f"top_k: expected at most num_experts = {self.num_experts}, got {top_k!r}")
        self.expert_capacity = None if expert_capacity is None else positive_float(expert_capacity, "expert_capacity")
        self.jitter_noise = probability(jitter_noise, "jitter_noise")
        self.overflow = one_of(overflow, "overflow", ("drop", "pass_through"))
        self.seed = seed
        self.check_finite = bool(check_finite)
        self._experts: list[Any] = []
        self._check_param_memory(what="router parameters")  # before any expert is built (param_shapes reads none yet)
        self._experts = self._build_experts(experts)
        self.experts = tuple(getattr(e, "name", type(e).__name__) for e in self._experts)
        rng = np.random.default_rng(seed)
        self._params = {
            "router.weight": glorot(rng, (self.num_experts, self.dim), self.dim, self.num_experts),
            "router.bias": np.zeros(self.num_experts, dtype=np.float32),
        }
        self.last_aux_loss: Any = None
        self.reset_stats()

    # ------------------------------------------------------------------ experts
    def _build_experts(self, experts: Any) -> list[Any]:
        from . import registry

        if isinstance(experts, str):
            items: list[Any] = [s.strip() for s in experts.split(",") if s.strip()]
        elif isinstance(experts, Mechanism):
            items = [experts]
        elif isinstance(experts, Sequence):
            items = list(experts)
        else:
            raise ConfigError(f"experts: expected registry names or mechanism instances, got {type(experts).__name__}")
        if not items:
            raise ConfigError("experts: expected at least one expert name or instance, got none")
        if any(isinstance(x, Mechanism) for x in items) and len(items) != self.num_experts:
            raise ConfigError(f"experts: expected num_experts = {self.num_experts} mechanism instances, got {len(items)}")
        built: list[Any] = []
        for i in range(self.num_experts):
            if i == len(items) and i < self.num_experts:
                # one expert of each kind built: the whole set costs their bytes, each kind as often as it recurs
                per = [sum(int(v.nbytes) for v in e.parameters().values()) for e in built]
                total = sum(per[j % len(items)] for j in range(self.num_experts))
                check_allocation(total, "num_experts, dim", f"moe parameters of {self.num_experts} experts")
            item: Any = items[i % len(items)]
            if isinstance(item, str):
                key = item.lower().replace("-", "_")
                try:
                    item = registry.create(key, dim=self.dim, **_EXPERT_DEFAULTS.get(key, {}))
                except ConfigError as exc:
                    raise ConfigError(f"experts: cannot build expert {i} ({item!r}) with dim = {self.dim}: {exc}") from exc
            if not isinstance(item, Mechanism) or item is self:
                raise ConfigError(f"experts: expected a registry name or an attnkit mechanism, got {item!r}")
            if getattr(item, "causal", False):
                raise ConfigError(f"experts: expert {i} ({type(item).__name__}) is causal; routed queries leave their sequence")
            width, heads = getattr(item, "dim", None), getattr(item, "heads", 1)
            if _expert_kind(item) == "sequence":
                if width is None or width * heads != self.dim:
                    raise ConfigError(f"experts: expert {i} has heads*dim = {heads}*{width}, expected dim = {self.dim}")
            elif isinstance(width, int) and width != self.dim:
                raise ConfigError(f"experts: expert {i} has dim = {width}, expected {self.dim}")
            built.append(item)
        return built

    @property
    def expert_modules(self) -> list[Any]:
        """The expert mechanism instances."""
        return list(self._experts)

    def _call_expert(self, e: int, params: Mapping[str, Array], q: Array, k: Array, v: Array, m: Array | None) -> Array:
        """Expert ``e`` on queries ``q (..., n, D)`` over ``k (..., Lk, D)``, ``v (..., Lk, Dv)`` with the key
        mask ``m (..., 1, Lk)`` (the same for every query) -> ``(..., n, Dv)``."""
        expert = self._experts[e]
        kind = _expert_kind(expert)
        xp = namespace(q)
        if kind == "hyperbolic":
            out = expert._forward(params, q, k, v, mask=m)
            if expert.input_space == "tangent":
                from ..kernels import poincare as pc

                out = pc.from_poincare(out, c=expert.c)
            return out
        if kind == "sequence":
            h = expert.heads
            dv = _dim(v.shape[-1])
            if dv % h:
                raise ShapeError(f"values: expert {e} has {h} heads, which must divide Dv = {dv}")
            qh = reshape_lead(q, q.ndim - 1, (h, self.dim // h), xp)
            kh = reshape_lead(k, k.ndim - 1, (h, self.dim // h), xp)
            vh = reshape_lead(v, v.ndim - 1, (h, dv // h), xp)
            out = expert._forward(params, qh, kh, vh, mask=None if m is None else xp.expand_dims(m, axis=-3))
            return reshape_lead(out, out.ndim - 2, (dv,), xp)
        if getattr(expert, "input_layout", None) == "graph" and q.ndim > 2:
            # each query over its own neighbour set (..., k, D): the batch item's keys, shared by its queries
            k, v = xp.expand_dims(k, axis=-3), xp.expand_dims(v, axis=-3)
        return expert._forward(params, q, k, v, mask=m)

    # ------------------------------------------------------------------ weights
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {"router.weight": (self.num_experts, self.dim), "router.bias": (self.num_experts,)}
        for i, ex in enumerate(self._experts):
            for key, val in ex.parameters().items():
                shapes[f"experts.{i}.{key}"] = tuple(val.shape)
        return shapes

    def parameters(self) -> dict[str, np.ndarray]:
        """Router parameters and every expert's, as ``experts.<i>.<name>``."""
        self._check_alive()
        out = dict(self._params)
        for i, ex in enumerate(self._experts):
            out.update({f"experts.{i}.{k}": v for k, v in ex.parameters().items()})
        return out

    def _set_params(self, params: Mapping[str, Any]) -> None:
        """Check router and expert parameters together, then hand each expert its own."""
        super()._set_params(params)
        loaded = self._params
        self._params = {k: v for k, v in loaded.items() if k.startswith("router.")}
        for i, ex in enumerate(self._experts):
            prefix = f"experts.{i}."
            own = {k[len(prefix) :]: v for k, v in loaded.items() if k.startswith(prefix)}
            if own:
                ex._params = {k: own[k].astype(ex._params[k].dtype) for k in ex._params}
                ex._cache.pop("converted", None)

    def save_weights(self, path: Any = None) -> bytes:
        """Router and expert parameters as safetensors bytes (also written to ``path`` if given)."""
        from pathlib import Path

        from ..weights import save_state

        data = save_state(self.parameters())
        if path is not None:
            Path(path).write_bytes(data)
        return data

    # ------------------------------------------------------------------ statistics
    def reset_stats(self) -> None:
        """Zero the cumulative usage counters."""
        self._stats: dict[str, Any] = {
            "calls": 0,
            "tokens": 0,
            "assignments": np.zeros(self.num_experts, dtype=np.int64),
            "kept": np.zeros(self.num_experts, dtype=np.int64),
            "dropped_tokens": 0,
        }
        self.last_routing: dict[str, np.ndarray] | None = None

    def usage_stats(self) -> dict[str, Any]:
        """Cumulative expert usage since construction or :meth:`reset_stats`.

        ``tokens``: queries routed; ``assignments[i]``: how often expert ``i`` was among a token's
        top-k; ``kept[i]``: assignments it served (within capacity); ``dropped[i]``: its overflow;
        ``load[i]``: its share of all served assignments; ``dropped_tokens``: queries no expert served;
        ``last_aux_loss``: the load-balancing loss of the last call (as a float).
        """
        s = self._stats
        kept = s["kept"]
        total = int(kept.sum())
        aux = self.last_aux_loss
        return {
            "calls": s["calls"],
            "tokens": s["tokens"],
            "assignments": s["assignments"].tolist(),
            "kept": kept.tolist(),
            "dropped": (s["assignments"] - kept).tolist(),
            "load": (kept / total).tolist() if total else [0.0] * self.num_experts,
            "dropped_tokens": s["dropped_tokens"],
            "last_aux_loss": None if aux is None else float(to_numpy(aux) if not isinstance(aux, float) else aux),
        }

    # ------------------------------------------------------------------ forward
    def _prepare(self, q: Any, keys: Any, values: Any, mask: Any) -> tuple:
        """Validated inputs with their batch axes broadcast together: ``q (*B, Lq, D)``, ``k (*B, Lk, D)``,
        ``v (*B, Lk, Dv)`` and the key mask ``(*B, Lk)`` or ``None``."""
        h = prepare_headless(q, keys, values, None, dim=self.dim, check=self.check_finite)
        xp, qa, ka, va, batch = h.xp, h.q, h.k, h.v, h.batch
        if self.overflow == "pass_through" and va.shape[-1] != self.dim:
            raise ShapeError(f"values: overflow='pass_through' returns queries, so Dv must equal dim = {self.dim}, got {va.shape[-1]}")
        cdt = qa.dtype
        lk = _dim(ka.shape[-2])
        dev = array_api_compat.device(qa)
        arrays, tails = [qa, ka, va], [2, 2, 2]
        if mask is not None:
            m = prepare_mask(mask, xp, (*batch, lk), cdt, device=dev, layout="(..., Lk)")
            if m is not None and not xp.isdtype(m.dtype, "bool"):
                raise DTypeError(f"mask: expected a bool key mask (True = attend), got {m.dtype}")
            arrays, tails = [*arrays, m], [*tails, 1]
        qa, ka, va, *rest = broadcast_lead(arrays, tails, xp)
        return h, qa, ka, va, (rest[0] if rest else None), dev

    def router_probs(self, q: Any) -> Array:
        """Router probabilities ``softmax(W_r q + b_r)``, shape ``(..., E)`` (no jitter)."""
        self._check_alive()
        xp = namespace(q)
        qa = as_float_array(q, "q", xp)
        if qa.ndim < 1 or qa.shape[-1] != self.dim:
            raise ShapeError(f"q: expected shape (..., dim = {self.dim}), got {shape_str(qa.shape)}")
        p = self._weights_like(qa)
        return router_probs(qa, p["router.weight"], p["router.bias"], xp)

    def _own_params(self) -> Mapping[str, Array]:
        return self.parameters()

    def _export_blocker(self) -> str | None:
        """Why this mechanism does not export to ONNX as configured (see :func:`attnkit.export_onnx`)."""
        if self.training and self.jitter_noise > 0:
            return "jitter_noise multiplies the router input by random noise while training; call .eval() before exporting"
        return None

    def _forward(self, params: Mapping[str, Array], query: Any, key: Any, value: Any, *, mask: Any = None) -> Array:
        """Routed attention output ``(..., Lq, Dv)`` (``(Dv,)`` for a single query).

        Tokens are the ``T`` queries of all batch items (batch-major). Routing and capacity are array
        operations (:mod:`attnkit.kernels.moe`), so they trace (``jax.jit``, ``torch.compile``, an ONNX
        graph whose ``T`` is symbolic: the capacity is then computed in the graph from the run-time
        ``T``). With concrete values each expert computes only the queries it serves, one batch item at a
        time; traced, each expert computes every query of the whole batch at once and the rows it does not
        serve are masked out (shapes cannot depend on the routing): the same values.
        """
        h, qa, ka, va, m, dev = self._prepare(query, key, value, mask)
        xp = h.xp
        d, ne = self.dim, self.num_experts
        dv = _dim(va.shape[-1])
        qf = xp.reshape(qa, (-1, d))  # (T, D), batch-major
        t = _dim(qf.shape[0])
        p = self._params_like({k: v for k, v in params.items() if k.startswith("router.")}, qf)
        expert_params = [{k[len(f"experts.{i}.") :]: v for k, v in params.items() if k.startswith(f"experts.{i}.")} for i in range(ne)]
        xr = qf
        if self.training and self.jitter_noise > 0:
            noise = self._rng().uniform(1.0 - self.jitter_noise, 1.0 + self.jitter_noise, size=(t, d))
            xr = qf * xp.asarray(noise, dtype=qf.dtype, device=dev)
        probs = router_probs(xr, p["router.weight"], p["router.bias"], xp)  # (T, E)
        cap = expert_capacity(token_count(probs, xp), ne, self.top_k, self.expert_capacity, xp)
        chosen, keep = top_k_routing(probs, self.top_k, cap, xp)  # (T, k) each, in xp on dev
        top = xp.take_along_axis(probs, chosen, axis=1)
        gates = top / xp.sum(top, axis=-1, keepdims=True)  # renormalised over the k choices
        # served[t, e]: expert e serves token t; gate[t, e]: its gate (0 where not served). A token's k
        # choices are distinct experts, so each sum over r has one term at most (exact).
        assign = (chosen[:, :, None] == xp.arange(ne, device=dev)[None, None, :]) & keep[:, :, None]
        served = xp.any(assign, axis=1)
        gate = xp.sum(xp.where(assign, gates[:, :, None], xp.zeros_like(gates[:, :, None])), axis=1)
        km = None if m is None else xp.expand_dims(m, axis=-2)  # (*B, 1, Lk): the same keys for every query
        traced = is_traced(probs)
        if traced:
            # shapes cannot depend on the routing inside a graph: each expert sees every query of the
            # batch, and the rows it does not serve are masked out (the same values)
            lead = qa.ndim - 1
            served_b, gate_b = reshape_lead(served, lead, (ne,), xp, like=qa), reshape_lead(gate, lead, (ne,), xp, like=qa)
            acc = None
            for e in range(ne):
                full = self._call_expert(e, expert_params[e], qa, ka, va, km)
                contrib = xp.where(served_b[..., e : e + 1], full * gate_b[..., e : e + 1], xp.zeros_like(full))
                acc = contrib if acc is None else acc + contrib
            out = xp.reshape(acc, (-1, dv))
        else:
            out = self._served_rows(qa, ka, va, km, served, gate, expert_params, xp, dev)
        dropped = ~xp.any(keep, axis=1)
        if self.overflow == "pass_through":
            out = xp.where(dropped[:, None], qf, out)
        # statistics and the auxiliary loss: host bookkeeping, only for concrete values (inside a
        # jax.jit / torch.compile graph they would leak tracers; they are left untouched there)
        if not traced:
            aux = load_balancing_loss(probs, chosen[:, 0], ne, xp)
            self.last_aux_loss = float(np.asarray(aux)) if isinstance(aux, np.ndarray) or np.isscalar(aux) else aux
            chosen_np, keep_np = to_numpy(chosen).astype(np.int64), to_numpy(keep).astype(bool)
            st = self._stats
            st["calls"] += 1
            st["tokens"] += t
            st["assignments"] += np.bincount(chosen_np.reshape(-1), minlength=ne)
            st["kept"] += np.bincount(chosen_np[keep_np], minlength=ne)
            st["dropped_tokens"] += int((~keep_np.any(axis=1)).sum())
            probs_np = to_numpy(probs).astype(np.float64)
            self.last_routing = {"experts": chosen_np, "keep": keep_np, "probs": probs_np, "capacity": np.asarray(cap)}
        return h.finish(reshape_lead(out, qa.ndim - 1, (dv,), xp, like=qa))

    def _served_rows(
        self, qa: Array, ka: Array, va: Array, km: Array | None, served: Array, gate: Array, expert_params: list, xp: Any, dev: Any
    ) -> Array:
        """Concrete values: expert ``e`` computes only the queries it serves, per batch item -> ``(T, Dv)``."""
        lq, lk, d, dv = _dim(qa.shape[-2]), _dim(ka.shape[-2]), self.dim, _dim(va.shape[-1])
        nb = math.prod(int(n) for n in qa.shape[:-2])
        qn, kn, vn = xp.reshape(qa, (nb, lq, d)), xp.reshape(ka, (nb, lk, d)), xp.reshape(va, (nb, lk, dv))
        mn = None if km is None else xp.reshape(km, (nb, 1, lk))
        rows = []
        for b in range(nb):
            sl = slice(b * lq, (b + 1) * lq)
            s_b, g_b = served[sl, :], gate[sl, :]
            acc = None
            for e in range(self.num_experts):
                idx = xp.nonzero(s_b[:, e])[0]
                if int(idx.shape[0]) == 0:
                    continue
                sub = self._call_expert(
                    e, expert_params[e], xp.take(qn[b, ...], idx, axis=0), kn[b, ...], vn[b, ...], None if mn is None else mn[b, ...]
                )
                # back to one row per query: row i of sub serves the i-th served query
                pos = xp.clip(xp.cumulative_sum(xp.astype(s_b[:, e], xp.int64)) - 1, min=0)
                full = xp.take(sub, pos, axis=0)
                contrib = xp.where(s_b[:, e : e + 1], full * g_b[:, e : e + 1], xp.zeros_like(full))
                acc = contrib if acc is None else acc + contrib
            rows.append(xp.zeros((lq, dv), dtype=qa.dtype, device=dev) if acc is None else acc)
        if not rows:
            return xp.zeros((0, dv), dtype=qa.dtype, device=dev)
        return rows[0] if nb == 1 else xp.concat(rows, axis=0)

    def dispose(self) -> None:
        for ex in self._experts:
            ex.dispose()
        super().dispose()

    def example_inputs(self, seq_len: int = 8, rng: np.random.Generator | None = None) -> tuple[np.ndarray, ...]:
        """``seq_len`` queries over ``seq_len`` keys and values (float32, scaled to unit norm on average)."""
        rng = rng or np.random.default_rng()
        scale = np.float32(1.0 / math.sqrt(self.dim))
        return tuple(rng.standard_normal((seq_len, self.dim), dtype=np.float32) * scale for _ in range(3))
