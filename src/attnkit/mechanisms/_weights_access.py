"""Find a mechanism's attention weights generically, for every front end (CLI, server, ...).

Mechanisms expose their attention probabilities ``softmax(scores + mask)`` in one of three ways:

* ``attention_scores(q, k=None, mask=None)`` (FlashAttention, LocalGlobalAttention: ``(..., H, Lq, Lk)``),
* ``attention_weights(q, keys, mask=None)`` (HyperbolicAttention, ScaledDotProduct, MixedCurvature...),
* ``get_attention_weights()``: those of the last ``forward`` (MultiHeadAttention, CrossAttention,
  SelfAttention, which compute them from learned projections of the inputs).

A method with another signature (a graph form taking ``edge_index``) does not count: it cannot be
driven by forward's ``(query, keys)``. This module holds the one copy of that lookup.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

from ..errors import ConfigError

__all__ = ["WEIGHT_METHODS", "weights_method", "has_weights", "weights_from_forward", "attention_weights"]

#: the method names looked for, in order
WEIGHT_METHODS = ("attention_weights", "attention_scores", "get_attention_weights")
#: parameter names that mark a weights method as taking (query, keys) like forward
_QUERY_NAMES = ("q", "query", "queries", "x")
_KEY_NAMES = ("k", "key", "keys", "neighbours", "neighbors")


def weights_method(mech: Any) -> tuple[Any, list[str]] | None:
    """The method giving attention weights for forward-style inputs and its positional parameter
    names (empty for ``get_attention_weights()``), or ``None`` when the mechanism has none.

    ``mech`` is an instance (the method comes back bound) or a mechanism class (the function comes
    back unbound, and ``self`` is not among the names)."""
    is_class = inspect.isclass(mech)
    for meth in WEIGHT_METHODS:
        f = getattr(mech, meth, None)
        if not callable(f):
            continue
        params = inspect.signature(f).parameters
        positional = [p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if is_class and not isinstance(inspect.getattr_static(mech, meth), (staticmethod, classmethod)):
            positional = positional[1:]
        names = [p.name for p in positional]
        if not positional:
            return f, names
        if names[0] in _QUERY_NAMES and (len(names) == 1 or names[1] in _KEY_NAMES or positional[1].default is not positional[1].empty):
            return f, names
    return None


def has_weights(mech: Any) -> bool:
    """Whether :func:`attention_weights` can get weights from ``mech`` (an instance or a class)."""
    return weights_method(mech) is not None


def weights_from_forward(mech: Any) -> bool:
    """Whether ``mech``'s weights are those of its last ``forward`` (``get_attention_weights()``)."""
    found = weights_method(mech)
    return found is not None and not found[1]


def _isolated(mech: Any) -> Any:
    """A shallow copy of ``mech`` with its own cache dict: it shares the (read-only) learned weights
    and options, but its ``forward`` stores the attention weights in its own cache, so threads sharing
    ``mech`` cannot overwrite each other's weights between ``forward`` and ``get_attention_weights``."""
    view = copy.copy(mech)
    cache = getattr(mech, "_cache", None)
    if isinstance(cache, dict):
        view._cache = {k: v for k, v in cache.items() if k != "weights"}
    return view


def attention_weights(
    mech: Any, q: Any, k: Any = None, mask: Any = None, *, values: Any = None, run_forward: bool = False, field: str = "mechanism"
) -> Any:
    """The attention probabilities of ``mech`` for these inputs.

    A method ``attention_weights``/``attention_scores`` taking the query (and keys) is called with
    ``q``, ``k`` and ``mask``; keys left out default to the query. For mechanisms that keep the weights of their last forward
    (``get_attention_weights()``): with ``run_forward=False`` those are returned as they are (call
    ``forward`` with the same inputs first); with ``run_forward=True``, ``forward(q, k, values, mask)``
    runs first on a private shallow copy of ``mech``, which makes the call safe while other threads use
    ``mech``. ``field`` names the caller's argument in the error raised when ``mech`` has no weights.
    """
    found = weights_method(mech)
    if found is None:
        raise ConfigError(
            f"{field}: mechanism {getattr(mech, 'name', type(mech).__name__)!r} exposes no attention weights "
            f"for its forward inputs (no method {', '.join(WEIGHT_METHODS)} taking (query, keys))"
        )
    f, names = found
    if not names:
        if not run_forward:
            return f()
        view = _isolated(mech)
        view.forward(q, k, values, mask=mask)
        return getattr(view, f.__name__)()
    args: list[Any] = [q]
    if len(names) >= 2 and names[1] in _KEY_NAMES:
        if k is None and inspect.signature(f).parameters[names[1]].default is inspect.Parameter.empty:
            k = q  # keys default to the query (self-attention), also where the method requires them
        if k is not None:
            args.append(k)
    kwargs: dict[str, Any] = {}
    if mask is not None:
        if "mask" not in inspect.signature(f).parameters:
            raise ConfigError(f"mask: {getattr(mech, 'name', type(mech).__name__)}.{f.__name__} takes no mask; pass none")
        kwargs["mask"] = mask
    return f(*args, **kwargs)
