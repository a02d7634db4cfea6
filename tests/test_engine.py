"""Engine choice for NumPy inputs (issue 16): attnkit's NumPy path and torch's fused kernel agree, the
choice follows the option, the environment and a cached calibration, and "auto" never imports torch
for small work. No timings are asserted."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from attnkit import FlashAttention
from attnkit.errors import ConfigError
from attnkit.kernels import engine as eng

torch = pytest.importorskip("torch")


def reference(q, k, v, scale, mask=None, causal=False):
    q, k, v = (np.moveaxis(np.asarray(t, dtype=np.float64), -3, -2) for t in (q, k, v))
    s = scale * q @ np.swapaxes(k, -1, -2)
    lq, lk = s.shape[-2:]
    if causal:
        s = np.where(np.tri(lq, lk, lk - lq, dtype=bool), s, -np.inf)
    if mask is not None:
        s = np.where(mask, s, -np.inf)
    m = s.max(-1, keepdims=True)
    e = np.exp(s - np.where(np.isfinite(m), m, 0))
    z = e.sum(-1, keepdims=True)
    return np.moveaxis(np.where(z > 0, e / np.where(z > 0, z, 1), 0) @ v, -3, -2)


@pytest.fixture
def torch_calls(monkeypatch):
    calls = []
    real = eng.sdpa_torch_numpy
    monkeypatch.setattr(eng, "sdpa_torch_numpy", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    return calls


@pytest.mark.parametrize("shape", [(50, 2, 16), (2, 33, 2, 16)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_engines_agree_with_the_reference(shape, causal, masked, torch_calls):
    rng = np.random.default_rng(len(shape))
    q, k, v = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    L = shape[-3]
    mask = None
    if masked:
        mask = rng.random((L, L)) < 0.7
        mask[3] = False  # a fully masked query: zeros
    ref = reference(q, k, v, 0.25, mask, causal)
    outs = {}
    for name in ("numpy", "torch"):
        before = len(torch_calls)
        outs[name] = FlashAttention(heads=2, dim=16, causal=causal, engine=name)(q, k, v, mask=mask)
        assert (len(torch_calls) > before) == (name == "torch")
        assert isinstance(outs[name], np.ndarray) and outs[name].dtype == np.float32
        np.testing.assert_allclose(outs[name], ref, rtol=0, atol=3e-6)
    np.testing.assert_allclose(outs["numpy"], outs["torch"], rtol=0, atol=3e-6)


def test_auto_follows_the_calibration_and_the_environment(monkeypatch, torch_calls):
    monkeypatch.delenv("ATTNKIT_ENGINE", raising=False)  # the suite's pin (conftest) lifted
    q = np.random.default_rng(1).standard_normal((64, 2, 16)).astype(np.float32)
    m = FlashAttention(heads=2, dim=16)  # engine="auto"
    monkeypatch.setattr(eng, "_calibration", {"10.0": 2.0, "20.0": 2.0})  # torch twice as fast everywhere
    m(q)
    assert len(torch_calls) == 1  # torch is imported here, so auto may use it
    monkeypatch.setattr(eng, "_calibration", {"10.0": 0.5, "20.0": 0.5})  # NumPy faster
    m(q)
    assert len(torch_calls) == 1
    monkeypatch.setenv("ATTNKIT_ENGINE", "torch")  # the documented override of "auto"
    m(q)
    assert len(torch_calls) == 2
    FlashAttention(heads=2, dim=16, engine="numpy")(q)  # an explicit engine beats the environment
    assert len(torch_calls) == 2


def test_auto_reads_the_points_of_its_own_masking(monkeypatch, torch_calls):
    """Causal calls follow the causal calibration points, others the unmasked ones (the nearest by work)."""
    monkeypatch.delenv("ATTNKIT_ENGINE", raising=False)
    monkeypatch.setattr(eng, "_calibration", {"10.0": 2.0, "30.0": 0.5, "causal:10.0": 0.5, "causal:30.0": 2.0})
    assert eng.choose_engine("auto", work=math.exp(11), dtype=np.float32) == "torch"
    assert eng.choose_engine("auto", work=math.exp(11), dtype=np.float32, causal=True) == "numpy"
    assert eng.choose_engine("auto", work=math.exp(29), dtype=np.float32) == "numpy"
    assert eng.choose_engine("auto", work=math.exp(29), dtype=np.float32, causal=True) == "torch"
    q = np.random.default_rng(2).standard_normal((64, 2, 16)).astype(np.float32)  # work 4*2*64*64*16: near e^11.9
    FlashAttention(heads=2, dim=16, causal=True)(q)
    assert len(torch_calls) == 0
    FlashAttention(heads=2, dim=16)(q)
    assert len(torch_calls) == 1
    monkeypatch.setattr(eng, "_calibration", {"10.0": 0.5})  # no causal point: the unmasked ones serve
    assert eng.choose_engine("auto", work=math.exp(11), dtype=np.float32, causal=True) == "numpy"


def test_calibration_is_cached_per_machine(monkeypatch, tmp_path):
    monkeypatch.setattr(eng, "cache_path", lambda: tmp_path / "engine.json")
    monkeypatch.setattr(eng, "_calibration", None)
    monkeypatch.setattr(eng, "_measure", lambda: ({"17.0": 1.5}, True))
    assert eng.calibration() == {"17.0": 1.5}
    stored = json.loads((tmp_path / "engine.json").read_text())
    assert stored["ratios"] == {"17.0": 1.5} and eng.cpu_model() in stored["key"]
    monkeypatch.setattr(eng, "_calibration", None)  # a new process: read back, not measured again
    monkeypatch.setattr(eng, "_measure", lambda: pytest.fail("measured again"))
    assert eng.calibration() == {"17.0": 1.5}
    stored["key"] = "another machine"
    (tmp_path / "engine.json").write_text(json.dumps(stored))
    monkeypatch.setattr(eng, "_calibration", None)
    monkeypatch.setattr(eng, "_measure", lambda: ({"17.0": 0.9}, True))
    assert eng.calibration() == {"17.0": 0.9}


def test_a_disturbed_calibration_is_not_stored(monkeypatch, tmp_path):
    """Measured while other processes stalled an engine: used by this process, never written to the cache."""
    path = tmp_path / "engine.json"
    monkeypatch.setattr(eng, "cache_path", lambda: path)
    monkeypatch.setattr(eng, "_calibration", None)
    monkeypatch.setattr(eng, "_measure", lambda: ({"17.0": 0.2}, False))
    assert eng.calibration() == {"17.0": 0.2}
    assert not path.exists()
    monkeypatch.setattr(eng, "_calibration", None)  # the next process measures again, and stores a steady result
    monkeypatch.setattr(eng, "_measure", lambda: ({"17.0": 1.8}, True))
    assert eng.calibration() == {"17.0": 1.8}
    assert json.loads(path.read_text())["ratios"] == {"17.0": 1.8}


def test_the_real_calibration_measures_both_points(monkeypatch, tmp_path):
    monkeypatch.setattr(eng, "cache_path", lambda: None)
    ratios, steady = eng._measure()
    assert len(ratios) == len(eng._POINTS) and all(r > 0 for r in ratios.values()) and isinstance(steady, bool)


def test_auto_does_not_import_torch_for_small_work():
    code = (
        "import sys, numpy as np\n"
        "from attnkit import FlashAttention\n"
        "q = np.ones((32, 2, 8), np.float32)\n"
        "FlashAttention(heads=2, dim=8)(q)\n"
        "assert 'torch' not in sys.modules, 'auto imported torch'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ATTNKIT_ENGINE"}  # "auto", not the suite's pin
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=env)


@pytest.mark.parametrize("bad", ["cuda", "", 3, None])
def test_bad_engine_raises_config_error_naming_it(bad):
    with pytest.raises(ConfigError, match="engine"):
        FlashAttention(heads=2, dim=8, engine=bad)


def test_torch_engine_without_torch_raises_config_error(monkeypatch):
    monkeypatch.setattr(eng, "torch_available", lambda: False)
    with pytest.raises(ConfigError, match="engine: 'torch' needs torch"):
        FlashAttention(heads=2, dim=8, engine="torch")
    assert FlashAttention(heads=2, dim=8, engine="auto").engine == "auto"
