"""Loading, saving and converting learned parameters (shared by the multi-head, graph and mixture-of-experts layers).

A mechanism using :class:`LearnedParams` keeps its parameters in ``self._params`` (NumPy arrays,
``torch.nn.Linear`` layout for matrices: ``(out, in)``) and lists their shapes in
``_expected_shapes()``. ``load_weights`` accepts safetensors bytes, a path (``.safetensors``, ``.npz``,
``.pt``) or a dict of arrays (NumPy or torch), exactly the set of tensors expected, with the right shapes,
finite; ``save_weights`` returns safetensors bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .._array import Array, shape_str
from ..errors import ConfigError, ShapeError
from .base import numpy_params

__all__ = ["LearnedParams", "glorot"]


def glorot(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int) -> np.ndarray:
    """Xavier/Glorot uniform initialisation (Glorot & Bengio 2010) in float32."""
    bound = float(np.sqrt(6.0 / (fan_in + fan_out)))
    return rng.uniform(-bound, bound, shape).astype(np.float32)


class LearnedParams:
    """Mixin: ``load_weights``/``save_weights`` and cached conversion of parameters to the input's library."""

    _params: dict[str, np.ndarray]
    _cache: dict[str, Any]

    def _expected_shapes(self) -> dict[str, tuple[int, ...]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_weights(self, weights: Any) -> None:
        """Load parameters from safetensors bytes, a path or a dict of arrays (see the module docstring)."""
        from ..weights import load_state

        self._check_alive()  # type: ignore[attr-defined]
        self._set_params(load_state(weights))

    def _set_params(self, params: dict[str, Any]) -> None:
        """Check ``params`` against ``_expected_shapes()`` (names, shapes, float, finite) and adopt them."""
        expected = self._expected_shapes()
        extra = sorted(set(params) - set(expected))
        if extra:
            hint = " (this layer has bias=False)" if extra[0].endswith(".bias") and getattr(self, "bias", True) is False else ""
            raise ConfigError(f"weights: unexpected tensor {extra[0]!r}{hint}; expected {', '.join(sorted(expected))}")
        new: dict[str, np.ndarray] = {}
        for key, shape in expected.items():
            if key not in params:
                raise ConfigError(f"weights: tensor {key!r} is missing (expected shape {shape_str(shape)})")
            arr = np.asarray(params[key])
            if tuple(arr.shape) != tuple(shape):
                raise ShapeError(f"weights: {key} expected shape {shape_str(shape)}, got {shape_str(arr.shape)}")
            if arr.dtype.kind != "f":
                raise ConfigError(f"weights: {key} expected a float tensor, got {arr.dtype}")
            if not np.isfinite(arr).all():
                raise ConfigError(f"weights: {key} holds NaN or infinity")
            new[key] = np.array(arr, dtype=np.float64 if arr.dtype == np.float64 else np.float32)
        self._params = new
        self._cache.pop("converted", None)

    def save_weights(self, path: str | Path | None = None) -> bytes:
        """The parameters as safetensors bytes; also written to ``path`` if given."""
        from ..weights import save_state

        self._check_alive()  # type: ignore[attr-defined]
        data = save_state(self._params)
        if path is not None:
            Path(path).write_bytes(data)
        return data

    def _weights_like(self, like: Array) -> dict[str, Array]:
        """Parameters in ``like``'s library, device and dtype (cached until the weights change)."""
        key = (type(like), str(getattr(like, "device", "cpu")), str(like.dtype))
        cached = self._cache.get("converted")
        if cached is None or cached[0] != key:
            cached = (key, numpy_params(self._params, like))
            self._cache["converted"] = cached
        return cached[1]
