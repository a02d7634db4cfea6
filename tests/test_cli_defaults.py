"""Every default a command's ``--help`` documents is the default it has.

The test renders ``attnkit CMD --help`` for every command, collects each documented default (an
option's ``[default: X]`` or ``(default: ...)`` in its help, or one in the command's description),
and runs the command relying on it, comparing the behaviour with what the help says (values taken
from the help text where it names one: a port, a length, a seed, a file name). A default documented
without a check here, or a check whose default is no longer documented, fails the test; so does a
help text that disagrees with the behaviour. The commands run in-process through
:func:`attnkit.cli.main` in a private working directory with no config file, unless a check writes one.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from attnkit.cli import main
from attnkit.cli._common import STATE
from attnkit.cli.commands import COMMANDS

SUBCOMMANDS = {"config": ("config show", "config init")}


class Cli:
    """``cli("compute", "--random", "4")`` -> (exit code, stdout, stderr), in-process, fresh state."""

    def __init__(self, cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.cwd = cwd
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        STATE.verbose, STATE.log_format, STATE.config_path, STATE._config = 0, None, None, None
        self.capsys.readouterr()
        code = main(list(args))
        out, err = self.capsys.readouterr()
        return code, out, err

    def ok(self, *args: str) -> str:
        code, out, err = self(*args)
        assert code == 0, (args, code, err[-800:])
        return out

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def config(self, text: str) -> None:
        (self.cwd / "attnkit.toml").write_text(text)


@pytest.fixture()
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    for k in list(os.environ):
        if k.startswith("ATTNKIT_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".xdg-config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / ".xdg-state"))
    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.chdir(tmp_path)
    return Cli(tmp_path, capsys)


# ------------------------------------------------------------------------------------------ the help
def _balanced(text: str, start: int) -> str:
    """The text inside the parenthesis opening at ``start`` (nested parentheses kept)."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[start + 1 : i]
    raise AssertionError(f"unbalanced parentheses in {text!r}")


def help_rows(help_text: str) -> list[tuple[str, str]]:
    """``(flag, text)`` per option row of a rendered help (wrapped lines joined), and
    ``("(description)", text)`` for the lines outside the option tables."""
    rows: list[tuple[str, str]] = [("(description)", "")]
    for line in help_text.splitlines():
        cells = re.match(r"^\s*│ (.*)│\s*$", line)
        if cells is None:
            if not re.match(r"^\s*[╭╰]", line):
                rows[0] = ("(description)", rows[0][1] + " " + line.strip())
            continue
        body = cells.group(1)
        if len(body) - len(body.lstrip()) <= 4:  # a new row (after the required-marker column); else wrapped help
            flag, _, rest = body.strip().removeprefix("*").strip().partition(" ")
            rows.append((flag.split(",")[0], rest))
        else:
            rows[-1] = (rows[-1][0], rows[-1][1] + " " + body.strip())
    return [(k, " ".join(v.split())) for k, v in rows]


def documented_defaults(help_text: str) -> dict[str, str]:
    """``{flag or "(description)": what the help says the default is}``."""
    out: dict[str, str] = {}
    for key, body in help_rows(help_text):
        said = [m.group(1).strip() for m in re.finditer(r"\[default: ([^\]]+)\]", body)]
        said += [_balanced(body, m.start()) for m in re.finditer(r"\(defaults?\b", body)]
        assert said or not re.search(r"\bdefault", body), f"{key}: a default the test cannot read: {body!r}"
        if said:
            assert key not in out, f"two rows for {key}"
            out[key] = "; ".join(said)
    return out


def all_documented(cli: Cli) -> dict[tuple[str, str], str]:
    found = {}
    for cmd in COMMANDS:
        for full in SUBCOMMANDS.get(cmd, (cmd,)):
            for flag, said in documented_defaults(cli.ok(*full.split(), "--help")).items():
                found[(full, flag)] = said
    return found


def test_the_help_parser_reads_both_forms() -> None:
    text = (
        " Runs (default: x\n (y)).\n╭─ Options ─╮\n│ --port  -p  <int>  TCP port (default: │\n│             config, 8080).  │\n"
        "│ --n <int> Length. [default: 64] │\n╰───╯\n"
    )
    assert documented_defaults(text) == {"--port": "default: config, 8080", "--n": "64", "(description)": "default: x (y)"}


# ------------------------------------------------------------------------------------------ helpers
def _value(said: str, pattern: str = r"(-?[\d.]+)\)?\s*$") -> str:
    m = re.search(pattern, said)
    assert m, f"no value in the documented default {said!r}"
    return m.group(1)


def _save(cli: Cli, name: str, shape: tuple[int, ...], seed: int) -> str:
    np.save(cli.cwd / name, np.random.default_rng(seed).standard_normal(shape).astype(np.float32))
    return name


def _out(cli: Cli, *args: str) -> np.ndarray:
    cli.ok("compute", "-t", "flash", "--heads", "1", "--dim", "4", *args, "-o", "out.npy")
    return np.load(cli.cwd / "out.npy")


def _bench(cli: Cli, *args: str) -> Any:
    return cli.json("benchmark", *args)


FAST = ("--iterations", "2", "--max-time", "0.001", "--warmup", "0")


# ------------------------------------------------------------------------------------------ compute
def check_type(cmd: str) -> Callable[[Cli, str], None]:
    def check(cli: Cli, said: str) -> None:
        fallback = _value(said, r"else (\w+)")
        args = ("--random", "4") if cmd == "compute" else ("-o", "m.onnx")
        assert cli.json(cmd, *args)["type"] == fallback
        assert "config [attention] default_type" in said
        cli.config('[attention]\ndefault_type = "local_global"\n')
        assert cli.json(cmd, *args)["type"] == "local_global"

    return check


def check_compute_keys(cli: Cli, said: str) -> None:
    assert "the query" in said
    q = _save(cli, "q.npy", (5, 1, 4), 0)
    np.testing.assert_array_equal(_out(cli, "-q", q), _out(cli, "-q", q, "-k", q, "-v", q))


def check_compute_values(cli: Cli, said: str) -> None:
    assert "the keys" in said
    q, k = _save(cli, "q.npy", (5, 1, 4), 0), _save(cli, "k.npy", (7, 1, 4), 1)
    implicit = _out(cli, "-q", q, "-k", k)
    np.testing.assert_array_equal(implicit, _out(cli, "-q", q, "-k", k, "-v", k))
    assert not np.allclose(implicit, _out(cli, "-q", q, "-k", k, "-v", _save(cli, "v.npy", (7, 1, 4), 2)))


def check_compute_output(cli: Cli, said: str) -> None:
    assert "none" in said and "summary" in said
    before = set(os.listdir(cli.cwd))
    out = cli.ok("compute", "--random", "4")
    assert "attnkit compute" in out and "output" in out  # the summary table
    assert set(os.listdir(cli.cwd)) == before  # nothing written


def check_seed(cmd: str) -> Callable[[Cli, str], None]:
    def check(cli: Cli, said: str) -> None:
        assert "config" in said
        fallback = _value(said, r"else (\d+)")
        args: tuple[str, ...]
        if cmd == "compute":
            args, made = ("compute", "-t", "multi_head", "--dim", "8", "--random", "3", "-o", "o.npy"), cli.cwd / "o.npy"
        else:
            pytest.importorskip("onnx")
            args, made = ("export", "-t", "multi_head", "--dim", "8", "-o", "m.onnx"), cli.cwd / "m.onnx"

        def run(*extra: str) -> bytes:
            cli.ok(*args, *extra)
            return made.read_bytes()

        implicit = run()
        assert implicit == run("--seed", fallback)
        assert implicit != run("--seed", str(int(fallback) + 1))
        cli.config("[attention]\nseed = 5\n")
        assert run() == run("--seed", "5") != implicit

    return check


def check_compute_heatmap(cli: Cli, said: str) -> None:
    assert "none" in said
    s = cli.json("compute", "--random", "4")
    assert s["heatmap"] is None
    assert not list(cli.cwd.rglob("*.png"))


def check_scale(cli: Cli, said: str) -> None:
    formulas = {"default 1/sqrt(dim)": 1 / np.sqrt(4), "default 1/dim": 1 / 4}
    assert said in formulas, f"a scale default the test does not know: {said!r}"
    q, k = _save(cli, "q.npy", (5, 1, 4), 0), _save(cli, "k.npy", (6, 1, 4), 1)
    implicit = _out(cli, "-q", q, "-k", k)
    np.testing.assert_array_equal(implicit, _out(cli, "-q", q, "-k", k, "--scale", repr(float(formulas[said]))))
    assert not np.allclose(implicit, _out(cli, "-q", q, "-k", k, "--scale", "1.0"))


def same_as_compute(flag: str) -> Callable[[Cli, str], None]:
    """A mechanism flag is generated once: its help in this command must be compute's, checked there."""

    def check(cli: Cli, said: str) -> None:
        assert documented_defaults(cli.ok("compute", "--help"))[flag] == said

    return check


# ------------------------------------------------------------------------------------------ export
def _ort(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    assert len(names) == len(feeds), names
    return np.asarray(sess.run(None, dict(zip(names, feeds.values(), strict=True)))[0])


def check_export_keys(cli: Cli, said: str) -> None:
    assert "the query" in said
    q = _save(cli, "q.npy", (5, 1, 4), 0)
    cli.ok("export", "-t", "flash", "--heads", "1", "--dim", "4", "-q", q, "-o", "m.onnx")
    qa = np.load(cli.cwd / q)
    np.testing.assert_allclose(_ort(cli.cwd / "m.onnx", {"q": qa}), _out(cli, "-q", q, "-k", q, "-v", q), rtol=1e-5, atol=1e-6)


def check_export_values(cli: Cli, said: str) -> None:
    assert "the keys" in said
    q, k = _save(cli, "q.npy", (5, 1, 4), 0), _save(cli, "k.npy", (7, 1, 4), 1)
    s = cli.json("export", "-t", "flash", "--heads", "1", "--dim", "4", "-q", q, "-k", k, "-o", "m.onnx")
    assert len(s["inputs"]) == 3  # the example values were the keys: the model takes values too
    ka = np.load(cli.cwd / k)
    got = _ort(cli.cwd / "m.onnx", {"q": np.load(cli.cwd / q), "k": ka, "v": ka})
    np.testing.assert_allclose(got, _out(cli, "-q", q, "-k", k, "-v", k), rtol=1e-5, atol=1e-6)


def check_export_opset(cli: Cli, said: str) -> None:
    assert "the exporter's" in said
    onnx = pytest.importorskip("onnx")
    from attnkit import export_onnx
    from attnkit.mechanisms.registry import create

    s = cli.json("export", "-t", "flash", "--heads", "1", "--dim", "4", "-o", "m.onnx")
    mech = create("flash", heads=1, dim=4)
    info = export_onnx(mech, cli.cwd / "ref.onnx", *mech.example_inputs(8, np.random.default_rng(0)))
    assert s["opset"] == info.opset == next(o.version for o in onnx.load(cli.cwd / "m.onnx").opset_import if o.domain in ("", "ai.onnx"))


def _input_dims(path: Path) -> list[list[Any]]:
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(path).graph
    return [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input]


def check_export_static(cli: Cli, said: str) -> None:
    assert "dynamic" in said
    s = cli.json("export", "-t", "flash", "--heads", "1", "--dim", "4", "-o", "m.onnx")
    assert s["dynamic"] is True
    assert any(isinstance(d, str) for d in _input_dims(cli.cwd / "m.onnx")[0])  # symbolic axes


def check_export_length(cli: Cli, said: str) -> None:
    length = int(_value(said, r"length (\d+)"))
    cli.ok("export", "-t", "flash", "--heads", "1", "--dim", "4", "--static", "-o", "m.onnx")
    dims = _input_dims(cli.cwd / "m.onnx")[0]
    from attnkit.mechanisms.registry import create

    mech_q = create("flash", heads=1, dim=4).example_inputs(length, np.random.default_rng(0))[0]
    assert dims == list(mech_q.shape)


# ------------------------------------------------------------------------------------------ benchmark
def _names(text: str) -> list[str]:
    return [t.strip().replace("-", "_") for t in text.split(",")]


def check_bench_types(cli: Cli, said: str) -> None:
    rows = _bench(cli, "--dims", "8", "-n", "4", *FAST)["results"]
    assert list(dict.fromkeys(r["type"] for r in rows)) == _names(said)


def check_bench_dims(cli: Cli, said: str) -> None:
    rows = _bench(cli, "-t", "flash", "-n", "4", *FAST)["results"]
    assert [r["dim"] for r in rows] == [int(d) for d in said.split(",")]


def check_bench_lengths(cli: Cli, said: str) -> None:
    rows = _bench(cli, "-t", "flash", "--dims", "4", *FAST)["results"]
    assert [r["length"] for r in rows] == [int(n) for n in said.split(",")]


def _count_forwards(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from attnkit.mechanisms import registry

    calls = [0]
    cls = registry.get("flash")
    real = cls.forward

    def counted(self: Any, *a: Any, **k: Any) -> Any:
        calls[0] += 1
        return real(self, *a, **k)

    monkeypatch.setattr(cls, "forward", counted)
    return calls


def check_bench_iterations(cli: Cli, said: str) -> None:
    rows = _bench(cli, "-t", "flash", "--dims", "2", "-n", "2", "--max-time", "1000", "--warmup", "0")["results"]
    assert rows[0]["runs"] == int(said)


def check_bench_max_time(cli: Cli, said: str) -> None:
    # the time limit itself is not asserted (tests never assert timings): the runner gets the documented value
    meta = _bench(cli, "-t", "flash", "--dims", "2", "-n", "2", "--iterations", "3", "--warmup", "0")["meta"]
    assert meta["max_time"] == float(said)


def check_bench_warmup(cli: Cli, said: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_forwards(monkeypatch)
    rows = _bench(cli, "-t", "flash", "--dims", "2", "-n", "2", "--iterations", "3", "--max-time", "1000")["results"]
    assert rows[0]["runs"] == 3 and calls[0] == int(said) + 3


def check_bench_batch(cli: Cli, said: str) -> None:
    assert "config optimization.batch_size" in said
    one = int(_value(said))
    implicit = _bench(cli, "-t", "flash", "--dims", "2", "-n", "2", *FAST)["results"][0]
    assert implicit["batch"] == one
    cli.config("[optimization]\nbatch_size = 3\n")
    row = _bench(cli, "-t", "flash", "--dims", "2", "-n", "2", *FAST)["results"][0]
    assert row["batch"] == 3 and row["shapes"][0] == [3, *implicit["shapes"][0]][-len(row["shapes"][0]) :]
    assert len(row["shapes"][0]) == len(implicit["shapes"][0]) + (one == 1)


def check_bench_seed(cli: Cli, said: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = np.random.default_rng

    def record(seed: Any = None) -> Any:
        seen.append(seed)
        return real(seed)

    monkeypatch.setattr(np.random, "default_rng", record)
    meta = _bench(cli, "-t", "flash", "--dims", "2", "-n", "2", *FAST)["meta"]
    assert meta["seed"] == int(said) and int(said) in seen


# ------------------------------------------------------------------------------------------ convert
def _mha_state(cli: Cli) -> str:
    rng = np.random.default_rng(0)
    state = {
        "in_proj_weight": rng.standard_normal((12, 4)).astype(np.float32),
        "in_proj_bias": rng.standard_normal(12).astype(np.float32),
        "out_proj.weight": rng.standard_normal((4, 4)).astype(np.float32),
        "out_proj.bias": rng.standard_normal(4).astype(np.float32),
    }
    np.savez(cli.cwd / "mha.npz", **state)  # type: ignore[arg-type]
    return "mha.npz"


def check_convert_from(cli: Cli, said: str) -> None:
    assert said.startswith("default: auto") and "known layout" in said
    s = cli.json("convert", _mha_state(cli), "w.npz")
    assert s["from"] == "torch-mha"  # a known layout: read as weights
    s = cli.json("convert", _save(cli, "q.npy", (3, 4), 0), "q.npz")
    assert s["from"] == "tensors"


def check_convert_to(cli: Cli, said: str) -> None:
    assert said.startswith("default: auto") and "attnkit's layout" in said
    s = cli.json("convert", _mha_state(cli), "w.safetensors")
    assert s["to"] == "attnkit" and set(s["arrays"]) >= {"q_proj.weight", "out_proj.weight"}


# ------------------------------------------------------------------------------------------ serve
def _serve(cli: Cli, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[str, int, int]:
    """``attnkit serve`` up to the point of binding, which is replaced by a recorder (nothing listens)."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    import attnkit.server as server

    got: list[tuple[str, int, int]] = []
    monkeypatch.setattr(server, "check_port_free", lambda host, port: None)
    monkeypatch.setattr(server, "run", lambda host, port, workers, **kw: got.append((host, port, workers)))
    cli.ok("serve", *args)
    assert len(got) == 1
    return got[0]


def check_serve(index: int, key: str, other: str) -> Callable[[Cli, str, pytest.MonkeyPatch], None]:
    def check(cli: Cli, said: str, monkeypatch: pytest.MonkeyPatch) -> None:
        assert "config" in said
        documented = _value(said, r",\s*(\S+?)\)?$")
        assert str(_serve(cli, monkeypatch)[index]) == documented
        cli.config(f"[server]\n{key} = {other}\n")
        assert str(_serve(cli, monkeypatch)[index]) == other.strip('"')

    return check


def _serve_settings(cli: Cli, monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    """The :class:`~attnkit.server.Settings` that ``attnkit serve ARGS`` hands to the server (nothing listens)."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    import attnkit.server as server

    got: list[Any] = []
    monkeypatch.setattr(server, "check_port_free", lambda host, port: None)
    monkeypatch.setattr(server, "run", lambda host, port, workers, **kw: got.append(kw["settings"]))
    cli.ok("serve", *args)
    assert len(got) == 1
    return got[0]


def check_serve_inline_max_flops(cli: Cli, said: str, monkeypatch: pytest.MonkeyPatch) -> None:
    documented = float(_value(said, r"default\s+([0-9.e+]+)"))
    assert _serve_settings(cli, monkeypatch).inline_max_flops == documented
    assert _serve_settings(cli, monkeypatch, "--inline-max-flops", "0").inline_max_flops == 0.0
    assert _serve_settings(cli, monkeypatch, "--inline-max-flops", "2.5e5").inline_max_flops == 2.5e5
    cli.config("[server]\ninline_max_flops = 5e5\n")
    assert _serve_settings(cli, monkeypatch).inline_max_flops == 5e5
    assert _serve_settings(cli, monkeypatch, "--inline-max-flops", "7").inline_max_flops == 7.0  # the flag over the file


# ------------------------------------------------------------------------------------------ repl, demo, config
def check_repl_history(cli: Cli, said: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from attnkit.cli import repl

    assert said == "history"
    seen: list[bool] = []

    def interactive(session: Any, history: bool) -> int:
        seen.append(history)
        return 0

    monkeypatch.setattr(repl, "_interactive", interactive)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    cli.ok("repl")
    cli.ok("repl", "--no-history")
    assert seen == [True, False]


def check_demo_length(cli: Cli, said: str) -> None:
    s = cli.json("demo", "--no-heatmap")
    assert s["length"] == int(said)
    flash = next(r for r in s["mechanisms"] if r["name"] == "flash")
    assert int(said) in flash["inputs"][0]


def check_demo_heatmap(cli: Cli, said: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("TMPDIR", str(cli.cwd / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)
    (cli.cwd / "tmp").mkdir()
    rel = _value(said, r"default: (\S+) in the temp dir")
    s = cli.json("demo", "--length", "8")
    expected = cli.cwd / "tmp" / rel
    assert s["heatmap"] == str(expected) and expected.stat().st_size > 1000


def check_demo_seed(cli: Cli, said: str) -> None:
    def outputs(*a: str) -> list[Any]:
        return [(r["name"], r.get("std")) for r in cli.json("demo", "--length", "6", "--no-heatmap", *a)["mechanisms"]]

    implicit = outputs()
    assert implicit == outputs("--seed", said)
    assert implicit != outputs("--seed", str(int(said) + 1))


def check_config_init_path(cli: Cli, said: str) -> None:
    rel = _value(said, r"default (\S+?)\)?$")
    cli.ok("config", "init")
    assert (cli.cwd / rel).is_file() and "[attention]" in (cli.cwd / rel).read_text()


CHECKS: dict[tuple[str, str], Callable[..., None]] = {
    ("compute", "--type"): check_type("compute"),
    ("compute", "--keys"): check_compute_keys,
    ("compute", "--values"): check_compute_values,
    ("compute", "--output"): check_compute_output,
    ("compute", "--seed"): check_seed("compute"),
    ("compute", "--heatmap"): check_compute_heatmap,
    ("compute", "--scale"): check_scale,
    ("export", "(description)"): check_export_length,
    ("export", "--type"): check_type("export"),
    ("export", "--keys"): check_export_keys,
    ("export", "--values"): check_export_values,
    ("export", "--seed"): check_seed("export"),
    ("export", "--opset"): check_export_opset,
    ("export", "--static"): check_export_static,
    ("export", "--scale"): same_as_compute("--scale"),
    ("benchmark", "--types"): check_bench_types,
    ("benchmark", "--dims"): check_bench_dims,
    ("benchmark", "--neighbors"): check_bench_lengths,
    ("benchmark", "--iterations"): check_bench_iterations,
    ("benchmark", "--max-time"): check_bench_max_time,
    ("benchmark", "--warmup"): check_bench_warmup,
    ("benchmark", "--batch"): check_bench_batch,
    ("benchmark", "--seed"): check_bench_seed,
    ("benchmark", "--scale"): same_as_compute("--scale"),
    ("convert", "--from"): check_convert_from,
    ("convert", "--to"): check_convert_to,
    ("serve", "--host"): check_serve(0, "host", '"0.0.0.0"'),
    ("serve", "--port"): check_serve(1, "port", "9123"),
    ("serve", "--workers"): check_serve(2, "workers", "2"),
    ("serve", "--inline-max-flops"): check_serve_inline_max_flops,
    ("repl", "--history"): check_repl_history,
    ("demo", "--length"): check_demo_length,
    ("demo", "--heatmap"): check_demo_heatmap,
    ("demo", "--seed"): check_demo_seed,
    ("config init", "path"): check_config_init_path,
}


def test_every_documented_default_has_a_check(cli: Cli) -> None:
    documented = all_documented(cli)
    assert set(documented) == set(CHECKS), (
        f"documented without a check: {sorted(set(documented) - set(CHECKS))}; checked but not documented: {sorted(set(CHECKS) - set(documented))}"
    )


@pytest.mark.parametrize("key", list(CHECKS), ids=[" ".join(k) for k in CHECKS])
def test_documented_default_is_the_behaviour(cli: Cli, monkeypatch: pytest.MonkeyPatch, key: tuple[str, str]) -> None:
    cmd, flag = key
    said = documented_defaults(cli.ok(*cmd.split(), "--help")).get(flag)
    assert said is not None, f"{cmd} --help no longer documents a default for {flag}"
    check = CHECKS[key]
    if "monkeypatch" in check.__code__.co_varnames[: check.__code__.co_argcount]:
        check(cli, said, monkeypatch)
    else:
        check(cli, said)
