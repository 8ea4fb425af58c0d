"""The reports' Prometheus metrics, read from the runs and the delivery ledger at each
scrape: the backlog (deliveries still pending, runs still under way) and the failures."""

from __future__ import annotations

import peewee
from prometheus_client.core import GaugeMetricFamily

from plugins.reporting.reports.models import DELIVERY_STATES, RUN_STATES, Delivery, ReportRun


def _by_state(model, states: tuple[str, ...]) -> dict[str, int]:
    rows = model.select(model.state, peewee.fn.COUNT(model.id).alias("n")).group_by(model.state)
    found = {row.state: row.n for row in rows}
    return {state: found.get(state, 0) for state in states}


class LedgerMetrics:
    def collect(self):
        deliveries = GaugeMetricFamily(
            "caredeck_reporting_deliveries",
            "Report emails in the delivery ledger, by state (pending, claimed and sending "
            "are the backlog; failed gave up).",
            labels=["state"],
        )
        for state, count in _by_state(Delivery, DELIVERY_STATES).items():
            deliveries.add_metric([state], count)
        runs = GaugeMetricFamily(
            "caredeck_reporting_runs",
            "Report runs (one per scope and week), by state.",
            labels=["state"],
        )
        for state, count in _by_state(ReportRun, RUN_STATES).items():
            runs.add_metric([state], count)
        return [deliveries, runs]
