"""The recent window the service's gauges watch: read from the audit store, numpy only.

A worker's background task calls :func:`recent` in a thread every
``CHARGECAST_MONITOR_SECONDS``: the newest ``max_records`` forecasts of the last
``hours``, as a drift :class:`~chargecast.monitor.drift.Window`, and the share of their
actuals (joined by forecast time) that fell inside the interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from chargecast.audit.store import Store
from chargecast.model.reference import Reference
from chargecast.monitor import drift


@dataclass(frozen=True)
class Recent:
    scores: list[drift.Score]
    records: int  # forecasts in the window
    actuals: int  # of them, those with an actual
    coverage: float  # share of those actuals inside [low, high]; nan without any


def recent(
    store: Store, reference: Reference, now: datetime, hours: float, max_records: int, thresholds: drift.Thresholds
) -> Recent:
    """Drift and realised coverage of the newest ``max_records`` forecasts of the last ``hours``."""
    since = now - timedelta(hours=hours)
    newest = list(store.forecasts(since=since, newest=max_records))
    window = drift.window_from_inputs(f.inputs for f in newest)
    found = drift.scores(reference, window, thresholds) if window.rows else []
    paid = list(store.realised(since=since, newest=max_records))
    inside = sum(1 for f, actual in paid if f.low <= actual <= f.high)
    return Recent(found, window.rows, len(paid), inside / len(paid) if paid else math.nan)
