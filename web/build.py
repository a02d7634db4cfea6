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
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp, str(ROOT)],
                       check=True)
        for whl in Path(tmp).glob("attnkit-*.whl"):
            shutil.copy2(whl, wheels / whl.name)
    import array_api_compat

    version = array_api_compat.__version__
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wheels),
                    f"array-api-compat=={version}"], check=True)
    names = sorted(p.name for p in wheels.glob("*.whl"))
    index = {"wheels": names, "pyodide": json.loads((pyodide_dir / "package.json").read_text())["version"]}
    (wheels / "index.json").write_text(json.dumps(index, indent=1))
    return index


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE / "dist")
    p.add_argument("--pyodide-dir", type=Path, default=ROOT / "clients" / "js" / "node_modules" / "pyodide")
    ns = p.parse_args()
    print(json.dumps(build(ns.out, ns.pyodide_dir)))


if __name__ == "__main__":
    main()
