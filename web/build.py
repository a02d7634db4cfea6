"""Assemble the browser build of attnkit: Pyodide's runtime, the attnkit wheel and its pure-Python deps.

    python web/build.py [--out web/dist] [--pyodide-dir clients/js/node_modules/pyodide]

The output folder is a static site: ``index.html`` + ``main.js`` (this folder), ``pyodide/`` (the
runtime from the ``pyodide`` npm package: ``pyodide.mjs``, ``pyodide.asm.wasm``, ``python_stdlib.zip``,
``pyodide-lock.json``), and ``wheels/`` with ``attnkit-*.whl``, ``array_api_compat-*.whl`` and an
``index.json`` listing them. Serve it with any static server, e.g. ``python -m http.server -d web/dist``.

NumPy for WebAssembly is not on PyPI or npm: Pyodide's own package repository serves it. The page loads
it from the Pyodide ``indexURL``, so open the page with ``?pyodide=<a full Pyodide distribution URL>``
(for example Pyodide's CDN for version 314.0.7) to get NumPy; with only the npm runtime the page still
boots Python and imports attnkit, and says that NumPy is missing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RUNTIME_FILES = ("pyodide.mjs", "pyodide.js", "pyodide.asm.mjs", "pyodide.asm.wasm", "python_stdlib.zip", "pyodide-lock.json")


def build(out: Path, pyodide_dir: Path) -> dict[str, object]:
    missing = [f for f in RUNTIME_FILES if not (pyodide_dir / f).is_file()]
    if missing:
        raise SystemExit(f"--pyodide-dir {pyodide_dir}: missing {', '.join(missing)} (run npm install in clients/js)")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("index.html", "main.js"):
        shutil.copy2(HERE / name, out / name)
    rt = out / "pyodide"
    rt.mkdir(exist_ok=True)
    for name in RUNTIME_FILES:
        shutil.copy2(pyodide_dir / name, rt / name)
    wheels = out / "wheels"
    if wheels.exists():
        shutil.rmtree(wheels)
    wheels.mkdir()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp, str(ROOT)]
        # without build isolation when setuptools is at hand (offline, fast); with it otherwise
        if subprocess.run([*cmd, "--no-build-isolation"], capture_output=True).returncode != 0:
            subprocess.run(cmd, check=True)
        for whl in Path(tmp).glob("attnkit-*.whl"):
            shutil.copy2(whl, wheels / whl.name)
    import array_api_compat

    version = array_api_compat.__version__
    got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wheels),
                          f"array-api-compat=={version}"], capture_output=True, text=True)
    if got.returncode != 0 or not list(wheels.glob("array_api_compat-*.whl")):
        _wheel_from_installed("array_api_compat", "array-api-compat", wheels)
    names = sorted(p.name for p in wheels.glob("*.whl"))
    index = {"wheels": names, "pyodide": json.loads((pyodide_dir / "package.json").read_text())["version"]}
    (wheels / "index.json").write_text(json.dumps(index, indent=1))
    return index


def _wheel_from_installed(module: str, dist: str, dest: Path) -> Path:
    """Repack an installed pure-Python distribution as a wheel (when no registry can be reached)."""
    import base64
    import hashlib
    import importlib.metadata as md
    import zipfile

    d = md.distribution(dist)
    files = [f for f in (d.files or []) if f.parts[0] == module or f.parts[0].endswith(".dist-info")]
    name = f"{module}-{d.version}-py3-none-any.whl"
    record_lines = []
    record_path = None
    with zipfile.ZipFile(dest / name, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            if f.name == "RECORD":
                record_path = str(f)
                continue
            if f.suffix == ".pyc" or f.name in ("INSTALLER", "REQUESTED", "direct_url.json"):
                continue
            data = Path(d.locate_file(f)).read_bytes()
            zf.writestr(str(f), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record_lines.append(f"{f},sha256={digest},{len(data)}")
        if record_path:
            zf.writestr(record_path, "\n".join([*record_lines, f"{record_path},,"]) + "\n")
    return dest / name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE / "dist")
    p.add_argument("--pyodide-dir", type=Path, default=ROOT / "clients" / "js" / "node_modules" / "pyodide")
    ns = p.parse_args()
    print(json.dumps(build(ns.out, ns.pyodide_dir)))


if __name__ == "__main__":
    main()
