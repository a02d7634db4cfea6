"""An empty batch or an empty query returns an empty result at once; an empty key set is an error (issue 13)."""

from __future__ import annotations

import time

import numpy as np
import pytest

import attnkit


@pytest.mark.parametrize("engine", ["numpy", "auto"])
def test_empty_batch_over_a_long_axis_returns_at_once(engine: str) -> None:
    mech = attnkit.FlashAttention(heads=2, dim=4, engine=engine)
    t0 = time.perf_counter()
    out = mech.forward(np.zeros((0, 2**20, 2, 4), np.float32))
    assert out.shape == (0, 2**20, 2, 4) and out.dtype == np.float32
    assert time.perf_counter() - t0 < 30  # was a tile loop over 2**20 empty rows (tens of seconds); generous under load


def test_empty_query_with_keys_gives_an_empty_result_and_empty_keys_raise() -> None:
    mech = attnkit.FlashAttention(heads=2, dim=4)
    k = np.ones((5, 2, 4), np.float32)
    out = mech.forward(np.zeros((0, 2, 4), np.float32), k, k)
    assert out.shape == (0, 2, 4)
    with pytest.raises(attnkit.ShapeError, match="^key: expected at least one key"):
        mech.forward(np.zeros((3, 2, 4), np.float32), k[:0], k[:0])
