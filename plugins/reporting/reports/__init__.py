"""Reporting, the reports part: what it registers (gathered by plugins/reporting/plugin.py).

Subscriptions, the scheduler's task, the Dramatiq pipeline that renders each report once
per scope and week and emails it in batches, the delivery ledger, one-click unsubscribe and
the runs API. ``docs/reporting.md`` describes the design.
"""

import datetime

from core.config import Setting, integer


def _url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise ValueError(
            "must be the address people reach Caredeck at, e.g. https://caredeck.example.org"
        )
    return text.rstrip("/")


SETTINGS: list = [
    Setting(
        "REPORTING_PUBLIC_URL",
        "http://127.0.0.1:5000",
        _url,
        "The address people reach Caredeck at; links in report emails (unsubscribe, large "
        "PDFs) start with it.",
    ),
    Setting(
        "REPORTING_MAIL_FROM",
        "Caredeck reports <reports@caredeck.local>",
        str,
        "The sender of report emails.",
    ),
    Setting(
        "REPORTING_ATTACHMENT_MAX_BYTES",
        str(5 * 1024 * 1024),
        integer(minimum=0),
        "A report PDF larger than this is linked (a link that expires) instead of attached.",
    ),
    Setting(
        "REPORTING_LINK_DAYS",
        "14",
        integer(minimum=1),
        "How many days the link to a report too large to attach works.",
    ),
    Setting(
        "REPORTING_UNSUBSCRIBE_DAYS",
        "90",
        integer(minimum=1),
        "How many days an email's one-click unsubscribe link works.",
    ),
    Setting(
        "REPORTING_BATCH_SIZE",
        "200",
        integer(minimum=1),
        "Recipients per send job (each job sends over one SMTP connection).",
    ),
    Setting(
        "REPORTING_RENDER_LEASE_SECONDS",
        "120",
        integer(minimum=4),
        "A worker renews its claim on the run it renders every quarter of this; a run not "
        "renewed for this long (its worker died) is rendered by another worker.",
    ),
    Setting(
        "REPORTING_SEND_LEASE_SECONDS",
        "600",
        integer(minimum=10),
        "A send job's claim on its recipients lasts this long after the last email it sent; "
        "past it (the worker died) they go to another job. Keep it well above the SMTP "
        "timeout. Short leases recover sooner but re-dispatch more when the queue is long.",
    ),
]


from core.auth import STAFF  # noqa: E402
from core.dashboard import NavItem  # noqa: E402
from core.scheduler import Schedule  # noqa: E402
from plugins.reporting.reports import api, pipeline, views  # noqa: E402
from plugins.reporting.reports.metrics import LedgerMetrics  # noqa: E402
from plugins.reporting.reports.models import MODELS as _MODELS  # noqa: E402

MODELS: list = list(_MODELS)
API_BLUEPRINTS: list = [api.blp]
PAGE_BLUEPRINTS: list = [views.pages]
NAVIGATION: list = [
    NavItem(
        "reporting_subscriptions",
        "Reports",
        "reporting_reports_pages.subscriptions_page",
        order=60,
        roles=STAFF,
    )
]
ACTORS: list = [pipeline.render_run, pipeline.send_batch]
# Finds due subscriptions, adds them to the ledger and enqueues what their runs need; also
# takes over stalled runs. Idempotent, so any number of schedulers may run it.
SCHEDULES: list = [
    Schedule("reporting.due_reports", datetime.timedelta(seconds=30), pipeline.enqueue_due)
]
CLI_COMMANDS: list = []
METRICS: list = [LedgerMetrics()]
