"""schemathesis against the server's own OpenAPI document, on a real server process on 127.0.0.1.

Bounded and deterministic (``--generation-deterministic``, a few dozen cases per operation). Checked:
no 5xx, every status documented, content types and response schemas as documented. The request
schemas are deliberately loose about tensors (any nesting of numbers), so schemathesis's positive and
negative "acceptance" checks, which assume the schema is the whole validation, are not run.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")

from test_server_faults import server  # noqa: E402

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def test_schemathesis_finds_no_server_error_or_undocumented_answer(tmp_path: Path) -> None:
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    if exe is None:
        pytest.skip("the schemathesis command is not installed")
    with server("--max-concurrency", "2", "--request-timeout-s", "20") as (_, url):
        r = subprocess.run(
            [exe, "--no-color", "run", url + "/openapi.json", "--checks", CHECKS, "--max-examples", "25", "--generation-deterministic",
             "--request-timeout", "30", "--report-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,
        )  # fmt: skip
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
