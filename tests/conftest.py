"""Shared fixtures and the independent float64 reference for the core test suite.

``ref_attention`` is the oracle every exact mechanism is checked against. It is written plainly
(one query row at a time, float64, no tiling, no tricks) so that it shares no code and no shortcut
with attnkit's kernels:

    out[i] = sum_j softmax_j(scale * q_i . k_j + bias_ij) v_j

with bool masks (True = may attend), float masks (added to the scores), bottom-right causal
alignment (query i sees key j iff j <= i + Lk - Lq) and zeros for a query that sees no key.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import pytest

# "auto" picks NumPy's or torch's kernel from a calibration cached per machine and only where torch is
# already imported, so the same call could run a different kernel in the test process (torch imported)
# than in a server's worker (not imported), and differ in the last bit. The suite pins the NumPy engine;
# the tests of the engine choice itself (tests/test_engine.py) lift the pin.
os.environ.setdefault("ATTNKIT_ENGINE", "numpy")

# ---------------------------------------------------------------------------- tolerances
#: max |a - b| / max(1, max |ref|) allowed for float32 results (issue 2: 1e-5 relative to the output scale)
TOL32 = 1e-5
#: the same bound for float64 results
TOL64 = 1e-11
#: float16 results (10 mantissa bits)
TOL16 = 2e-3


def rel_err(actual: object, expected: object) -> float:
    """max |a - b| / max(1, max |expected|), computed in float64 on the host."""
    a = to_np(actual).astype(np.float64)
    e = to_np(expected).astype(np.float64)
    assert a.shape == e.shape, f"shape {a.shape} != expected {e.shape}"
    assert np.isfinite(a).all(), "result holds NaN or infinity"
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - e)) / max(1.0, float(np.max(np.abs(e)))))


def assert_close(actual: object, expected: object, tol: float) -> None:
    err = rel_err(actual, expected)
    assert err <= tol, f"relative max error {err:.3e} > {tol:.1e}"


def tol_for(dtype: object) -> float:
    if isinstance(dtype, type) and issubclass(dtype, np.generic):
        dtype = np.dtype(dtype)
    name = str(dtype).replace("torch.", "")
    return {"float32": TOL32, "float64": TOL64, "float16": TOL16}[name]


# ---------------------------------------------------------------------------- conversions
def to_np(x: object) -> np.ndarray:
    """Any array (NumPy, torch, list) as a NumPy array on the host."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def to_torch(x: np.ndarray, dtype: object = None):  # noqa: ANN201 - torch is imported lazily
    """NumPy -> torch tensor (float32 by default for float input)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x))
    if dtype is not None:
        t = t.to(dtype)
    return t


# ---------------------------------------------------------------------------- the reference
def lower_right_mask(lq: int, lk: int) -> np.ndarray:
    """Bool (Lq, Lk), True where query i may see key j under bottom-right causal alignment."""
    m = np.zeros((lq, lk), dtype=bool)
    for i in range(lq):
        for j in range(lk):
            m[i, j] = j <= i + (lk - lq)
    return m


def ref_weights(q: np.ndarray, k: np.ndarray, mask: np.ndarray | None = None, causal: bool = False, scale: float | None = None) -> np.ndarray:
    """Attention probabilities ``(..., Lq, Lk)`` for heads-first ``q (..., Lq, D)``, ``k (..., Lk, D)``."""
    q = np.asarray(q, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    d = q.shape[-1]
    scale = 1.0 / np.sqrt(d) if scale is None else float(scale)
    lq, lk = q.shape[-2], k.shape[-2]
    s = np.einsum("...id,...jd->...ij", q, k) * scale
    bias = np.zeros((lq, lk))
    if causal:
        bias = np.where(lower_right_mask(lq, lk), 0.0, -np.inf)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype == bool:
            mbias = np.where(mask, 0.0, -np.inf)
        else:
            mbias = mask.astype(np.float64)
        bias = bias + mbias
    s = s + bias
    out = np.zeros(s.shape)
    flat_s = s.reshape(-1, lk)
    flat_o = out.reshape(-1, lk)
    for r in range(flat_s.shape[0]):
        row = flat_s[r]
        if np.all(np.isneginf(row)):
            continue  # a query that sees no key: zeros
        e = np.exp(row - row.max())
        flat_o[r] = e / e.sum()
    return out


def ref_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None, causal: bool = False, scale: float | None = None
) -> np.ndarray:
    """float64 attention for heads-first ``q (..., Lq, D)``, ``k (..., Lk, D)``, ``v (..., Lk, Dv)``.

    Batch dimensions (and the mask, against ``(..., Lq, Lk)``) broadcast as in NumPy.
    """
    w = ref_weights(q, k, mask, causal, scale)
    return np.einsum("...ij,...jd->...id", w, np.asarray(v, dtype=np.float64))


def ref_seq_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None, causal: bool = False, scale: float | None = None
) -> np.ndarray:
    """The reference in attnkit's sequence layout ``(..., L, H, D)`` (mask against ``(..., H, Lq, Lk)``)."""
    qh, kh, vh = (np.moveaxis(np.asarray(x, dtype=np.float64), -3, -2) for x in (q, k, v))
    return np.moveaxis(ref_attention(qh, kh, vh, mask, causal, scale), -3, -2)


def ref_mha(
    x_q: np.ndarray, x_k: np.ndarray, x_v: np.ndarray, params: dict[str, np.ndarray], heads: int, mask: np.ndarray | None = None, causal: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """float64 multi-head attention with attnkit-layout weights; returns (output, per-head weights)."""
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}

    def proj(x: np.ndarray, name: str) -> np.ndarray:
        y = np.asarray(x, dtype=np.float64) @ p[f"{name}.weight"].T
        return y + p[f"{name}.bias"] if f"{name}.bias" in p else y

    def split(y: np.ndarray) -> np.ndarray:
        *lead, length, e = y.shape
        return np.moveaxis(y.reshape(*lead, length, heads, e // heads), -2, -3)

    qh, kh, vh = split(proj(x_q, "q_proj")), split(proj(x_k, "k_proj")), split(proj(x_v, "v_proj"))
    w = ref_weights(qh, kh, mask, causal)
    o = np.einsum("...ij,...jd->...id", w, vh)
    o = np.moveaxis(o, -3, -2)
    o = o.reshape(*o.shape[:-2], -1)
    return proj(o, "out_proj"), w


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator (the same numbers on every run)."""
    return np.random.default_rng(20240607)


def randn(rng: np.random.Generator, *shape: int, dtype: object = np.float64) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def seq_inputs(
    rng: np.random.Generator, lq: int, lk: int, heads: int, dim: int, dv: int | None = None, batch: Iterable[int] = (), dtype: object = np.float64
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random ``q (*batch, Lq, H, D)``, ``k (*batch, Lk, H, D)``, ``v (*batch, Lk, H, Dv)``."""
    b = tuple(batch)
    dv = dim if dv is None else dv
    return (randn(rng, *b, lq, heads, dim, dtype=dtype), randn(rng, *b, lk, heads, dim, dtype=dtype), randn(rng, *b, lk, heads, dv, dtype=dtype))


# Keep hypothesis quick and deterministic on the shared 2-core machine.
try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "attnkit",
        max_examples=40,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    # HYPOTHESIS_PROFILE=thorough for a longer, randomised hunt
    settings.register_profile("thorough", max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "attnkit"))
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    pass
