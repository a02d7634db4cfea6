"""Hostile inputs and options against every registered mechanism (issue 13, library part).

For each mechanism of the registry (built from its ``example_options``), every input argument
(query, key, value) is replaced in turn by an odd array kind (torch meta and sparse tensors,
``numpy.ma`` arrays, longdouble, ragged lists, Python ints too big for float, read-only and
negative-stride views, object, string, complex, int and bool arrays, NaN/inf, empty and zero-batch
shapes), and every bool/int/seed option of the registry's option table is given invalid values
(strings, floats, bools, negatives, sizes that cannot fit in memory). Then ``--fuzz N`` random
combinations. Each case is counted as:

* ``ok``: a finite result of the right shape (or an accepted valid odd kind),
* ``clean``: an attnkit error (``AttentionError``) whose message names the argument,
* ``unnamed``: an attnkit error that does not name the argument,
* ``raw``: any other exception,
* ``hang``: over ``--timeout`` seconds,
* ``nan``: a result holding NaN or infinity,
* ``accepted``: an invalid option value accepted.

    PYTHONPATH=src python benchmarks/robustness/probe_mechanisms.py [--fuzz 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import signal
import sys
import time
import warnings
from collections import Counter
from typing import Any

import numpy as np
import torch

from attnkit.errors import AttentionError
from attnkit.mechanisms import registry

warnings.simplefilter("ignore")
SEQ = 4


class _Hang(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Hang


def _seq_axis(name: str, arr: np.ndarray, which: str) -> int:
    layout = registry.get(name).input_layout
    if layout == "sequence":
        return -3
    if layout == "graph" and which == "query":
        return 0 if arr.ndim == 1 else -2
    return -2


def input_variants(x: np.ndarray, axis: int) -> dict[str, tuple[Any, bool]]:
    """name -> (odd version of ``x``, whether a correct result is possible: ``ok`` or ``clean`` both count then)."""
    ro = x.copy()
    ro.setflags(write=False)
    ma = np.ma.masked_array(x, mask=np.zeros(x.shape, bool))
    ma_masked = np.ma.masked_array(x, mask=np.zeros(x.shape, bool))
    if x.size:
        ma_masked.mask.flat[0] = True
    big = x.tolist()
    flat = big
    while isinstance(flat, list) and flat and isinstance(flat[0], list):
        flat = flat[0]
    if isinstance(flat, list) and flat:
        flat[0] = 10**400
    ragged = x.tolist()
    if isinstance(ragged, list) and len(ragged) > 1 and isinstance(ragged[0], list):
        ragged[0] = ragged[0][:-1] if ragged[0] else [1.0]
    nan = x.copy()
    nan.flat[0] = np.nan
    inf = x.copy()
    inf.flat[-1] = -np.inf
    empty_shape = list(x.shape)
    empty_shape[axis] = 0
    out: dict[str, tuple[Any, bool]] = {
        "meta": (torch.empty(x.shape, dtype=torch.float32, device="meta"), True),
        "sparse": (torch.from_numpy(x.astype(np.float32)).to_sparse(), True),
        "masked_nomask": (ma, True),
        "masked_masked": (ma_masked, False),
        "longdouble": (x.astype(np.longdouble), True),
        "float16": (x.astype(np.float16), True),
        "ragged": (ragged, False),
        "bigint": (big, False),
        "readonly": (ro, True),
        "negstride": (np.flip(x, axis=axis), True),
        "fortran": (np.asfortranarray(x), True),
        "object": (x.astype(object), True),
        "string": ("query", False),
        "str_array": (x.astype(str), False),
        "bytes": (b"\x00" * 16, False),
        "complex": (x.astype(np.complex64), False),
        "int": (x.astype(np.int64), False),
        "bool": (x > 0, False),
        "none_scalar": (3.0, False),
        "dict": ({"a": 1}, False),
        "nan": (nan, False),
        "inf": (inf, False),
        "empty_seq": (np.zeros(empty_shape, np.float32), True),
        "zero_batch": (np.zeros((0, *x.shape), np.float32), True),
        "wrong_width": (np.zeros((*x.shape[:-1], x.shape[-1] + 1), np.float32), False),
        "extra_axis": (np.zeros((*x.shape, 1), np.float32), False),
        "torch_f64": (torch.from_numpy(x.astype(np.float64)), True),
        "torch_int": (torch.from_numpy(x.astype(np.int64)), False),
    }
    return out


_NAMED = re.compile(r"^[A-Za-z_][\w\[\]'\".,= -]*:")


_MUST_WORK = ("readonly", "negstride", "fortran", "masked_nomask", "longdouble", "float16", "torch_f64")


def _like(v: Any, vname: str) -> Any:
    """An extra input (edge features, positions) in the library of the case's query."""
    if not isinstance(v, np.ndarray) or v.dtype.kind != "f" or vname not in ("meta", "sparse", "torch_f64", "torch_int"):
        return v
    return torch.as_tensor(v, dtype=torch.float64 if vname == "torch_f64" else torch.float32, device="meta" if vname == "meta" else "cpu")


def _names_argument(msg: str, names: tuple[str, ...]) -> bool:
    """The message names the argument varied, or starts with another argument's name and a colon (DESIGN.md)."""
    low = msg.lower()
    return any(n.lower() in low for n in names) or bool(_NAMED.match(msg))


def _finite(out: Any) -> bool:
    if isinstance(out, (tuple, list)):
        return all(_finite(o) for o in out)
    if isinstance(out, torch.Tensor):
        if out.is_meta:
            return True
        return bool(torch.isfinite(out.detach().to_dense() if out.is_sparse else out.detach()).all())
    arr = np.asarray(out)
    return arr.dtype.kind != "f" or bool(np.isfinite(arr).all())


def run_case(fn: Any, names: tuple[str, ...], timeout: float, invalid: bool = False) -> str:
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    t0 = time.perf_counter()
    try:
        out = fn()
    except _Hang:
        return "hang"
    except AttentionError as exc:
        return "clean" if _names_argument(str(exc), names) else "unnamed"
    except Exception:  # noqa: BLE001 - counting raw exceptions is the point
        return "raw"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if time.perf_counter() - t0 > timeout:
        return "hang"
    if invalid:
        return "accepted"
    return "ok" if _finite(out) else "nan"


INVALID_OPTIONS: dict[str, list[Any]] = {
    "bool": ["false", "true", 0, 1, None, 1.0],
    "int": ["2", 2.0, True, -1, 0, 10**9, 2**70, None, float("nan")],
    "int?": ["2", 2.5, False, -3, 10**9, 2**70],
    "seed": [-1, 1.5, "7", True, 2**64, 2**70],
}
_SIZE_OPTIONS = {"heads", "dim", "model_dim", "query_dim", "key_dim", "kdim", "vdim", "nb_features", "num_experts", "out_dim", "edge_dim", "kv_heads"}


def option_cases(name: str) -> list[tuple[str, Any]]:
    table = {"bool": "bool", "int": "int", "int|None": "int?"}
    kinds = {s.name: table[s.type] for s in registry.option_specs(name) if s.type in table}
    if "seed" in kinds:
        kinds["seed"] = "seed"
    cases = []
    for opt, kind in sorted(kinds.items()):
        for bad in INVALID_OPTIONS[kind]:
            if bad is None and kind == "int" and opt not in _SIZE_OPTIONS:
                continue
            if kind != "bool" and bad in (0, -1, -3) and opt not in _SIZE_OPTIONS and opt != "seed":
                continue  # 0 or negative may be valid (edge_dim=0, global_tokens=0)
            if bad == 10**9 and opt not in _SIZE_OPTIONS:
                continue
            if bad == 0 and opt in ("edge_dim",):
                continue
            cases.append((opt, bad))
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fuzz", type=int, default=0, help="random combinations after the named cases")
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--json", default="", help="write the counts here")
    ap.add_argument("--verbose", action="store_true", help="print every case that is not ok/clean")
    args = ap.parse_args()
    counts: Counter[str] = Counter()
    per_kind: dict[str, Counter[str]] = {}
    bad_cases: list[str] = []

    def record(surface: str, label: str, outcome: str) -> None:
        counts[outcome] += 1
        per_kind.setdefault(surface, Counter())[outcome] += 1
        if outcome not in ("ok", "clean"):
            bad_cases.append(f"{outcome:9s} {label}")

    rng = random.Random(0)
    # torch loads its meta and sparse kernels on first use (seconds): outside the timed cases, so that a
    # first-use delay is not counted as a hang (and an interrupted import does not break later cases)
    for dev in ("meta", "cpu"):
        t = torch.ones((3, 2, 4), device=dev)
        _ = (t @ t.transpose(-1, -2)).softmax(-1)
    _ = torch.ones(2, 2).to_sparse().to_dense()
    for name in registry.names():
        cls = registry.get(name)
        mech = registry.create(name, **cls.example_options)
        inputs = mech.example_inputs(SEQ, np.random.default_rng(0))
        extras = mech.example_extras(SEQ, np.random.default_rng(1))
        arg_names = ("query", "key", "value")[: len(inputs)]
        for i, which in enumerate(arg_names):
            axis = _seq_axis(name, inputs[i], which)
            for vname, (odd, possible) in input_variants(np.asarray(inputs[i]), axis).items():
                call = list(inputs)
                if isinstance(odd, torch.Tensor) and vname in ("meta", "sparse", "torch_f64", "torch_int"):
                    dev = "meta" if vname == "meta" else "cpu"
                    dt = torch.float64 if vname == "torch_f64" else torch.float32
                    call = [torch.as_tensor(np.asarray(a), dtype=dt, device=dev) for a in call]
                call[i] = odd
                ex = {k: _like(v, vname) for k, v in extras.items()}
                outcome = run_case(lambda a=call, e=ex, m=mech: m.forward(*a, **e), (which, "input", "inputs"), args.timeout)
                if outcome == "clean" and possible and vname in _MUST_WORK:
                    outcome = "refused"  # a plain array that must work
                record("inputs", f"{name}.forward({which}={vname})", outcome)
        for opt, bad in option_cases(name):
            options = dict(cls.example_options)
            options[opt] = bad
            outcome = run_case(lambda o=options, c=cls: c(**o), (opt, *registry.option_aliases(name).get(opt, [])), args.timeout, invalid=True)
            if outcome == "accepted" and bad == 10**9:
                # a size option of a mechanism that allocates nothing for it: accepted is right if it holds little
                built = cls(**options)
                outcome = "ok" if built.memory_usage().heap_used < 1 << 20 else "accepted"
            record("options", f"{name}({opt}={bad!r})", outcome)
    for _ in range(args.fuzz):
        name = rng.choice(registry.names())
        cls = registry.get(name)
        mech = registry.create(name, **cls.example_options)
        inputs = list(mech.example_inputs(rng.randint(1, 6), np.random.default_rng(rng.randrange(1000))))
        extras = mech.example_extras(SEQ, np.random.default_rng(1))
        i = rng.randrange(len(inputs))
        which = ("query", "key", "value")[i]
        variants = input_variants(np.asarray(inputs[i]), _seq_axis(name, inputs[i], which))
        vname = rng.choice([v for v in variants if v not in ("meta", "sparse", "torch_f64", "torch_int")])
        inputs[i] = variants[vname][0]
        if len(inputs) == 3 and rng.random() < 0.3:
            inputs[2] = None
        outcome = run_case(lambda a=inputs, e=extras, m=mech: m.forward(*a, **e), (which, "input", "inputs"), args.timeout)
        record("fuzz", f"{name}.forward({which}={vname}, random length)", outcome)
    summary = {"total": sum(counts.values()), "counts": dict(counts), "by_surface": {k: dict(v) for k, v in per_kind.items()}}
    print(json.dumps(summary, indent=1))
    if args.verbose:
        print("\n".join(bad_cases))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({**summary, "not_clean": bad_cases}, fh, indent=1)
    sys.exit(0)


if __name__ == "__main__":
    main()
