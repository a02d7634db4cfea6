"""One training step of ``attnkit.torch.AttentionModule(MultiHeadAttention)`` against ``torch.nn.MultiheadAttention``.

``python -m benchmarks.torch_module`` times forward + backward + SGD step of both modules on the same
weights and inputs (float32, batch_first, one torch thread), interleaved, and writes the medians and
their ratio to ``benchmarks/results/torch_module.json``. It asserts nothing (the parity tests live in
``tests/test_torch_module.py``).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

import attnkit
from attnkit.torch import AttentionModule

RESULTS = Path(__file__).resolve().parent / "results" / "torch_module.json"


def _step(module: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, target: torch.Tensor, is_torch: bool) -> None:
    opt.zero_grad()
    out = module(x, x, x, need_weights=False)[0] if is_torch else module(x, x, x)
    torch.nn.functional.mse_loss(out, target).backward()
    opt.step()


def main(batch: int = 8, length: int = 128, model_dim: int = 64, heads: int = 8, repeats: int = 30) -> dict[str, object]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(model_dim, heads, batch_first=True)
    mech = attnkit.MultiHeadAttention(model_dim=model_dim, heads=heads, keep_weights=False)
    mech.load_weights({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    module = AttentionModule(mech)
    x = torch.randn(batch, length, model_dim)
    target = torch.randn(batch, length, model_dim)
    runs = {
        "torch": (ref, torch.optim.SGD(ref.parameters(), lr=1e-3), True),
        "attnkit": (module, torch.optim.SGD(module.parameters(), lr=1e-3), False),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for m, opt, is_torch in runs.values():  # warm-up
        _step(m, opt, x, target, is_torch)
    for _ in range(repeats):
        for name, (m, opt, is_torch) in runs.items():
            t0 = time.perf_counter()
            _step(m, opt, x, target, is_torch)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    result = {
        "shape": {"batch": batch, "length": length, "model_dim": model_dim, "heads": heads},
        "median_step_ms": med,
        "ratio_attnkit_over_torch": med["attnkit"] / med["torch"],
        "repeats": repeats,
        "torch": torch.__version__,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
