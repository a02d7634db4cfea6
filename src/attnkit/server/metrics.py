"""Prometheus metrics of one server process, written in the text exposition format (version 0.0.4).

Counters of requests by route, method and status; a latency histogram by route; errors by route
and error code; gauges of computations running and waiting. With ``--workers N`` each process keeps
its own numbers (a scrape reaches one worker).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

__all__ = ["Metrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _num(x: float) -> str:
    return repr(float(x)) if x != int(x) else str(int(x))


class Metrics:
    """Thread-safe counters and histograms; :meth:`render` gives the Prometheus text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self._errors: dict[tuple[str, str], int] = defaultdict(int)
        self._hist: dict[str, list[int]] = {}
        self._sum: dict[str, float] = defaultdict(float)
        self._count: dict[str, int] = defaultdict(int)
        self._started = time.time()
        self.running = 0
        self.waiting = 0

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(route, method, str(status))] += 1
            counts = self._hist.setdefault(route, [0] * len(BUCKETS))
            for i, b in enumerate(BUCKETS):
                if seconds <= b:
                    counts[i] += 1
            self._sum[route] += seconds
            self._count[route] += 1

    def error(self, route: str, code: str) -> None:
        with self._lock:
            self._errors[(route, code)] += 1

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP attnkit_requests_total HTTP requests answered, by route, method and status.",
                "# TYPE attnkit_requests_total counter",
            ]
            for (route, method, status), n in sorted(self._requests.items()):
                lines.append(f"attnkit_requests_total{_labels(route=route, method=method, status=status)} {n}")
            lines += [
                "# HELP attnkit_request_errors_total Error answers, by route and error code.",
                "# TYPE attnkit_request_errors_total counter",
            ]
            for (route, code), n in sorted(self._errors.items()):
                lines.append(f"attnkit_request_errors_total{_labels(route=route, code=code)} {n}")
            lines += [
                "# HELP attnkit_request_duration_seconds Time to answer a request, by route.",
                "# TYPE attnkit_request_duration_seconds histogram",
            ]
            for route in sorted(self._hist):
                for b, n in zip(BUCKETS, self._hist[route], strict=True):
                    lines.append(f"attnkit_request_duration_seconds_bucket{_labels(route=route, le=_num(b))} {n}")
                lines.append(f"attnkit_request_duration_seconds_bucket{_labels(route=route, le='+Inf')} {self._count[route]}")
                lines.append(f"attnkit_request_duration_seconds_sum{_labels(route=route)} {self._sum[route]!r}")
                lines.append(f"attnkit_request_duration_seconds_count{_labels(route=route)} {self._count[route]}")
            lines += [
                "# HELP attnkit_computations_running Computations running now.",
                "# TYPE attnkit_computations_running gauge",
                f"attnkit_computations_running {self.running}",
                "# HELP attnkit_computations_waiting Requests waiting for a computation slot.",
                "# TYPE attnkit_computations_waiting gauge",
                f"attnkit_computations_waiting {self.waiting}",
                "# HELP attnkit_start_time_seconds Unix time the process started serving.",
                "# TYPE attnkit_start_time_seconds gauge",
                f"attnkit_start_time_seconds {self._started!r}",
            ]
        return "\n".join(lines) + "\n"
