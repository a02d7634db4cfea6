"""Per-model metrics that add up across ``--workers`` processes (Prometheus multiprocess mode).

* ``attnkit_model_requests_total{model, status}``: inference requests to a named model;
* ``attnkit_batch_size{model}``: requests per forward pass (dynamic batching; 1 when unbatched);
* ``attnkit_queue_seconds{model}``: time a request waited for its forward pass to start.

With ``PROMETHEUS_MULTIPROC_DIR`` set (``attnkit.server.run`` sets it for ``--workers N > 1``), every
process writes its numbers to memory-mapped files there and a scrape of ``/metrics`` on any worker
reports the sum over all of them (``prometheus_client.multiprocess.MultiProcessCollector``); otherwise
they are the one process's. Without ``prometheus_client`` installed, nothing is recorded.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["observe_request", "observe_batch", "observe_queue", "render"]

_prom: Any
try:
    import prometheus_client as _prom
except ImportError:  # pragma: no cover - optional
    _prom = None

_METRICS: dict[str, Any] = {}


def _get() -> dict[str, Any]:
    if _prom is None:
        return {}
    if not _METRICS:
        reg = _prom.CollectorRegistry(auto_describe=True)
        _METRICS["registry"] = reg
        _METRICS["requests"] = _prom.Counter(
            "attnkit_model_requests", "Inference requests to a named model, by status.", ["model", "status"], registry=reg
        )
        _METRICS["batch"] = _prom.Histogram(
            "attnkit_batch_size",
            "Requests merged into one forward pass (dynamic batching).",
            ["model"],
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64),
            registry=reg,
        )
        _METRICS["queue"] = _prom.Histogram(
            "attnkit_queue_seconds",
            "Time a request waited for its forward pass to start.",
            ["model"],
            buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=reg,
        )
    return _METRICS


#: labelled children by (metric, label values): ``labels()`` costs more than the observation itself
_CHILDREN: dict[tuple[str, ...], Any] = {}


def _child(metric: str, *values: str) -> Any:
    key = (metric, *values)
    child = _CHILDREN.get(key)
    if child is None:
        m = _get()
        if not m:
            return None
        child = _CHILDREN[key] = m[metric].labels(*values)
    return child


def observe_request(model: str, status: int) -> None:
    child = _child("requests", model, str(status))
    if child is not None:
        child.inc()


def observe_batch(model: str, size: int) -> None:
    child = _child("batch", model)
    if child is not None:
        child.observe(size)


def observe_queue(model: str, seconds: float) -> None:
    child = _child("queue", model)
    if child is not None:
        child.observe(max(0.0, seconds))


def render() -> str:
    """These metrics in the Prometheus text format (summed over workers in multiprocess mode)."""
    m = _get()
    if not m:
        return ""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        reg = _prom.CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)
        return _prom.generate_latest(reg).decode()
    return _prom.generate_latest(m["registry"]).decode()
