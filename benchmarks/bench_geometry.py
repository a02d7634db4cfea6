"""Geometry and graph timings: HyperbolicAttention at κ < 0, 0, > 0, and EdgeFeaturedAttention against PyG.

Run: ``PYTHONPATH=src python -m benchmarks.bench_geometry`` (writes ``benchmarks/results/geometry.json``).
Repeats are interleaved and medians reported, so the ratios are comparable on a shared, noisy machine.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np


def _median_times(fns: dict, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()  # warm-up
    for _ in range(repeats):
        for name, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    import torch
    from torch_geometric.nn import GATv2Conv

    from attnkit import HyperbolicAttention
    from attnkit.mechanisms.graph import EdgeFeaturedAttention

    rng = np.random.default_rng(0)
    out: dict[str, dict] = {}
    L, D = 512, 64
    q = (rng.standard_normal((L, D)) * 0.02).astype(np.float32)
    mechs = {f"kappa={k:g}": HyperbolicAttention(D, kappa=k) for k in (-1.0, 0.0, 1.0)}
    t = _median_times({n: (lambda m=m: m(q, q, q)) for n, m in mechs.items()}, repeats=15)
    out["hyperbolic_L512_D64_f32_seconds"] = t

    N, E, F = 2000, 16000, 32
    x = torch.tensor(rng.standard_normal((N, F)), dtype=torch.float32)
    ei = torch.tensor(rng.integers(0, N, (2, E)))
    ea = torch.tensor(rng.standard_normal((E, 8)), dtype=torch.float32)
    pyg = GATv2Conv(F, 16, heads=4, edge_dim=8)
    ours = EdgeFeaturedAttention(dim=F, edge_dim=8, heads=4, out_dim=64, version="v2")
    ours.load_weights(pyg.state_dict())
    with torch.no_grad():
        t = _median_times({"attnkit": lambda: ours.forward_graph(x, ei, ea), "pyg": lambda: pyg(x, ei, ea)}, repeats=15)
    out["gatv2_N2000_E16000_torch_f32_seconds"] = {**t, "pyg_over_attnkit": t["pyg"] / t["attnkit"]}
    path = Path(__file__).parent / "results" / "geometry.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
