"""The README's model-repository examples run as written: its TOML is the repository, its curl commands
and its tritonclient snippet go to a live server on 127.0.0.1 (the README's port replaced by a free one)."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from attnkit import MultiHeadAttention  # noqa: E402
from attnkit.server.app import create_app  # noqa: E402
from attnkit.server.settings import Settings  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"


def _section() -> str:
    text = README.read_text()
    start = text.index("<!-- section:models -->")
    return text[start : text.index("\n## ", start)]


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", _section(), flags=re.S)


@contextlib.contextmanager
def _server(tmp_path: Path) -> Iterator[str]:
    toml = _blocks("toml")[0]
    name = re.match(r"# models/(\w+)\.toml", toml).group(1)  # type: ignore[union-attr]
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / f"{name}.toml").write_text(toml)
    app = create_app(Settings(models_dir=str(tmp_path / "models")))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_readme_curl_examples(tmp_path: Path) -> None:
    (bash,) = _blocks("bash")
    commands = re.sub(r"\\\n", "", "\n".join(line for line in bash.splitlines() if not line.startswith("#")))
    commands = re.sub(r"'\n\s*", "' ", commands)  # a quoted body may go on over the next line
    lines = [c for c in re.split(r"\n(?=curl )", commands) if c.strip()]
    assert len(lines) == 2
    with _server(tmp_path) as addr:
        outs = [
            subprocess.run(["bash", "-c", c.replace("127.0.0.1:8080", addr)], capture_output=True, text=True, timeout=60, check=True).stdout
            for c in lines
        ]
    model = json.loads(outs[0])
    assert model["type"] == "multi_head" and model["options"]["model_dim"] == 8 and model["options"]["heads"] == 2
    assert model["input_layout"] == "model" and model["param_shapes"]["q_proj.weight"] == [8, 8]
    answer = json.loads(outs[1])["outputs"][0]
    got = np.asarray(answer["data"], np.float32).reshape(answer["shape"])
    q = np.zeros((1, 2, 8), np.float32)
    q[0, 0, 0] = q[0, 1, 1] = 1
    np.testing.assert_array_equal(got, MultiHeadAttention(model_dim=8, heads=2, seed=0).forward(q))


def test_readme_tritonclient_example(tmp_path: Path) -> None:
    pytest.importorskip("tritonclient.http")
    (code,) = _blocks("python")
    assert "assert np.array_equal" in code  # the example checks itself against the library
    with _server(tmp_path) as addr:
        exec(compile(code.replace("127.0.0.1:8080", addr), "README.md tritonclient example", "exec"), {"__name__": "__readme__"})
