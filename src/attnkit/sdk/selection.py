"""Automatic selection: exact attention while it fits, linear attention beyond.

The rule (:func:`select_sequence_mechanism`), for ``batch`` sequences of length ``L = max_len`` with
``H`` heads of width ``D`` in float32 (``s = 4`` bytes):

1. Estimate the bytes of the exact path (``flash``)::

       io      = 4 * B * L * H * D * s                      (q, k, v and the output)
       exact   = io + 2 * B * H * min(L, 256) * min(L, block_size) * s
                                                            (one query tile x key block of scores
                                                             and probabilities: O(L) in all)
       exact   = io + B * H * L * L * s                     (if need_scores: the dense L x L
                                                             probabilities of attention_scores)

   and of the linear path (``linear``, Katharopoulos et al. 2020), with ``F`` features per head
   (``D`` for elu/relu, ``2 D nu`` for dpfp, ``nb_features``, by default ``ceil(D ln D)``, for
   FAVOR+, the feature map the rule picks unless one was set)::

       linear  = io + 2 * B * L * H * F * s + B * H * F * (D + 1) * s
                                                            (phi(q), phi(k), the K^T V state and
                                                             its normaliser)

2. Choose **exact** attention (``flash``) when ``L <= exact_max_len`` and ``exact <= memory_budget``.
   Exact attention costs ``O(L^2 D)`` time against linear attention's ``O(L D^2)``, ``L / D`` times
   more; ``exact_max_len`` (default :data:`DEFAULT_EXACT_MAX_LEN` = 8192, where that ratio is 128 at
   ``D = 64``) is where the SDK stops paying it.
3. Otherwise choose **linear** attention (with the FAVOR+ feature map unless one was set, since
   FAVOR+ estimates the same softmax attention the exact path computes) if ``linear <= memory_budget``.
4. Otherwise no mechanism fits: :class:`~attnkit.errors.ConfigError` naming ``memory_budget``.

The budget defaults to a quarter of the machine's physical memory (1 GiB where it is unknown).
Without ``max_len`` the rule cannot compare and chooses exact attention, whose memory is O(L).
"""

from __future__ import annotations

import dataclasses
import os

from ..errors import ConfigError
from .types import AttentionType

__all__ = [
    "Selection",
    "select_sequence_mechanism",
    "exact_attention_bytes",
    "linear_attention_bytes",
    "default_memory_budget",
    "DEFAULT_EXACT_MAX_LEN",
    "QUERY_TILE",
]

#: the longest sequence the rule gives to exact attention by default
DEFAULT_EXACT_MAX_LEN = 8192
#: query rows per tile of the tiled exact kernel (``kernels.dense.DEFAULT_Q_BLOCK``)
QUERY_TILE = 256
#: float32
_S = 4


def default_memory_budget() -> int:
    """A quarter of the physical memory, in bytes (1 GiB if the platform does not say)."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        if total > 0:
            return int(total // 4)
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        pass
    return 1 << 30  # pragma: no cover


def _io_bytes(max_len: int, heads: int, head_dim: int, batch: int) -> int:
    return 4 * batch * max_len * heads * head_dim * _S


def exact_attention_bytes(max_len: int, heads: int, head_dim: int, *, batch: int = 1, block_size: int = 256, need_scores: bool = False) -> int:
    """Estimated peak bytes of exact attention (see the module docstring for the formula)."""
    io = _io_bytes(max_len, heads, head_dim, batch)
    if need_scores:
        return io + batch * heads * max_len * max_len * _S
    return io + 2 * batch * heads * min(max_len, QUERY_TILE) * min(max_len, block_size) * _S


def linear_attention_bytes(max_len: int, heads: int, head_dim: int, *, batch: int = 1, features: int | None = None) -> int:
    """Estimated peak bytes of linear attention with ``features`` features per head (default ``head_dim``)."""
    f = head_dim if features is None else features
    return _io_bytes(max_len, heads, head_dim, batch) + 2 * batch * max_len * heads * f * _S + batch * heads * f * (head_dim + 1) * _S


def _fmt(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit} ({n} bytes)"
    return f"{n} bytes"


@dataclasses.dataclass(frozen=True)
class Selection:
    """The outcome of automatic selection: the chosen type and the numbers behind it."""

    type: AttentionType
    reason: str
    max_len: int | None = None
    exact_bytes: int | None = None
    linear_bytes: int | None = None
    memory_budget: int | None = None
    exact_max_len: int = DEFAULT_EXACT_MAX_LEN

    def __str__(self) -> str:
        return self.reason


def select_sequence_mechanism(
    *,
    max_len: int | None,
    heads: int,
    head_dim: int,
    batch: int = 1,
    memory_budget: int | None = None,
    exact_max_len: int | None = None,
    need_scores: bool = False,
    block_size: int = 256,
    features: int | None = None,
) -> Selection:
    """Choose ``FLASH`` (exact) or ``LINEAR`` for sequences of length ``max_len`` by the module's rule."""
    limit = DEFAULT_EXACT_MAX_LEN if exact_max_len is None else exact_max_len
    if max_len is None:
        return Selection(
            AttentionType.FLASH,
            "flash (exact attention): max_len was not given, so length and memory cannot be compared; "
            "exact attention is the default because its tiled working set grows only as O(L). "
            "Set max_len to let the rule choose.",
            exact_max_len=limit,
        )
    budget = default_memory_budget() if memory_budget is None else memory_budget
    exact = exact_attention_bytes(max_len, heads, head_dim, batch=batch, block_size=block_size, need_scores=need_scores)
    linear = linear_attention_bytes(max_len, heads, head_dim, batch=batch, features=features)
    shape = f"batch {batch} x max_len {max_len} x {heads} heads x width {head_dim}"
    what = "exact attention with the dense L x L scores" if need_scores else "exact attention (tiled, O(L) memory)"
    common = dict(max_len=max_len, exact_bytes=exact, linear_bytes=linear, memory_budget=budget, exact_max_len=limit)
    if max_len <= limit and exact <= budget:
        return Selection(
            AttentionType.FLASH,
            f"flash (exact attention): for {shape}, max_len {max_len} <= exact_max_len {limit} and "
            f"{what} needs about {_fmt(exact)}, within the memory budget of {_fmt(budget)}.",
            **common,
        )
    why = (
        f"max_len {max_len} > exact_max_len {limit} (exact attention's O(L^2 D) time is L/D = "
        f"{max_len / head_dim:.0f} times linear attention's O(L D^2))"
        if max_len > limit
        else f"{what} would need about {_fmt(exact)}, over the memory budget of {_fmt(budget)}"
    )
    if linear <= budget:
        return Selection(
            AttentionType.LINEAR,
            f"linear attention: for {shape}, {why}; linear attention needs about {_fmt(linear)}.",
            **common,
        )
    raise ConfigError(
        f"memory_budget: for {shape}, {why}, and even linear attention needs about {_fmt(linear)}, "
        f"over the budget of {_fmt(budget)}; raise memory_budget or lower max_len or batch"
    )
