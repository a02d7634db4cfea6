"""Hostile files against attnkit.io, attnkit.weights and attnkit.cli.config: named cases, then mutated
valid files in every format. Each outcome is counted as clean (an attnkit error naming the argument),
raw (any other exception), hang (over 10 s) or ok.

    PYTHONPATH=src python benchmarks/robustness/probe_files.py [--fuzz 2000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import struct
import sys
import tempfile
import zipfile
from collections import Counter

import numpy as np

from attnkit import io as aio
from attnkit import weights as W
from attnkit.cli.config import load_config
from attnkit.errors import AttentionError


class _Hang(Exception):
    pass


class _Opaque:
    """A Python object in a torch file: loading it needs pickle."""


def _alarm(*_: object) -> None:
    raise _Hang


def outcome(fn, names: tuple[str, ...]) -> str:  # type: ignore[no-untyped-def]
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(10)
    try:
        fn()
        return "ok"
    except _Hang:
        return "hang"
    except AttentionError as exc:
        return "clean" if any(n in str(exc) for n in names) else "clean-unnamed"
    except BaseException as exc:  # noqa: BLE001
        return f"raw {type(exc).__name__}"
    finally:
        signal.alarm(0)


def st(dtype: str, n: int, itemsize: int) -> bytes:
    h = json.dumps({"x": {"dtype": dtype, "shape": [n], "data_offsets": [0, n * itemsize]}}).encode()
    return struct.pack("<Q", len(h)) + h + b"\0" * (n * itemsize)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fuzz", type=int, default=2000)
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="attnkit-probe-")

    def w(name: str, data: bytes) -> str:
        p = os.path.join(d, name)
        with open(p, "wb") as fh:
            fh.write(data)
        return p

    buf = io.BytesIO()
    np.savez_compressed(buf, a=np.arange(1000.0))
    corrupt = bytearray(buf.getvalue())
    corrupt[60:80] = b"\0" * 20
    zb = io.BytesIO()
    with zipfile.ZipFile(zb, "w") as zf:
        zf.writestr("a.txt", "hello")
    good = {"in_proj_weight": np.zeros((12, 4), "f4"), "in_proj_bias": np.zeros(12, "f4"), "out_proj.weight": np.zeros((4, 4), "f4")}
    named = [
        ("deep JSON", lambda: aio.read_arrays(w("deep.json", b"[" * 100000 + b"]" * 100000)), ("input",)),
        ("JSON int of 5000 digits", lambda: aio.read_arrays(w("big.json", b"[" + b"9" * 5000 + b"]")), ("input",)),
        ("JSON 1e300 as float32", lambda: aio.read_arrays(w("o.json", b"[1e300]")), ("input",)),
        ("CSV field of 200 KiB", lambda: aio.read_arrays(w("f.csv", b"1," + b"1" * 200000 + b"\n")), ("input",)),
        ("npz corrupt zlib", lambda: aio.read_arrays(w("c.npz", bytes(corrupt))), ("input",)),
        ("npz member not .npy", lambda: aio.read_arrays(w("m.npz", zb.getvalue())), ("input",)),
        ("weights npz member not .npy", lambda: W.load_state(w("m2.npz", zb.getvalue())), ("weights",)),
        ("safetensors BF16 (read)", lambda: aio.read_arrays(w("b.safetensors", st("BF16", 4, 2))), ("input",)),
        ("safetensors F8_E4M3 (read)", lambda: aio.read_arrays(w("e4.safetensors", st("F8_E4M3", 4, 1))), ("input",)),
        ("safetensors F8_E5M2 (read)", lambda: W.load_state(st("F8_E5M2", 4, 1)), ("weights",)),
        ("safetensors header length 2^63", lambda: aio.read_arrays(w("h.safetensors", struct.pack("<Q", 2**63) + b"{}")), ("input",)),
        ("torch MHA in_proj_bias length 10", lambda: W.from_torch_mha({**good, "in_proj_bias": np.zeros(10, "f4")}), ("in_proj_bias",)),
        ("torch MHA 0-d out_proj.weight", lambda: W.from_torch_mha({**good, "out_proj.weight": np.float32(1)}), ("out_proj.weight",)),
        ("torch MHA missing out_proj.weight", lambda: W.from_torch_mha({k: v for k, v in good.items() if k != "out_proj.weight"}), ("out_proj",)),
        ("write to a missing directory", lambda: aio.write_array(os.path.join(d, "no", "x.npy"), np.zeros(3)), ("output",)),
        ("write to /dev/full", lambda: aio.write_array("/dev/full", np.zeros(3), "npy"), ("output",)),
        ("config TOML not UTF-8", lambda: load_config(w("c.toml", b"\xff\xfe[a]")), ("UTF-8",)),
        ("config TOML nested 100000 deep", lambda: load_config(w("d.toml", b"a = " + b"[" * 100000 + b"]" * 100000)), ("nested",)),
    ]
    try:
        import torch

        torch.save({"a": _Opaque()}, os.path.join(d, "p.pt"))
        named.append(("torch .pt needing pickle", lambda: W.load_state(os.path.join(d, "p.pt")), ("weights",)))
    except ImportError:
        pass
    os.environ["ATTNKIT_MAX_INPUT_BYTES"] = str(64 << 20)
    if hasattr(aio, "read_stream"):  # without the bound (before issue 13) this read would take every byte of memory
        named.append(("read /dev/zero (bounded)", lambda: aio.read_arrays("/dev/zero", "raw", name="query"), ("query",)))
    counts: Counter[str] = Counter()
    print("named cases")
    for label, fn, names in named:
        res = outcome(fn, names)
        counts["named " + res.split()[0]] += 1
        print(f"  {label:38s} {res}")
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    valid = {f: aio.dumps({"q": x, "k": x + 1} if f in aio.MULTI_ARRAY_FORMATS else x, f) for f in aio.FORMATS}
    rnd = random.Random(0)
    fuzz: Counter[str] = Counter()
    for i in range(args.fuzz):
        fmt = aio.FORMATS[i % len(aio.FORMATS)]
        data = bytearray(valid[fmt])
        for _ in range(rnd.randint(1, 8)):
            data[rnd.randrange(len(data))] = rnd.randrange(256)
        if rnd.random() < 0.3:
            data = data[: rnd.randrange(len(data) + 1)]
        res = outcome(lambda data=data, fmt=fmt: aio.loads(bytes(data), fmt, name="query"), ("query", "format"))
        fuzz[res] += 1
    print(f"mutated files ({args.fuzz}, all formats): " + ", ".join(f"{k} {v}" for k, v in sorted(fuzz.items())))
    bad = sum(v for k, v in {**counts, **fuzz}.items() if "raw" in k or "hang" in k or "unnamed" in k)
    print(f"bad outcomes: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
