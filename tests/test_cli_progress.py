"""``attnkit compute``: the spinner that appears once a computation has run a second (terminals only),
and values that default to the keys, as ``--values`` documents."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
from conftest import ref_seq_attention
from test_cli_support import Runner, ok

from attnkit.cli._common import progress_after


def _console(terminal: bool):  # noqa: ANN202 - rich is imported lazily
    from rich.console import Console

    buf = io.StringIO()
    return Console(file=buf, force_terminal=terminal, width=80), buf


def test_spinner_appears_after_the_delay_on_a_terminal():
    con, buf = _console(True)
    with progress_after(0.01, "computing flash ...", con):
        time.sleep(1.0)  # the spinner started long before this ends
    assert "computing flash" in buf.getvalue()


def test_no_spinner_for_quick_work_or_off_a_terminal():
    con, buf = _console(True)
    with progress_after(60.0, "computing flash ...", con):
        pass
    assert buf.getvalue() == ""
    con, buf = _console(False)
    with progress_after(0.0, "computing flash ...", con):
        time.sleep(0.3)
    assert buf.getvalue() == ""


def test_values_default_to_the_keys(tmp_path: Path):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((8, 2, 4))
    k = rng.standard_normal((11, 2, 4))
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "k.npy", k)
    run = Runner(tmp_path)
    proc = run("compute", "-t", "flash", "--heads", "2", "--dim", "4", "-q", "q.npy", "-k", "k.npy", "-o", "o.npy")
    ok(proc)
    assert "computing" not in proc.stderr  # not a terminal: no spinner
    out = np.load(tmp_path / "o.npy")
    np.testing.assert_allclose(out, ref_seq_attention(q, k, k), atol=1e-12)
