"""Prometheus metrics that add up across worker processes.

With several uvicorn workers each process counts on its own, so prometheus_client's
multiprocess mode is used whenever ``PROMETHEUS_MULTIPROC_DIR`` is set (``chargecast
serve`` points it at a fresh temporary directory before any worker starts): every process
writes its values to memory-mapped files there and ``/metrics`` merges all of them.
Without that variable (tests, a bare ASGI import) each app counts in its own registry.

Per request only plain Python tallies change; they are written to prometheus_client every
``Metrics.FLUSH_SECONDS`` (see :class:`Metrics`). Batches are bucketed with numpy and added
in one write per bucket rather than observed value by value.
"""

from __future__ import annotations

import math
import os
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    multiprocess,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from chargecast.monitor.window import Recent
from chargecast.schema import FIELDS, CategoryField, NumberField

disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series add nothing a dashboard uses (and are absent in multiprocess mode)

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
LATENCY_BUCKETS: Final = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
CHARGES_BUCKETS: Final = (1000, 2000, 3000, 5000, 7500, 10_000, 15_000, 20_000, 30_000, 40_000, 50_000, 75_000)
INPUT_BUCKETS: Final[dict[str, tuple[float, ...]]] = {
    "age": (20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 80, 100),
    "bmi": (16, 18.5, 21, 23, 25, 27, 30, 32, 35, 40, 45, 50, 60, 80),
    # Pairs, never one value per bucket: a bucket's count going up by one must not say how
    # many children one patient has. Likewise no input histogram keeps a sum (see FastHistogram).
    "children": (1, 3, 5),
}


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


Tally = list[float]  # [sum, count in bucket 0, count in bucket 1, ...] not yet written out


def new_tally(bounds: Sequence[float]) -> Tally:
    return [0.0] * (len(bounds) + 1)


class FastHistogram:
    """One labelled histogram child, written in bulk from a tally.

    Adds a count per bucket in one write by reaching into the child's bucket values
    (``_upper_bounds``, ``_buckets``, ``_sum``, each value with ``inc``): unchanged across
    prometheus_client releases for years, in-process and memory-mapped alike. There is no
    slower fallback: if they move, building the metrics fails at start-up, and so do the
    tests that hold these writes to prometheus_client's own ``observe`` and to its
    multiprocess files (tests/test_app.py). A ``private`` histogram (a patient's inputs or
    forecast) keeps bucket counts only: the difference of two sums would be one patient's
    exact value.
    """

    def __init__(self, child: Histogram, private: bool = False) -> None:
        self.private = private
        self.bounds: list[float] = list(child._upper_bounds)
        self._buckets: list[Any] = list(child._buckets)
        self._sum: Any = child._sum
        if len(self.bounds) != len(self._buckets):
            raise RuntimeError(
                f"prometheus_client's histogram internals changed: {len(self.bounds)} bounds, "
                f"{len(self._buckets)} bucket values"
            )

    def add(self, tally: Tally) -> None:
        """Write a tally out and zero it."""
        for i in range(1, len(tally)):
            count = int(tally[i])
            if count:
                self._buckets[i - 1].inc(count)
                tally[i] = 0.0
        if tally[0] and not self.private:
            self._sum.inc(tally[0])
        tally[0] = 0.0


def _bucket_into(tally: Tally, bounds: Sequence[float], values: npt.NDArray[np.float64]) -> None:
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    tally[0] += float(values.sum())
    for i, n in enumerate(counts.tolist(), start=1):
        tally[i] += n


class BatchTally:
    """A batch's bucket counts, added chunk by chunk with numpy (see :meth:`Metrics.batch`)."""

    def __init__(self, metrics: Metrics) -> None:
        self.count = 0
        self._charges_bounds = metrics._charges.bounds
        self.charges = new_tally(self._charges_bounds)
        self.numeric = [(j, bounds, new_tally(bounds)) for j, _, bounds, _ in metrics._numeric]
        self.categories = [(j, [0] * len(children)) for j, children, _ in metrics._categories]

    def add(self, X: npt.NDArray[np.float64], charges: npt.NDArray[np.float64]) -> None:
        self.count += len(charges)
        _bucket_into(self.charges, self._charges_bounds, charges)
        for j, bounds, tally in self.numeric:
            _bucket_into(tally, bounds, X[:, j])
        for j, counts in self.categories:
            for k, n in enumerate(np.bincount(X[:, j].astype(np.intp), minlength=len(counts)).tolist()):
                counts[k] += n


class MonitorGauges:
    """Drift and realised coverage of the recent audit window (exact names: the alert rules use them).

    Every worker computes the same figures from the same store, so in multiprocess mode the
    most recently written value wins ("mostrecent"). Coverage with no actuals in the window is
    unknown, not 0%: it is set to NaN, and a NaN gauge is never published (see
    :class:`chargecast.serving.supervisor._Published`), so the series is absent until there
    is an actual, and no rule compares a NaN.
    """

    def __init__(self, r: CollectorRegistry) -> None:
        def gauge(name: str, text: str, labels: Sequence[str] = ()) -> Gauge:
            return Gauge(name, text, labels, multiprocess_mode="mostrecent", registry=r)

        pair = ("feature", "statistic")
        self.score = gauge("chargecast_drift_score", "Drift of the recent window's inputs against training.", pair)
        self.threshold = gauge("chargecast_drift_threshold", "The threshold each drift score is held to.", pair)
        self.records = gauge("chargecast_drift_window_records", "Logged forecasts in the recent drift window.")
        self.coverage = gauge(
            "chargecast_actuals_coverage", "Share of recent actuals inside their interval (absent without actuals)."
        )
        self.actuals = gauge("chargecast_actuals_window_records", "Recent forecasts that have an actual.")
        self.coverage.set(math.nan)  # nothing known before the first window is read

    def set(self, recent: Recent) -> None:
        for s in recent.scores:
            self.score.labels(s.feature, s.statistic).set(s.value)
            self.threshold.labels(s.feature, s.statistic).set(s.threshold)
        self.records.set(recent.records)
        self.actuals.set(recent.actuals)
        self.coverage.set(recent.coverage)  # NaN without actuals: unpublished


class Metrics:
    """The service's metrics: HTTP traffic, predictions, and inputs for drift monitoring.

    The request path only adds to plain Python tallies (a few list increments); ``flush``
    writes them to prometheus_client's values, which in multiprocess mode are memory-mapped
    files (about a microsecond per write, and a request touches seventeen values). The app
    flushes every ``FLUSH_SECONDS`` and before rendering /metrics, so a scrape is at most
    that stale for the other workers. Tallies belong to the event loop's thread; batch
    observations from worker threads go straight to prometheus_client, which locks.
    """

    FLUSH_SECONDS: Final = 0.1

    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        r = self.registry = CollectorRegistry(auto_describe=True)
        labels = ["route", "method", "status"]
        self.requests = Counter(
            "chargecast_http_requests", "HTTP requests answered, by route, method and status.", labels, registry=r
        )
        self.latency = Histogram(
            "chargecast_http_request_duration_seconds",
            "Time from request start to response end, by route, method and status.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_progress = Gauge(
            "chargecast_http_requests_in_progress",
            "Requests being handled right now, by route.",
            ["route"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.predictions = Counter(
            "chargecast_predictions", "Records predicted, by endpoint.", ["endpoint"], registry=r
        )
        self.charges = Histogram(
            "chargecast_predicted_charges", "Predicted charges in USD.", buckets=CHARGES_BUCKETS, registry=r
        )
        self.category_inputs = Counter(
            "chargecast_input_category",
            "Records received per value of each categorical input (for drift).",
            ["feature", "value"],
            registry=r,
        )
        self.model_info = Gauge(
            "chargecast_model_info",
            "The model being served (value 1), by version.",
            ["version", "predictor", "interval_level"],
            multiprocess_mode="max",
            registry=r,
        )
        self._operations(r)
        self.monitor = MonitorGauges(r)
        self._audit_seen = [0, 0, 0]  # delivered, dropped, restarts already counted
        self._charges = FastHistogram(self.charges, private=True)
        self._charges_tally = new_tally(self._charges.bounds)
        self._numeric: list[tuple[int, FastHistogram, list[float], Tally]] = []
        self._categories: list[tuple[int, list[Any], list[int]]] = []
        for j, spec in enumerate(FIELDS):
            if isinstance(spec, NumberField):
                hist = FastHistogram(
                    Histogram(
                        f"chargecast_input_{spec.name}",
                        f"Input {spec.name} ({spec.label.lower()}) of every record received, for drift.",
                        buckets=INPUT_BUCKETS.get(spec.name, (spec.minimum, spec.maximum)),
                        registry=r,
                    ),
                    private=True,
                )
                self._numeric.append((j, hist, hist.bounds, new_tally(hist.bounds)))
            elif isinstance(spec, CategoryField):
                children = [self.category_inputs.labels(spec.name, c) for c in spec.choices]
                self._categories.append((j, children, [0] * len(children)))
        self._latency_bounds = [float(b) for b in LATENCY_BUCKETS] + [math.inf]
        # (route, method, status) -> [count, tally]; route -> requests now in progress
        self._requests: dict[tuple[str, str, int], tuple[list[int], Tally]] = {}
        self._request_children: dict[tuple[str, str, int], tuple[Any, FastHistogram]] = {}
        self._in_progress: dict[str, int] = {}
        self._in_progress_written: dict[str, int] = {}
        self._predicted: dict[str, int] = {}

    def _operations(self, r: CollectorRegistry) -> None:
        """The audit log (docs/audit.md) and readiness, per worker: alert rules use these names."""
        self.audit_records = Counter("chargecast_audit_records", "Audit records delivered to the store.", registry=r)
        self.audit_dropped = Counter(
            "chargecast_audit_dropped", "Audit records lost: queue full and spool at its limit.", registry=r
        )
        self.audit_backlog = Gauge(
            "chargecast_audit_backlog_records",
            "Audit records queued or spooled, not yet in the store.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.audit_sink_up = Gauge(
            "chargecast_audit_sink_up",
            "1 if this worker's last audit delivery succeeded, else 0.",
            multiprocess_mode="liveall",
            registry=r,
        )
        self.audit_in_worker = Gauge(
            "chargecast_audit_in_worker",
            "1 while this worker writes its audit records itself: its audit process (idle CPU priority) is starved.",
            multiprocess_mode="liveall",
            registry=r,
        )
        self.audit_restarts = Counter(
            "chargecast_audit_process_restarts", "Audit processes that died and were started again.", registry=r
        )
        self.ready = Gauge(
            "chargecast_ready", "1 while this worker's model is loaded (/readyz 200), else 0.",
            multiprocess_mode="liveall", registry=r,
        )  # fmt: skip

    # -- the request path (event loop thread only) ----------------------------------------
    def started(self, route: str) -> None:
        self._in_progress[route] = self._in_progress.get(route, 0) + 1

    def finished(self, route: str, method: str, status: int, seconds: float) -> None:
        self._in_progress[route] -= 1
        key = (route, method, status)
        entry = self._requests.get(key)
        if entry is None:
            entry = self._requests[key] = ([0], new_tally(self._latency_bounds))
        entry[0][0] += 1
        tally = entry[1]
        tally[0] += seconds
        tally[1 + bisect_left(self._latency_bounds, seconds)] += 1

    def observe_one(self, endpoint: str, row: Sequence[float], charges: float) -> None:
        """One encoded record and its prediction."""
        self._predicted[endpoint] = self._predicted.get(endpoint, 0) + 1
        tally = self._charges_tally
        tally[0] += charges
        tally[1 + bisect_left(self._charges.bounds, charges)] += 1
        for j, _, bounds, tally in self._numeric:
            value = row[j]
            tally[0] += value
            tally[1 + bisect_left(bounds, value)] += 1
        for j, _, counts in self._categories:
            counts[int(row[j])] += 1

    def flush(self) -> None:
        """Write the tallies out (a no-op when nothing happened since the last flush)."""
        for key, (count, tally) in self._requests.items():
            if count[0]:
                written = self._request_children.get(key)
                if written is None:
                    route, method, status = key
                    written = (
                        self.requests.labels(route, method, str(status)),
                        FastHistogram(self.latency.labels(route, method, str(status))),
                    )
                    self._request_children[key] = written
                written[0].inc(count[0])
                written[1].add(tally)
                count[0] = 0
        for route, now in self._in_progress.items():
            if self._in_progress_written.get(route) != now:
                self.in_progress.labels(route).set(now)
                self._in_progress_written[route] = now
        for endpoint, n in self._predicted.items():
            if n:
                self.predictions.labels(endpoint).inc(n)
                self._predicted[endpoint] = 0
        self._charges.add(self._charges_tally)
        for _, hist, _, tally in self._numeric:
            hist.add(tally)
        for _, children, counts in self._categories:
            for k, n in enumerate(counts):
                if n:
                    children[k].inc(n)
                    counts[k] = 0

    # -- batches (any thread) ------------------------------------------------------------
    def batch(self) -> BatchTally:
        """A tally for one batch, filled chunk by chunk and written with :meth:`commit`."""
        return BatchTally(self)

    def commit(self, endpoint: str, tally: BatchTally) -> None:
        """Write a batch's tally at once: a constant number of writes whatever its size."""
        if not tally.count:
            return
        self.predictions.labels(endpoint).inc(tally.count)
        self._charges.add(tally.charges)
        for (_, hist, _, _), (_, _, buckets) in zip(self._numeric, tally.numeric, strict=True):
            hist.add(buckets)
        for (_, children, _), (_, counts) in zip(self._categories, tally.categories, strict=True):
            for k, n in enumerate(counts):
                if n:
                    children[k].inc(n)

    def observe_many(self, endpoint: str, X: npt.NDArray[np.float64], charges: npt.NDArray[np.float64]) -> None:
        """A whole batch at once."""
        tally = self.batch()
        tally.add(X, charges)
        self.commit(endpoint, tally)

    def observe(self, endpoint: str, rows: Any, charges: Any) -> None:
        """One record (from the event loop) or a batch, whichever ``predict.Scored`` holds."""
        if isinstance(charges, np.ndarray):
            self.observe_many(endpoint, rows, charges)
        else:
            self.observe_one(endpoint, rows, charges)

    def audit(self, writer: Any) -> None:
        """The audit writer's plain counters, as metrics (read a few times a second)."""
        delivered, dropped = writer.delivered, writer.dropped
        if delivered > self._audit_seen[0]:
            self.audit_records.inc(delivered - self._audit_seen[0])
        if dropped > self._audit_seen[1]:
            self.audit_dropped.inc(dropped - self._audit_seen[1])
        restarts = writer.restarts
        if restarts > self._audit_seen[2]:
            self.audit_restarts.inc(restarts - self._audit_seen[2])
        self._audit_seen = [delivered, dropped, restarts]
        self.audit_backlog.set(writer.backlog())
        self.audit_sink_up.set(writer.sink_up)
        self.audit_in_worker.set(int(writer.writing_locally))

    # -- life cycle ----------------------------------------------------------------------
    def set_monitor(self, recent: Recent) -> None:
        """The monitoring task's figures (drift and realised coverage of the recent window)."""
        self.monitor.set(recent)

    def set_model(self, version: str, predictor: str, level: float) -> None:
        self.model_info.labels(version, predictor, f"{level:g}").set(1)

    def render(self) -> bytes:
        """The text exposition as the supervisor's metrics port publishes it (no patient sums).

        In multiprocess mode it is merged from every process's files; otherwise this
        process's own registry (tests, a bare ASGI import).
        """
        from chargecast.serving.supervisor import render_families, render_metrics

        path = multiprocess_dir()
        if self.multiprocess and path:
            return render_metrics(path)
        return render_families(self.registry.collect)

    def process_exit(self) -> None:
        """Write what is pending and drop this process's live gauges from the merged view."""
        self.flush()
        path = multiprocess_dir()
        if self.multiprocess and path and os.path.isdir(path):
            multiprocess.mark_process_dead(os.getpid(), path)  # type: ignore[no-untyped-call]
