"""Reporting, the documents part: what it registers (gathered by plugins/reporting/plugin.py).

The documents store: ``Document`` records in the database, their files in the store named
by ``STORAGE_URL`` (:mod:`plugins.reporting.documents.storage`), the ``/api/documents``
routes, and the jobs that finish file removals. See ``docs/documents.md``.
"""

import datetime

from core.config import Setting, integer
from core.scheduler import Schedule
from plugins.reporting.documents import api, jobs
from plugins.reporting.documents.models import MODELS as DOCUMENT_MODELS

SETTINGS: list = [
    Setting(
        "REPORTING_UPLOAD_MAX_BYTES",
        str(50 * 1024 * 1024),
        integer(minimum=1),
        "Largest document file accepted by POST /api/documents, in bytes (default 50 MiB); "
        "larger uploads get a 413 naming the limit and nothing is stored.",
    ),
]
MODELS: list = list(DOCUMENT_MODELS)
API_BLUEPRINTS: list = [api.blp]
PAGE_BLUEPRINTS: list = []
NAVIGATION: list = []
ACTORS: list = list(jobs.ACTORS)
# Enqueues the sweep of file removals left pending (an upload whose process died, a delete
# whose file removal kept failing) when one is due. Idempotent, like every schedule.
SWEEP_EVERY = datetime.timedelta(minutes=10)
SCHEDULES: list = [Schedule("reporting.sweep_document_files", SWEEP_EVERY, jobs.enqueue_sweep)]
CLI_COMMANDS: list = []
