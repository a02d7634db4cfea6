"""Mixture-of-experts routing: top-k selection, expert capacity, the load-balancing loss.

* Top-k routing (Shazeer et al. 2017, "Outrageously Large Neural Networks"): each token goes to the
  ``k`` experts of highest router probability, with gates renormalised over those ``k``,
  ``g_{t,e} = p_{t,e} / sum_{e' in topk(t)} p_{t,e'}``.
* Capacity (Lepikhin et al. 2021, GShard; Fedus et al. 2022, Switch Transformer): an expert takes at
  most ``C = ceil(capacity_factor * T * k / E)`` assignments per call. Assignments are served in
  priority order: every token's first choice before any second choice, and within a choice rank by
  token order (GShard's policy); the rest overflow and are dropped.
* Load-balancing auxiliary loss (Fedus et al. 2022, eq. 4): ``L_aux = E * sum_i f_i P_i`` with ``f_i``
  the fraction of tokens whose top-1 expert is ``i`` and ``P_i`` the mean router probability of
  expert ``i``; it is 1 for perfectly balanced routing and grows to ``E`` when one expert takes all.
"""

from __future__ import annotations

import math

import numpy as np

from .._array import Array, Namespace

__all__ = ["expert_capacity", "top_k_routing", "load_balancing_loss"]


def expert_capacity(tokens: int, num_experts: int, top_k: int, factor: float | None) -> int:
    """``ceil(factor * tokens * top_k / num_experts)`` (``factor=None``: unlimited, i.e. ``tokens``)."""
    if factor is None:
        return tokens
    return max(1, math.ceil(factor * tokens * top_k / num_experts))


def top_k_routing(probs: np.ndarray, top_k: int, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """Route tokens: ``(experts, keep)``, both ``(T, top_k)``.

    ``experts[t, r]`` is token ``t``'s ``r``-th choice (ties broken by the lower expert index);
    ``keep[t, r]`` whether that assignment fits in the expert's capacity (priority: rank, then token).
    """
    t, e = probs.shape
    experts = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
    order = experts.T.reshape(-1)  # rank-major: all first choices, then all second choices, ...
    onehot = np.zeros((order.shape[0], e), dtype=np.int64)
    onehot[np.arange(order.shape[0]), order] = 1
    position = (np.cumsum(onehot, axis=0) - 1)[np.arange(order.shape[0]), order]
    keep = (position < capacity).reshape(top_k, t).T
    return experts, keep


def load_balancing_loss(probs: Array, top1: np.ndarray, num_experts: int, xp: Namespace) -> Array:
    """Switch Transformer auxiliary loss ``E * sum_i f_i P_i`` from router probabilities ``(T, E)``.

    ``f`` is a constant (from the discrete ``top1`` choices); the loss is differentiable in ``probs``
    through ``P`` when ``xp`` has autograd.
    """
    t = probs.shape[0]
    f = np.bincount(top1, minlength=num_experts).astype(np.float64) / max(t, 1)
    p_mean = xp.mean(probs, axis=0)
    import array_api_compat

    f_x = xp.asarray(f, dtype=probs.dtype, device=array_api_compat.device(probs))
    return num_experts * xp.sum(f_x * p_mean)
