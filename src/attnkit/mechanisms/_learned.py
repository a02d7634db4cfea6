"""Loading, saving and converting learned parameters (shared by the multi-head, graph and mixture-of-experts layers).

A mechanism using :class:`LearnedParams` keeps its parameters in ``self._params`` (NumPy arrays,
``torch.nn.Linear`` layout for matrices: ``(out, in)``) and lists their shapes in
``param_shapes()``. ``load_weights`` accepts safetensors bytes, a path (``.safetensors``, ``.npz``,
``.pt``) or a dict of arrays (NumPy or torch), exactly the set of tensors expected, with the right shapes,
finite; ``save_weights`` returns safetensors bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .._array import Array

__all__ = ["LearnedParams", "glorot"]


def glorot(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int) -> np.ndarray:
    """Xavier/Glorot uniform initialisation (Glorot & Bengio 2010) in float32."""
    bound = float(np.sqrt(6.0 / (fan_in + fan_out)))
    return rng.uniform(-bound, bound, shape).astype(np.float32)


class LearnedParams:
    """Mixin: ``load_weights``/``save_weights`` and cached conversion of parameters to the input's library."""

    _params: dict[str, np.ndarray]
    _cache: dict[str, Any]

    def load_weights(self, weights: Any) -> None:
        """Load parameters from safetensors bytes, a path or a dict of arrays (see the module docstring)."""
        from ..weights import load_state

        self._check_alive()  # type: ignore[attr-defined]
        self._set_params(load_state(weights))

    def save_weights(self, path: str | Path | None = None) -> bytes:
        """The parameters as safetensors bytes; also written to ``path`` if given."""
        from ..weights import save_state

        self._check_alive()  # type: ignore[attr-defined]
        data = save_state(self._params)
        if path is not None:
            Path(path).write_bytes(data)
        return data

    def _weights_like(self, like: Array) -> dict[str, Array]:
        """This object's own parameters in ``like``'s library, device and dtype (cached until they change)."""
        return self._params_like(self._params, like)  # type: ignore[attr-defined]
