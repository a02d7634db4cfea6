"""Bad input through the ``attnkit`` entry point: exit code 2, one clear line on stderr naming what was
wrong, no traceback (unless -v); internal errors exit 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli_support import Runner, clean_env, one_error_line

from attnkit import io as aio


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of good and bad input files shared by the cases."""
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    q = rng.standard_normal((5, 2, 4)).astype(np.float32)
    np.save(d / "q.npy", q)
    np.save(d / "k6.npy", rng.standard_normal((6, 2, 4)).astype(np.float32))
    np.save(d / "v5.npy", rng.standard_normal((5, 2, 4)).astype(np.float32))
    np.save(d / "int.npy", np.ones((5, 2, 4), dtype=np.int32))
    nan = q.copy()
    nan[1, 0, 2] = np.nan
    np.save(d / "nan.npy", nan)
    np.save(d / "mask_bad.npy", np.ones((3, 7), dtype=bool))
    (d / "text.npy").write_text("[1, 2, 3]")
    (d / "cut.npy").write_bytes(aio.dumps(q, "npy")[:-7])
    (d / "bad.safetensors").write_bytes(b"\x20\x00\x00\x00\x00\x00\x00\x00{broken")
    (d / "odd.bin").write_bytes(b"\x00" * 10)
    (d / "twelve.bin").write_bytes(np.zeros(12, "<f4").tobytes())
    (d / "ragged.json").write_text("[[1, 2], [3]]")
    (d / "header.csv").write_text("a,b,c\n1,2,3\n")
    np.savez(d / "two.npz", a=np.ones(2, np.float32), b=np.zeros(2, np.float32))
    np.savez(d / "nokeys.npz", x=q)
    aio.write_arrays(
        d / "mha16.safetensors",
        {  # weights of a model_dim=16 layer
            f"{p}.{w}": np.zeros((16, 16) if w == "weight" else (16,), np.float32)
            for p in ("q_proj", "k_proj", "v_proj", "out_proj")
            for w in ("weight", "bias")
        },
    )
    (d / "attnkit.toml").write_text("")
    return d


C = ("compute", "--heads", "2", "--dim", "4")

# (arguments, words the one stderr line must contain)
CASES: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
    # mechanism selection and options
    (("compute", "--type", "nope", "--random", "4"), ("unknown mechanism 'nope'", "flash")),
    ((*C, "--random", "4", "--foo", "1"), ("--foo", "no such option for 'flash'")),
    ((*C, "--random", "4", "--opt", "heads"), ("--opt", "KEY=VALUE")),
    ((*C, "--random", "4", "-O", "nosuch=1"), ("nosuch", "not an option of 'flash'")),
    ((*C, "--random", "4", "--curvature", "1.0"), ("curvature", "not an option of 'flash'")),
    (("compute", "--heads", "0", "--random", "4"), ("heads", "positive integer")),
    (("compute", "--heads", "abc", "--random", "4"), ("--heads",)),
    (("compute", "-t", "linear", "--dim", "4", "--feature-map", "bogus", "--random", "4"), ("feature_map", "bogus")),
    ((*C, "--random", "4", "--block-size", "-3"), ("block_size",)),
    ((*C, "--random", "4", "-O", "heads=3"), ("--heads", "given twice")),
    # inputs
    ((*C,), ("query", "-q")),
    ((*C, "--random", "0"), ("--random", "positive")),
    ((*C, "--random", "4", "-q", "q.npy"), ("--random", "not both")),
    ((*C, "-k", "q.npy"), ("query", "give -q")),
    ((*C, "-q", "missing.npy"), ("query", "file not found", "missing.npy")),
    ((*C, "-q", "text.npy"), ("query", "not a .npy file", "json")),
    ((*C, "-q", "cut.npy"), ("query", "corrupt")),
    ((*C, "-q", "bad.safetensors"), ("query", "safetensors")),
    ((*C, "-q", "odd.bin"), ("query", "10 bytes", "float32")),
    ((*C, "-q", "twelve.bin", "--shape", "5,2,4"), ("query", "holds 12 values", "expected 40")),
    ((*C, "-q", "ragged.json"), ("query", "ragged")),
    ((*C, "-q", "header.csv"), ("query", "line 1, column 1", "header")),
    ((*C, "-q", "two.npz"), ("query", "holds 2 arrays", "two.npz:NAME")),
    ((*C, "-q", "two.npz:zz"), ("query", "no array 'zz'")),
    ((*C, "-i", "nokeys.npz"), ("inputs", "no query array")),
    ((*C, "-q", "q.npy", "--shape", "a,b"), ("--shape", "integers")),
    ((*C, "-q", "q.npy", "--shape", "w=5,2,4"), ("--shape", "unknown role 'w'")),
    ((*C, "-q", "q.npy", "--dtype", "int8"), ("--dtype", "float32")),
    ((*C, "-q", "q.npy", "--input-format", "xls"), ("format", "npy")),
    # shapes, dtypes, values
    ((*C, "-q", "q.npy", "-k", "k6.npy", "-v", "v5.npy"), ("v",)),
    ((*C, "-q", "int.npy"), ("q", "float")),
    ((*C, "-q", "nan.npy"), ("q", "finite", "nan")),
    ((*C, "-q", "q.npy", "-m", "mask_bad.npy"), ("mask",)),
    (("compute", "-t", "flash", "--heads", "4", "--dim", "4", "-q", "q.npy"), ("q", "4")),
    # outputs
    ((*C, "--random", "4", "-o", "no/such/dir/out.npy"), ("output", "directory does not exist")),
    ((*C, "--random", "4", "-o", "out.xyz"), ("format", "cannot tell", "out.xyz")),
    # weights
    (("compute", "-t", "multi_head", "--dim", "8", "--random", "4", "--weights", "missing.safetensors"), ("weights", "missing")),
    (("compute", "-t", "multi_head", "--dim", "8", "--random", "4", "--weights", "mha16.safetensors"), ("weights", "shape")),
    # convert
    (("convert", "missing.npy", "out.npz"), ("input", "file not found")),
    (("convert", "q.npy", "q.npy"), ("OUT", "is the input file")),
    (("convert", "q.npy", "out.npz", "--from", "excel"), ("--from", "torch-mha")),
    (("convert", "q.npy", "out.safetensors", "--to", "torch-mha"), ("--to torch-mha", "no attention weights")),
    (("convert", "two.npz", "one.npy"), ("output", "npy holds one array")),
    (("convert", "q.npy", "out.unknown"), ("format", "cannot tell")),
    (("convert", "text.npy", "out.json"), ("input", "not a .npy file")),
    # benchmark
    (("benchmark", "--dims", "0"), ("--dims", "positive")),
    (("benchmark", "--dims", "a,b"), ("--dims", "integers")),
    (("benchmark", "--types", "nope"), ("unknown mechanism 'nope'",)),
    (("benchmark", "--types", "flash", "--compare", "jax"), ("--compare", "torch")),
    (("benchmark", "--types", "flash", "-o", "r.txt"), ("--output", ".json or .csv")),
    (("benchmark", "--types", "flash", "-O", "nosuch=1"), ("--opt nosuch", "flash")),
    (("benchmark", "--types", "flash", "--iterations", "0"), ("--iterations",)),
    # global, config, other commands
    (("nope",), ("No such command",)),
    (("--log-format", "xml", "info"), ("--log-format", "text")),
    (("--config", "missing.toml", "info"), ("--config", "file not found")),
    (("mechanisms", "nope"), ("unknown mechanism 'nope'",)),
    (("config", "init"), ("exists", "--force")),
    (("serve", "--port", "70000"), ("port", "65535")),
    (("serve", "--limit", "nosuch=1"), ("nosuch", "server setting")),
    (("serve", "--inline-max-flops", "-1"), ("inline_max_flops", "non-negative")),
    (("serve", "--http", "h2"), ("http", "httptools", "'h2'")),
    (("serve", "--loop", "trio"), ("loop", "uvloop", "'trio'")),
    (("demo", "--length", "0"), ("--length", "positive")),
    (("compute", "--random", "4", "extra"), ("unexpected argument 'extra'",)),
]


def test_there_are_at_least_30_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize(("args", "words"), CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_exits_2_with_one_clear_line(files: Path, args: tuple[str, ...], words: tuple[str, ...]):
    if args[0] == "serve":
        pytest.importorskip("fastapi")
        pytest.importorskip("uvicorn")
    line = one_error_line(Runner(files)(*args, timeout=60))
    for w in words:
        assert w.lower() in line.lower(), f"{w!r} not in: {line}"
    assert line.startswith("attnkit")


def test_missing_config_from_environment(tmp_path: Path):
    env = clean_env(tmp_path, ATTNKIT_CONFIG=str(tmp_path / "nope.toml"))
    line = one_error_line(Runner(tmp_path)("info", env=env))
    assert "ATTNKIT_CONFIG: file not found" in line


def test_verbose_shows_the_traceback(tmp_path: Path):
    proc = Runner(tmp_path)("-v", "compute", "--random", "4", "--heads", "0")
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and proc.stderr.rstrip().endswith("heads: expected a positive integer, got 0")


def test_internal_error_is_exit_1_without_traceback(tmp_path: Path):
    code = (
        "import attnkit.cli.compute as c\n"
        "def boom(*a, **k):\n    raise RuntimeError('simulated bug')\n"
        "c.run_compute = boom\n"
        "from attnkit.cli import main\nraise SystemExit(main({argv}))\n"
    )
    env = clean_env(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", code.format(argv=["compute", "--random", "4"])], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    line = one_error_line(proc, code=1)
    assert "internal error: RuntimeError: simulated bug" in line and "-v" in line
    proc = subprocess.run(
        [sys.executable, "-c", code.format(argv=["-v", "compute", "--random", "4"])], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert proc.returncode == 1 and "Traceback" in proc.stderr
