"""Input validation shared by the training utilities (NumPy arrays, float64 math)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._array import as_float_array, check_finite, shape_str, to_numpy
from ..errors import ShapeError

__all__ = ["matrix", "vectors"]


def matrix(x: Any, name: str, ndims: tuple[int, ...], width: int | None = None) -> np.ndarray:
    """``x`` as a finite float64 NumPy array with one of the ``ndims`` and last axis ``width`` (if given)."""
    if x is None:
        raise ShapeError(f"{name}: expected an array, got None")
    if hasattr(x, "__array_namespace__") or hasattr(x, "detach"):
        x = to_numpy(x)
    arr = as_float_array(x, name)
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise ShapeError(f"{name}: expected a {want} array, got shape {shape_str(arr.shape)}")
    if width is not None and arr.shape[-1] != width:
        raise ShapeError(f"{name}: expected {width} features along the last axis (as anchor), got {arr.shape[-1]}")
    check_finite(arr, name, np)
    return arr


def vectors(x: Any, name: str, width: int | None = None) -> tuple[np.ndarray, bool]:
    """A ``(B, D)`` batch (a single ``(D,)`` vector becomes ``B = 1``) and whether it was single."""
    arr = matrix(x, name, (1, 2), width)
    if arr.shape[-1] == 0 or (arr.ndim == 2 and arr.shape[0] == 0):
        raise ShapeError(f"{name}: expected a non-empty array, got shape {shape_str(arr.shape)}")
    return (arr[None, :], True) if arr.ndim == 1 else (arr, False)
