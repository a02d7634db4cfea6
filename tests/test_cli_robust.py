"""The command line under bad values and hostile inputs (issue 13): it never overwrites an input
(however the path is spelled), reads streams and devices with a bound, writes no NaN with exit 0, and
every bad value exits 2 with exactly one line on stderr (``serve`` checks everything before it
prints or binds anything)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

FLASH = ["compute", "--type", "flash", "--heads", "2", "--dim", "8"]


def cli(*args: str, env: dict[str, str] | None = None, stdin: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "ATTNKIT_MAX_INPUT_BYTES": str(1 << 20), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "attnkit.cli", *args], input=stdin if stdin is not None else b"", capture_output=True,
        env=full_env, cwd=cwd, timeout=120,
    )  # fmt: skip


def assert_exit_2_one_line(r: subprocess.CompletedProcess, *words: str) -> str:
    err = r.stderr.decode()
    assert r.returncode == 2, (r.returncode, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("attnkit"), err
    assert "internal error" not in err and "serving on" not in err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture()
def files(tmp_path: Path) -> Path:
    np.save(tmp_path / "q.npy", np.random.default_rng(0).standard_normal((4, 2, 8)).astype("f4"))
    (tmp_path / "link.npy").symlink_to(tmp_path / "q.npy")
    os.link(tmp_path / "q.npy", tmp_path / "hard.npy")
    (tmp_path / "sub").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    ("inp", "out", "flag"),
    [
        ("q.npy", "q.npy", "--output"),
        ("link.npy", "q.npy", "--output"),  # a symlink to the output
        ("q.npy", "link.npy", "--output"),  # the output is a symlink to the input
        ("hard.npy", "q.npy", "--output"),  # a hard link
        ("q.npy", "sub/../q.npy", "--output"),
        ("q.npy", "q.npy", "--heatmap"),
    ],
)
def test_compute_never_overwrites_an_input(files: Path, inp: str, out: str, flag: str) -> None:
    before = (files / "q.npy").read_bytes()
    r = cli(*FLASH, "-q", inp, flag, out, cwd=files)
    assert_exit_2_one_line(r, flag)
    assert (files / "q.npy").read_bytes() == before and (files / "q.npy").is_file() and not (files / "q.npy").is_symlink()


def test_convert_never_overwrites_its_input_through_a_link(files: Path) -> None:
    before = (files / "q.npy").read_bytes()
    assert_exit_2_one_line(cli("convert", "link.npy", "q.npy", cwd=files), "OUT")
    assert_exit_2_one_line(cli("convert", "q.npy", str(files / "sub" / ".." / "hard.npy"), cwd=files), "OUT")
    assert (files / "q.npy").read_bytes() == before


def test_device_files_and_stdin_are_read_with_a_bound(files: Path) -> None:
    assert_exit_2_one_line(cli(*FLASH, "-q", "/dev/zero", "--input-format", "raw"), "query", "more than 1048576 bytes")
    assert_exit_2_one_line(cli(*FLASH, "-q", "/dev/zero"), "query")
    assert_exit_2_one_line(cli(*FLASH, "-q", "-", "--input-format", "raw", stdin=b"\0" * (2 << 20)), "standard input")


def test_no_nan_output_with_exit_0(files: Path) -> None:
    big = (np.random.default_rng(1).standard_normal((4, 2, 8)) * 1e20).astype("f4")
    np.save(files / "big.npy", big)
    r = cli(*FLASH, "-q", "big.npy", "-o", "out.npy", cwd=files)
    if r.returncode == 0:  # a mechanism that computes the exact (finite) result
        assert np.isfinite(np.load(files / "out.npy")).all()
    else:
        assert_exit_2_one_line(r)
        assert not (files / "out.npy").exists()


def test_check_finite_output_refuses_nan() -> None:
    from attnkit.cli._common import check_finite_output
    from attnkit.errors import NonFiniteError

    check_finite_output(np.ones(3))
    with pytest.raises(NonFiniteError, match="output: the result holds 1 NaN"):
        check_finite_output(np.array([1.0, np.nan, 2.0]))


def _busy_port() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, s.getsockname()[1]


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        (["serve", "--timeout", "nan"], {}, ["request_timeout_s"]),
        (["serve", "--timeout", "inf"], {}, ["request_timeout_s"]),
        (["serve", "--workers", "0"], {}, ["workers"]),
        (["serve", "--host", "no such host!"], {}, ["host"]),
        (["serve", "--host", "999.1.1.1"], {}, ["host"]),
        (["serve", "--port", "70000"], {}, ["port"]),
        (["serve", "--limit", "queue=x"], {}, ["queue"]),
        (["serve"], {"ATTNKIT_SERVER_QUEUE": "abc"}, ["ATTNKIT_SERVER_QUEUE"]),
        (["serve"], {"ATTNKIT_SERVER_REQUEST_TIMEOUT_S": "nan"}, ["ATTNKIT_SERVER_REQUEST_TIMEOUT_S"]),
        (["serve"], {"ATTNKIT_SERVER_MAX_CONCURRENCY": "-1"}, ["ATTNKIT_SERVER_MAX_CONCURRENCY"]),
        (["serve"], {"ATTNKIT_SERVER_SETTINGS_JSON": "[1"}, ["ATTNKIT_SERVER_SETTINGS_JSON"]),
        (["serve"], {"ATTNKIT_SERVER_ISOLATION": "fork"}, ["isolation"]),
        (["compute", "--type", "flash", "--heads", "2", "--dim", "8", "--random", "4", "--seed", "-1"], {}, ["--seed"]),
        (["compute", "--type", "flash", "--heads", "2", "--dim", "8", "--random", "1000000000000"], {}, ["--random"]),
    ],
)
def test_bad_values_exit_2_with_one_line(args: list[str], env: dict[str, str], words: list[str]) -> None:
    pytest.importorskip("uvicorn")
    assert_exit_2_one_line(cli(*args, env=env), *words)


def test_serve_on_a_busy_port_exits_2_before_printing() -> None:
    pytest.importorskip("uvicorn")
    sock, port = _busy_port()
    with sock:
        assert_exit_2_one_line(cli("serve", "--port", str(port)), "port", str(port))
        r = subprocess.run([sys.executable, "-m", "attnkit.server", "--port", str(port)], capture_output=True, timeout=120)
        assert r.returncode == 2 and len(r.stderr.decode().strip().splitlines()) == 1, r.stderr
