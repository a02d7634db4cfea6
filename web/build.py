"""Assemble the browser build of attnkit: the offline ONNX Runtime Web demo and the Pyodide page.

    python web/build.py [--out web/dist] [--node-modules clients/js/node_modules] [--models DIR]
                        [--no-onnx] [--no-pyodide]

The output folder is a static site. The offline demo (``index.html`` + ``demo.js``) needs ``ort/`` (the
WebAssembly runtime from the ``onnxruntime-web`` npm package), ``attnkit/`` (the JS client's ``src``) and
``models/`` (models written by ``attnkit export``: exported here by ``web/onnx_models.py``, or copied from
``--models DIR``). The Pyodide page (``pyodide.html`` + ``pyodide.js``) needs ``pyodide/`` (the
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


ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")


def build_onnx(out: Path, node_modules: Path, models: Path | None = None) -> dict[str, object]:
    """Copy the offline demo, ONNX Runtime Web's wasm build, the JS client and the models into ``out``."""
    ort_dir = node_modules / "onnxruntime-web" / "dist"
    missing = [f for f in ORT_FILES if not (ort_dir / f).is_file()]
    if missing:
        raise SystemExit(f"--node-modules {node_modules}: onnxruntime-web lacks {', '.join(missing)} (run npm install in clients/js)")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("index.html", "demo.js"):
        shutil.copy2(HERE / name, out / name)
    for sub in ("ort", "attnkit", "models"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    (out / "ort").mkdir()
    for name in ORT_FILES:
        shutil.copy2(ort_dir / name, out / "ort" / name)
    shutil.copytree(ROOT / "clients" / "js" / "src", out / "attnkit")
    if models is not None:
        shutil.copytree(models, out / "models", ignore=shutil.ignore_patterns("cases.json"))
    else:
        sys.path.insert(0, str(HERE))
        from onnx_models import export_all

        export_all(out / "models", with_cases=False)
    return {"models": json.loads((out / "models" / "index.json").read_text())["models"]}


def build(out: Path, pyodide_dir: Path) -> dict[str, object]:
    missing = [f for f in RUNTIME_FILES if not (pyodide_dir / f).is_file()]
    if missing:
        raise SystemExit(f"--pyodide-dir {pyodide_dir}: missing {', '.join(missing)} (run npm install in clients/js)")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("pyodide.html", "pyodide.js"):
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
    got = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wheels), f"array-api-compat=={version}"],
        capture_output=True,
        text=True,
    )
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
    p.add_argument("--node-modules", type=Path, default=ROOT / "clients" / "js" / "node_modules")
    p.add_argument("--pyodide-dir", type=Path, default=None, help="default: NODE_MODULES/pyodide")
    p.add_argument("--models", type=Path, default=None, help="copy these exported models instead of exporting the demo's")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime Web demo")
    p.add_argument("--no-pyodide", action="store_true", help="skip the Pyodide page")
    ns = p.parse_args()
    done: dict[str, object] = {}
    if not ns.no_onnx:
        done["onnx"] = build_onnx(ns.out, ns.node_modules, ns.models)
    if not ns.no_pyodide:
        done["pyodide"] = build(ns.out, ns.pyodide_dir or ns.node_modules / "pyodide")
    print(json.dumps(done))


if __name__ == "__main__":
    main()
