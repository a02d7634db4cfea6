"""Prometheus metrics of the HTTP routes, which add up across ``--workers`` processes.

* ``attnkit_requests_total{route, method, status}``: requests answered;
* ``attnkit_request_errors_total{route, code}``: error answers by error code;
* ``attnkit_request_duration_seconds{route}``: a histogram of the time to answer;
* ``attnkit_computations_running`` / ``attnkit_computations_waiting``: gauges (summed over live workers);
* ``attnkit_start_time_seconds``: when the earliest live worker started serving.

They are ``prometheus_client`` metrics. With ``PROMETHEUS_MULTIPROC_DIR`` set (``attnkit.server.run``
sets it for ``--workers N > 1`` before the workers start), every worker process writes its numbers to
memory-mapped files there, and a scrape of ``/metrics`` on any worker reports the sum over all of them
(``prometheus_client.multiprocess.MultiProcessCollector``), as the per-model metrics of
:mod:`.model_metrics` do. Without it they are the one process's.
"""

from __future__ import annotations

import os
import time
from typing import Any

import prometheus_client as _prom

__all__ = ["Metrics", "CONTENT_TYPE", "render_all", "multiprocess_mode"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def multiprocess_mode() -> bool:
    """Whether metrics are shared across worker processes (``PROMETHEUS_MULTIPROC_DIR`` is set)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class Metrics:
    """The route metrics of one server process (see the module docstring); :meth:`render` gives the
    Prometheus text of this process's registry."""

    def __init__(self) -> None:
        self._running = 0
        self._waiting = 0
        reg = self.registry = _prom.CollectorRegistry(auto_describe=True)
        self._requests = _prom.Counter(
            "attnkit_requests", "HTTP requests answered, by route, method and status.", ["route", "method", "status"], registry=reg
        )
        self._errors = _prom.Counter("attnkit_request_errors", "Error answers, by route and error code.", ["route", "code"], registry=reg)
        self._duration = _prom.Histogram(
            "attnkit_request_duration_seconds", "Time to answer a request, by route.", ["route"], buckets=BUCKETS, registry=reg
        )
        self._running_g = _prom.Gauge("attnkit_computations_running", "Computations running now.", registry=reg, multiprocess_mode="livesum")
        self._waiting_g = _prom.Gauge(
            "attnkit_computations_waiting", "Requests waiting for a computation slot.", registry=reg, multiprocess_mode="livesum"
        )
        started = _prom.Gauge("attnkit_start_time_seconds", "Unix time the process started serving.", registry=reg, multiprocess_mode="min")
        started.set(time.time())
        # labelled children by label values: labels() costs more than the increment itself
        self._children: dict[tuple[Any, ...], Any] = {}

    # the gauges: plain ints for the server's own decisions, mirrored into the (shared) gauges
    @property
    def running(self) -> int:
        return self._running

    @running.setter
    def running(self, value: int) -> None:
        self._running = value
        self._running_g.set(value)

    @property
    def waiting(self) -> int:
        return self._waiting

    @waiting.setter
    def waiting(self, value: int) -> None:
        self._waiting = value
        self._waiting_g.set(value)

    def _child(self, metric: Any, *values: str) -> Any:
        key = (id(metric), *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self._child(self._requests, route, method, str(status)).inc()
        self._child(self._duration, route).observe(seconds)

    def error(self, route: str, code: str) -> None:
        self._child(self._errors, route, code).inc()

    def render(self) -> str:
        """This process's route metrics in the Prometheus text format."""
        return str(_prom.generate_latest(self.registry).decode())


def render_all(metrics: Metrics) -> str:
    """Every metric of the server: summed over all worker processes in multiprocess mode (route and
    per-model metrics alike), else this process's route metrics and its per-model metrics."""
    from . import model_metrics

    if multiprocess_mode():
        from prometheus_client import multiprocess

        reg = _prom.CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)
        return str(_prom.generate_latest(reg).decode())
    return metrics.render() + model_metrics.render()
