"""``attnkit repl`` driven over stdin in a subprocess, as a script would drive it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import ref_seq_attention
from test_cli_support import Runner, ok

from attnkit import io as aio


def test_repl_session_create_load_run_save_inspect(tmp_path: Path):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((5, 2, 4)).astype(np.float32)
    np.savez(tmp_path / "in.npz", q=q, k=q[::-1].copy(), v=q * 2)
    script = (
        "\n".join(
            [
                "help",
                "help run",
                "mechanisms",
                "create flash heads=2 dim=4 causal=true",
                "options",
                "load in.npz",  # every array of the archive becomes a variable
                "show",
                "run",  # q k v by default -> out
                "save out out.npy",
                "weights",
                "set causal=false",
                "run q k v out=free",
                "save all.safetensors",
                "random 3 seed=1",
                "run",
                "print out",
                "history",
                "quit",
                "show",  # after quit: never runs
            ]
        )
        + "\n"
    )
    proc = ok(Runner(tmp_path)("repl", input=script))
    out = proc.stdout
    assert proc.stderr == ""
    assert "commands:" in out and "run [Q [K [V]]]" in out
    assert "created FlashAttention(heads=2, dim=4" in out and "causal=True" in out
    assert "q(5, 2, 4) k(5, 2, 4) v(5, 2, 4)" in out
    assert "out(5, 2, 4) float32 in" in out
    assert "weights(2, 5, 5): rows sum to 1.000000..1.000000" in out
    assert "q(3, 2, 4) k(3, 2, 4) v(3, 2, 4)" in out  # random 3
    assert "   1  help" in out and "  16  print out" in out and "  17  " not in out  # history lists earlier commands
    # the loaded data was used (the upstream repl ignored it): compare with the float64 reference
    k, v = q[::-1], q * 2
    assert np.max(np.abs(np.load(tmp_path / "out.npy") - ref_seq_attention(q, k, v, causal=True))) < 1e-5
    saved = aio.read_arrays(tmp_path / "all.safetensors")
    assert set(saved) >= {"q", "k", "v", "out", "free", "weights"}
    assert np.max(np.abs(saved["free"] - ref_seq_attention(q, k, v))) < 1e-5


def test_repl_errors_keep_the_session_and_set_exit_code(tmp_path: Path):
    script = (
        "\n".join(
            [
                "run",  # no mechanism yet
                "create nope",  # unknown mechanism
                "create hyperbolic dim=3 curvature=abc",
                "create hyperbolic dim=3",
                "run",  # no q yet
                "load q missing.npy",
                "frobnicate",
                "random 4",
                "run",
                "weights w.png",
                "show out",
            ]
        )
        + "\n"
    )
    proc = Runner(tmp_path)("repl", input=script)
    assert proc.returncode == 2  # some commands failed
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 6 and all(e.startswith("error: ") for e in errors)
    assert "create one first" in errors[0]
    assert "unknown mechanism 'nope'" in errors[1]
    assert "curvature" in errors[2]
    assert "no q defined" in errors[3]
    assert "file not found" in errors[4]
    assert "unknown command 'frobnicate'" in errors[5]
    assert "out(4, 3) float32" in proc.stdout  # the session went on after the errors
    assert "weights(4, 4)" in proc.stdout


def test_repl_start_with_type_and_eof_ends(tmp_path: Path):
    proc = ok(Runner(tmp_path)("repl", "--type", "linear", input="random 4\nrun\n"))
    assert "created LinearAttention" in proc.stdout and "out(4, 8, 32)" in proc.stdout


def test_repl_on_a_terminal_uses_prompt_toolkit_with_history(tmp_path: Path):
    """On a pseudo-terminal: the prompt, the commands, and the history file in the user state dir."""
    import os
    import select
    import time

    import pytest

    pty = pytest.importorskip("pty")
    from test_cli_support import clean_env, command

    env = clean_env(tmp_path, PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm")
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec the entry point on the terminal
        os.chdir(tmp_path)
        os.execvpe(command()[0], [*command(), "repl"], env)
    seen = b""

    def wait_for(marker: bytes, timeout: float = 60.0) -> None:
        nonlocal seen
        end = time.time() + timeout
        while marker not in seen and time.time() < end:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(fd, 65536)
                except OSError:
                    break
        assert marker in seen, f"{marker!r} never appeared in:\n{seen.decode(errors='replace')}"

    try:
        wait_for(b"attnkit>")
        for line, marker in ((b"create flash heads=1 dim=2", b"created FlashAttention"), (b"random 3", b"q(3, 1, 2)"), (b"run", b"out(3, 1, 2)")):
            os.write(fd, line + b"\r")
            wait_for(marker)
        os.write(fd, b"quit\r")
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, seen.decode(errors="replace")
    history = (tmp_path / ".xdg-state" / "attnkit" / "repl_history").read_text()
    assert "+random 3" in history and "+run" in history
