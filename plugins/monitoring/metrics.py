"""The monitoring plugin's Prometheus metrics, read from the ingest ledger at each scrape."""

from __future__ import annotations

import peewee
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from core.db import utcnow
from plugins.monitoring.ingest import APPLIED, QUARANTINED
from plugins.monitoring.models import IngestFile


class IngestMetrics:
    """How fresh and how clean the ingested source data is: seconds since the newest file
    was taken into the ledger, and the files and rows taken and rejected so far."""

    def collect(self):
        newest = (
            IngestFile.select(IngestFile.ingested_at)
            .order_by(IngestFile.ingested_at.desc())
            .first()
        )
        totals = (
            IngestFile.select(
                IngestFile.status,
                peewee.fn.COUNT(IngestFile.id).alias("files"),
                peewee.fn.SUM(IngestFile.inserted).alias("inserted"),
                peewee.fn.SUM(IngestFile.updated).alias("updated"),
                peewee.fn.SUM(IngestFile.rejected).alias("rejected"),
            )
            .group_by(IngestFile.status)
            .dicts()
        )
        by_status = {row["status"]: row for row in totals}

        lag = GaugeMetricFamily(
            "caredeck_monitoring_ingest_lag_seconds",
            "Seconds since the newest file was taken into the ingest ledger (absent before "
            "the first file).",
        )
        if newest is not None:
            lag.add_metric([], (utcnow() - newest.ingested_at).total_seconds())
        files = CounterMetricFamily(
            "caredeck_monitoring_ingest_files",
            "Source files in the ingest ledger, by status (applied: taken; quarantined: "
            "rejected whole).",
            labels=["status"],
        )
        for status in (APPLIED, QUARANTINED):
            files.add_metric([status], by_status.get(status, {}).get("files") or 0)
        rows = CounterMetricFamily(
            "caredeck_monitoring_ingest_rows",
            "Rows of the applied files, by outcome (inserted, updated: taken; rejected).",
            labels=["outcome"],
        )
        applied = by_status.get(APPLIED, {})
        for outcome in ("inserted", "updated", "rejected"):
            rows.add_metric([outcome], applied.get(outcome) or 0)
        return [lag, files, rows]
