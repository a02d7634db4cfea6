"""Every registered mechanism computes through the array API alone.

``array_api_strict`` is a minimal implementation of the standard that rejects anything NumPy allows
beyond it (implicit flat indexing, ``finfo.tiny``, mixing with NumPy arrays...). Running each
mechanism's own sample inputs through it checks that the generic path is really generic, that the
result comes back as a strict array of the input dtype, and that it equals the NumPy result.
"""

from __future__ import annotations

import numpy as np
import pytest

from attnkit.mechanisms import registry

xps = pytest.importorskip("array_api_strict")

#: constructor options for mechanisms whose constructors need some (small sizes keep this fast)
OPTIONS: dict[str, dict] = {
    "flash": {"heads": 2, "dim": 8},
    "linear": {"dim": 8, "heads": 2, "feature_map": "favor", "causal": True, "seed": 0},
    "local_global": {"dim": 8, "heads": 2, "window": 4, "global_tokens": 1},
    "multi_head": {"model_dim": 8, "heads": 2, "seed": 0},
    "self": {"model_dim": 8, "heads": 2, "seed": 0},
    "cross": {"query_dim": 8, "key_dim": 4, "heads": 2, "seed": 0},
    "moe": {"dim": 8, "num_experts": 2, "top_k": 1, "seed": 0},
}


def _make(name: str):  # noqa: ANN202
    opts = OPTIONS.get(name)
    if opts is None:
        specs = {s.name for s in registry.option_specs(name)}
        opts = {"dim": 8} if "dim" in specs else {}
        if "seed" in specs:
            opts["seed"] = 0
    return registry.create(name, **opts)


@pytest.mark.parametrize("name", registry.names())
def test_mechanism_runs_on_array_api_strict(name: str) -> None:
    mech = _make(name)
    inputs = mech.sample_inputs(6, np.random.default_rng(0))
    expected = np.asarray(mech.forward(*inputs))
    strict_inputs = tuple(xps.asarray(x) if x.dtype.kind == "f" else x for x in inputs)
    out = mech.forward(*strict_inputs)
    assert type(out).__module__.startswith("array_api_strict"), type(out)
    assert out.dtype == xps.float32
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-6)
