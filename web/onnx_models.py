"""Export the models of the browser demo and the JS engine tests, with reference outputs from attnkit.

    python web/onnx_models.py OUT_DIR [--cases CASES.json] [--length 13]
    python web/onnx_models.py --reference REQUEST.json

Writes ``OUT_DIR/<name>.onnx`` (the forward pass) and ``OUT_DIR/<name>.weights.onnx`` (the attention
weights, where the mechanism has them and they export) for every exportable mechanism, with the options
of :data:`MODELS`, through :func:`attnkit.export_onnx` at example length 8, plus ``OUT_DIR/index.json``
listing the files (a browser cannot list a folder). ``--cases`` also writes, per model, seeded inputs of
``--length`` (not the export length) and attnkit's NumPy output and weights for them: the references the
JS tests compare ONNX Runtime (Node, WebAssembly) against. The same files come from the CLI, e.g.
``attnkit export --type flash -O heads=2 -O dim=8 -o flash.onnx`` and ``... --attention-weights -o
flash.weights.onnx``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

#: file stem -> (mechanism, options): every mechanism, and edge_featured once more with edge features (a graph
#: input ``edge_features``); MoE with a capacity factor under 1, so that tokens are dropped at the test length
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "flash": ("flash", {"heads": 2, "dim": 8}),
    "multi_head": ("multi_head", {"model_dim": 16, "heads": 2}),
    "self": ("self", {"model_dim": 16, "heads": 2}),
    "cross": ("cross", {"query_dim": 8, "key_dim": 6, "heads": 2}),
    "linear": ("linear", {"dim": 8, "heads": 2}),
    "local_global": ("local_global", {"dim": 8, "heads": 2, "window": 4, "global_tokens": 1}),
    "hyperbolic": ("hyperbolic", {"dim": 8}),
    "mixed_curvature": ("mixed_curvature", {"dim": 8}),
    "dual_space": ("dual_space", {"dim": 8}),
    "scaled_dot_product": ("scaled_dot_product", {"dim": 8}),
    "graph_rope": ("graph_rope", {"dim": 8}),
    "edge_featured": ("edge_featured", {"dim": 8, "heads": 2}),
    "edge_featured_edges": ("edge_featured", {"dim": 8, "heads": 2, "edge_dim": 3}),
    "moe": ("moe", {"dim": 8, "num_experts": 4, "top_k": 2, "expert_capacity": 0.75}),
}
#: models whose graph also takes a bool mask (True = attend)
MASKED = {"flash_masked": ("flash", {"heads": 2, "dim": 8, "causal": False})}
#: the JS class of each mechanism
CLASSES = {
    "flash": "FlashAttention", "multi_head": "MultiHeadAttention", "self": "SelfAttention", "cross": "CrossAttention",
    "linear": "LinearAttention", "local_global": "LocalGlobalAttention", "hyperbolic": "HyperbolicAttention",
    "mixed_curvature": "MixedCurvatureAttention", "dual_space": "DualSpaceAttention", "scaled_dot_product": "ScaledDotProduct",
    "graph_rope": "GraphRoPEAttention", "edge_featured": "EdgeFeaturedAttention", "moe": "MoEAttention",
}  # fmt: skip


def camel(name: str) -> str:
    return re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name)


def _tensor(x: Any) -> dict[str, Any]:
    a = np.asarray(x)
    return {"data": a.astype(np.float32).reshape(-1).tolist() if a.dtype != bool else a.astype(np.uint8).reshape(-1).tolist(),
            "shape": list(a.shape), "dtype": "bool" if a.dtype == bool else "float32"}  # fmt: skip


def export_all(out: Path, length: int = 13, with_cases: bool = True) -> dict[str, Any]:
    """Export every model of :data:`MODELS` and :data:`MASKED` into ``out``; return the cases (inputs and references)."""
    import attnkit
    from attnkit.mechanisms import registry

    out.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    cases: dict[str, Any] = {}
    for stem, (name, options) in {**MODELS, **MASKED}.items():
        mech = registry.create(name, **options)
        rng = np.random.default_rng(0)
        example = mech.example_inputs(8, rng)
        extras = mech.example_extras(8, rng)
        mask = np.tril(np.ones((8, 8), dtype=bool)) if stem in MASKED else None
        attnkit.export_onnx(mech, out / f"{stem}.onnx", *example, mask=mask, **extras)
        files.append(f"{stem}.onnx")
        weights_ok = bool(mech.has_attention_weights)  # every weights graph exports (local_global's pattern too)
        if weights_ok:
            attnkit.export_onnx(mech, out / f"{stem}.weights.onnx", *example, mask=mask, output="weights", **extras)
            files.append(f"{stem}.weights.onnx")
        if not with_cases:
            continue
        rng = np.random.default_rng(1)
        inputs = mech.example_inputs(length, rng)
        case_extras = mech.example_extras(length, rng)
        m = np.tril(np.ones((length, length), dtype=bool)) if stem in MASKED else None
        case: dict[str, Any] = {
            "mechanism": name,
            "class": CLASSES[name],
            "options": {camel(k): v for k, v in options.items()},
            "inputs": [_tensor(x) for x in inputs],
            "mask": None if m is None else _tensor(m),
            "extras": {camel(k): _tensor(v) for k, v in case_extras.items()},
            "output": _tensor(mech.forward(*inputs, mask=m, **case_extras)),
        }
        if weights_ok:
            case["weights"] = _tensor(mech.attention_weights(inputs[0], inputs[1] if len(inputs) > 1 else None, mask=m, **case_extras))
        cases[stem] = case
    (out / "index.json").write_text(json.dumps({"models": files}, indent=1))
    return cases


def reference(request: dict[str, Any]) -> dict[str, Any]:
    """attnkit's NumPy output and weights for ``{"stem": <a key of MODELS>, "inputs": [{data, shape}, ...]}``."""
    from attnkit.mechanisms import registry

    name, options = {**MODELS, **MASKED}[request["stem"]]
    mech = registry.create(name, **options)
    inputs = [np.asarray(t["data"], dtype=np.float32).reshape(t["shape"]) for t in request["inputs"]]
    out = {"output": _tensor(mech.forward(*inputs))}
    if mech.has_attention_weights:
        out["weights"] = _tensor(mech.attention_weights(inputs[0], inputs[1] if len(inputs) > 1 else None))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, nargs="?")
    p.add_argument("--cases", type=Path, default=None)
    p.add_argument("--length", type=int, default=13)
    p.add_argument("--reference", type=Path, default=None, help="print attnkit's output/weights for a request file (JSON)")
    ns = p.parse_args()
    if ns.reference is not None:
        print(json.dumps(reference(json.loads(ns.reference.read_text()))))
        return
    if ns.out is None:
        p.error("OUT_DIR is required")
    cases = export_all(ns.out, ns.length, with_cases=ns.cases is not None)
    if ns.cases is not None:
        ns.cases.write_text(json.dumps(cases))
    print(json.dumps({"models": sorted(p.name for p in ns.out.glob("*.onnx")), "cases": sorted(cases)}))


if __name__ == "__main__":
    main()
