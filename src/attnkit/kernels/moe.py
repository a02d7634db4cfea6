"""Mixture-of-experts routing: top-k selection, expert capacity, the load-balancing loss.

* Top-k routing (Shazeer et al. 2017, "Outrageously Large Neural Networks"): each token goes to the
  ``k`` experts of highest router probability, with gates renormalised over those ``k``,
  ``g_{t,e} = p_{t,e} / sum_{e' in topk(t)} p_{t,e'}``.
* Capacity (Lepikhin et al. 2021, GShard; Fedus et al. 2022, Switch Transformer): an expert takes at
  most ``C = ceil(capacity_factor * T * k / E)`` assignments per call. Assignments are served in
  priority order: every token's first choice before any second choice, and within a choice rank by
  token order (GShard's policy); the rest overflow and are dropped.
* Router probabilities ``softmax(x W_r^T + b_r)`` (:func:`router_probs`), computed one dtype wider
  when the logits could overflow (see :mod:`.overflow`).
* Load-balancing auxiliary loss (Fedus et al. 2022, eq. 4): ``L_aux = E * sum_i f_i P_i`` with ``f_i``
  the fraction of tokens whose top-1 expert is ``i`` and ``P_i`` the mean router probability of
  expert ``i``; it is 1 for perfectly balanced routing and grows to ``E`` when one expert takes all.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat
import numpy as np

from .._array import Array, Namespace, namespace
from . import overflow
from .softmax import safe_softmax

__all__ = ["expert_capacity", "token_count", "top_k_routing", "load_balancing_loss", "router_probs"]


def router_probs(x: Array, weight: Array, bias: Array, xp: Namespace) -> Array:
    """``softmax(x W^T + b)`` over the experts (last axis); ``x: (..., D)``, ``weight: (E, D)``, ``bias: (E,)``.

    Logits past the dtype's range (``D max|x| max|W| + max|b|``, see :mod:`.overflow`) are computed one
    dtype wider, so huge finite inputs give the exact (near one-hot) probabilities, never NaN.
    """
    if overflow.concrete(xp, (x, weight, bias)) and overflow.at_risk(
        xp, x.dtype, logits=(x, weight, x.shape[-1], 1.0), bounds=(overflow.max_abs(bias),)
    ):
        return overflow.run_wider(lambda x, w, b: router_probs(x, w, b, xp), xp, (x, weight, bias), dtype=x.dtype, names="query")
    return safe_softmax(x @ xp.matrix_transpose(weight) + bias, xp)


def expert_capacity(tokens: Any, num_experts: int, top_k: int, factor: float | None, xp: Namespace | None = None) -> Any:
    """``max(1, ceil(factor * tokens * top_k / num_experts))`` (``factor=None``: unlimited, i.e. ``tokens``).

    ``tokens``: an ``int`` (a Python ``int`` comes back), or a 0-d integer array when the count is only
    known at run time (a graph being exported, where lengths are symbolic): the same float64
    arithmetic, in the same order, is then done by the array library, so the graph's capacity equals
    the Python one at every length; an int64 0-d array comes back.
    """
    if isinstance(tokens, (int, np.integer)):
        if factor is None:
            return int(tokens)
        return max(1, math.ceil(factor * int(tokens) * top_k / num_experts))
    xp = xp or namespace(tokens)
    n = xp.astype(tokens, xp.float64)
    if factor is None:
        return xp.astype(n, xp.int64)
    c = xp.ceil(n * float(factor) * float(top_k) / float(num_experts))
    return xp.astype(xp.maximum(c, xp.ones_like(c)), xp.int64)


def token_count(x: Array, xp: Namespace) -> Any:
    """The length of ``x``'s first axis: an ``int``, or (symbolic length, a graph being exported) an int64
    0-d array counted at run time."""
    n = x.shape[0]
    if n is not None:
        return int(n)
    return xp.sum(xp.astype(xp.ones_like(x[:, 0]), xp.int64))


def top_k_routing(probs: Array, top_k: int, capacity: Any, xp: Namespace | None = None) -> tuple[Array, Array]:
    """Route tokens: ``(experts, keep)``, both ``(T, top_k)``, in ``probs``' library and on its device.

    ``experts[t, r]`` is token ``t``'s ``r``-th choice (ties broken by the lower expert index: a stable
    sort of ``-probs``); ``keep[t, r]`` whether that assignment fits in the expert's capacity
    (priority: rank, then token). Array operations only (argsort, a cumulative sum of one-hot rows,
    ``take_along_axis``), so the routing is traceable (``jax.jit``, an ONNX graph with a symbolic
    ``T``) and differentiable code around it needs no host copy: an assignment's place in its expert's
    queue is ``position = cumsum(onehot(order), axis=0)[i, order_i] - 1`` over the rank-major order.
    ``capacity``: an ``int`` or a 0-d integer array (see :func:`expert_capacity`).
    """
    xp = xp or namespace(probs)
    e = int(probs.shape[1])
    dev = array_api_compat.device(probs)
    experts = xp.argsort(-probs, axis=1, stable=True)[:, :top_k]
    order = xp.reshape(xp.matrix_transpose(experts), (-1,))  # rank-major: all first choices, then second, ...
    onehot = xp.astype(order[:, None] == xp.arange(e, device=dev)[None, :], xp.int64)
    position = xp.take_along_axis(xp.cumulative_sum(onehot, axis=0), order[:, None], axis=1)[:, 0] - 1
    keep = xp.matrix_transpose(xp.reshape(position < capacity, (top_k, -1)))
    return experts, keep


def load_balancing_loss(probs: Array, top1: Array, num_experts: int, xp: Namespace) -> Array:
    """Switch Transformer auxiliary loss ``E * sum_i f_i P_i`` from router probabilities ``(T, E)``.

    ``f`` is a constant (from the discrete ``top1`` choices, an integer array of ``xp``); the loss is
    differentiable in ``probs`` through ``P`` when ``xp`` has autograd.
    """
    t = int(probs.shape[0])
    dev = array_api_compat.device(probs)
    counts = xp.sum(xp.astype(top1[:, None] == xp.arange(num_experts, device=dev)[None, :], xp.int64), axis=0)
    f = xp.astype(counts, probs.dtype) / max(t, 1)
    return num_experts * xp.sum(f * xp.mean(probs, axis=0))
