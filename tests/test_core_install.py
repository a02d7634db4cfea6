"""A core-only install (``pip install attnkit``: numpy, array-api-compat, safetensors and nothing else).

The library works; every command that needs an extra says which one, in one line on stderr, and exits 2.
The first test builds attnkit's wheel and installs it with only the core dependencies (the versions
installed here, so pip takes them from its cache or the local wheel directory) into a fresh virtual
environment made without pip (``--without-pip``; this interpreter's pip installs into it), about 10 s.
The second blocks the optional modules inside this environment, for the extras the fresh venv cannot
show separately (``cli`` present, ``plot`` or ``server`` missing).
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the cli extra brings tomli
    import tomli as tomllib

import pytest

pytestmark = pytest.mark.install

ROOT = Path(__file__).resolve().parents[1]
CORE = ("numpy", "array-api-compat", "safetensors")
#: the environment of every process run in the fresh venv: no PYTHONPATH (it would show the source tree)
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME") and not k.startswith("ATTNKIT_")}


def _one_line(proc: subprocess.CompletedProcess, extra: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert len(lines) == 1, proc.stderr
    assert f"pip install 'attnkit[{extra}]'" in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("core")
    wheels = tmp / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
        capture_output=True, text=True, timeout=300, env=ENV,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120, env=ENV)
    py = venv / "bin" / "python"
    pins = [f"{name}=={version(name)}" for name in CORE]
    inst = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", *pins, *map(str, wheels.glob("attnkit-*.whl"))],
        capture_output=True, text=True, timeout=600, env=ENV,
    )  # fmt: skip
    assert inst.returncode == 0, inst.stderr[-2000:]
    return venv


def test_core_install_runs_the_library_and_names_the_missing_extras(core_venv: Path):
    py, exe = core_venv / "bin" / "python", core_venv / "bin" / "attnkit"
    listed = subprocess.run([str(py), "-m", "pip", "--version"], capture_output=True, text=True, env=ENV)
    assert listed.returncode != 0  # a venv without pip: nothing but what was installed into it
    code = (
        "import numpy as np, attnkit\n"
        "m = attnkit.FlashAttention(heads=2, dim=4)\n"
        "q = np.ones((3, 2, 4), dtype=np.float32)\n"
        "assert m.forward(q, q, q).shape == (3, 2, 4)\n"
        "for mod in ('typer', 'rich', 'matplotlib', 'fastapi', 'torch'):\n"
        "    try:\n"
        "        __import__(mod)\n"
        "    except ImportError:\n"
        "        continue\n"
        "    raise SystemExit(f'{mod} is importable in the core-only venv')\n"
        "print(attnkit.__version__)\n"
    )
    lib = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=120, cwd=core_venv, env=ENV)
    assert lib.returncode == 0, lib.stderr
    assert lib.stdout.strip() == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for args in (["--help"], [], ["demo"], ["compute", "--random", "4"], ["info"], ["serve"]):
        line = _one_line(subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60, cwd=core_venv, env=ENV), "cli")
        assert line.startswith("attnkit: error: the command line needs typer and rich"), line
    _one_line(subprocess.run([str(py), "-m", "attnkit.cli", "info"], capture_output=True, text=True, timeout=60, cwd=core_venv, env=ENV), "cli")
    line = _one_line(subprocess.run([str(py), "-m", "attnkit.server"], capture_output=True, text=True, timeout=60, cwd=core_venv, env=ENV), "server")
    assert "fastapi and uvicorn" in line, line


_BLOCKED = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # import raises ImportError, as when the package is not installed
{body}
"""


def _blocked(tmp_path: Path, blocked: tuple[str, ...], body: str) -> subprocess.CompletedProcess:
    from test_cli_support import clean_env

    env = clean_env(tmp_path, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run(
        [sys.executable, "-c", _BLOCKED.format(blocked=blocked, body=body)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("blocked", "args", "extra"),
    [
        (("matplotlib",), ["compute", "--random", "4", "-t", "flash", "--heads", "1", "--dim", "4", "--heatmap", "x.png"], "plot"),
        (("matplotlib",), ["benchmark", "-t", "flash", "-d", "4", "-n", "4", "--iterations", "1", "--max-time", "0.01", "--plot", "b.png"], "plot"),
        (("fastapi", "uvicorn"), ["serve"], "server"),
        (("torch",), ["benchmark", "-t", "flash", "-d", "4", "-n", "4", "--iterations", "1", "--compare", "torch"], "torch"),
    ],
)
def test_a_missing_extra_is_named_in_one_line(tmp_path: Path, blocked: tuple[str, ...], args: list[str], extra: str):
    body = f"from attnkit.cli import main\nraise SystemExit(main({args!r}))"
    _one_line(_blocked(tmp_path, blocked, body), extra)


def test_server_module_without_server_extra(tmp_path: Path):
    body = "from attnkit.server.__main__ import main\nraise SystemExit(main([]))"
    line = _one_line(_blocked(tmp_path, ("fastapi", "uvicorn"), body), "server")
    assert line.startswith("python -m attnkit.server: error:"), line


def test_demo_without_matplotlib_keeps_the_brackets(tmp_path: Path):
    """The demo still runs its table; the note about the picture must keep [plot] (rich markup would eat it)."""
    body = "from attnkit.cli import main\nraise SystemExit(main(['demo', '--length', '8']))"
    proc = _blocked(tmp_path, ("matplotlib",), body)
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'attnkit[plot]'" in proc.stdout, proc.stdout[-1500:]
