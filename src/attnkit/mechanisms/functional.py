"""``functional_call``: a mechanism's forward with parameters given from outside.

The convention of ``torch.func.functional_call``: ``functional_call(mechanism, params, query, key,
value, mask=...)`` runs ``mechanism.forward`` with the arrays of ``params`` in place of the mechanism's
own, without changing the mechanism. ``params`` holds exactly the names of
:meth:`~attnkit.Mechanism.param_shapes` (those of :meth:`~attnkit.Mechanism.parameters`), in any
array library: torch tensors that require grad (gradients reach them), JAX arrays or tracers (under
``jax.jit`` / ``jax.grad``), NumPy arrays. NumPy inputs given with parameters of another library join
that library.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import array_api_compat
import numpy as np

from .._array import Array
from ..errors import ConfigError
from .base import Mechanism

__all__ = ["functional_call"]


def _library_of(params: Mapping[str, Any]) -> Any | None:
    """An array of ``params`` that is not NumPy (its library hosts the call), or ``None``."""
    for v in params.values():
        if array_api_compat.is_array_api_obj(v) and not isinstance(v, (np.ndarray, np.generic)):
            return v
    return None


def _join(x: Any, like: Any) -> Any:
    """A NumPy array (or Python sequence) ``x`` moved into ``like``'s library and device."""
    if x is None or isinstance(x, (bool, str)):
        return x  # a flag (need_weights=True) or a name is an option, not data
    if array_api_compat.is_array_api_obj(x) and not isinstance(x, (np.ndarray, np.generic)):
        return x  # already an array of some library (asked first: np.isscalar is not traceable by dynamo)
    if not (isinstance(x, (np.ndarray, list, tuple)) or np.isscalar(x)):
        return x
    xp = array_api_compat.array_namespace(like)
    arr = np.asarray(x)
    return xp.asarray(arr, device=array_api_compat.device(like))


def functional_call(
    mechanism: Mechanism, params: Mapping[str, Any], query: Any, key: Any = None, value: Any = None, *, mask: Any = None, **extras: Any
) -> Array:
    """``mechanism.forward(query, key, value, mask=mask, **extras)`` computed with ``params``.

    ``params`` must hold exactly the names of ``mechanism.param_shapes()`` with those shapes
    (:class:`~attnkit.errors.ConfigError` / :class:`~attnkit.errors.ShapeError` otherwise). The result is
    in the library of the inputs (or of the parameters, when the inputs are NumPy and the parameters
    are not), differentiable with respect to both where that library differentiates.
    """
    if not isinstance(mechanism, Mechanism):
        raise ConfigError(f"mechanism: expected an attnkit mechanism, got {type(mechanism).__name__}")
    mechanism._check_alive()
    checked = mechanism._check_params(params)
    host = _library_of(checked)
    if host is not None:
        query, key, value, mask = (_join(x, host) for x in (query, key, value, mask))
        extras = {n: _join(x, host) for n, x in extras.items()}
    return mechanism._forward(checked, query, key, value, mask=mask, **extras)
