"""What the patient chart's EHR section shows, in one call (for the pages)."""

from __future__ import annotations

from plugins.ehr import delivery, organizations, questionnaire


def chart_data(mrn: str) -> dict:
    """The patient's EHR link, submissions (newest first) each with its state and its
    deliveries, and counts by state::

        {"link": PatientLink | None, "organization": Organization | None,
         "submissions": [{"submission": Submission, "state": "pending"|"sent"|"failed",
                          "deliveries": [Delivery, ...]}],
         "deliveries": [Delivery, ...],           # newest first
         "waiting_for": {delivery_id: earlier_delivery_id},  # held by an unsent earlier one
         "counts": {"pending": n, "sent": n, "failed": n}}

    A delivery's ``mapping_version_id``, ``state``, ``attempts``, ``last_error`` and
    ``sent_at`` are what the chart lists; a failed one can be retried with
    :func:`plugins.ehr.delivery.retry`.
    """
    link = organizations.link_of(mrn)
    deliveries = delivery.deliveries_of(mrn)
    by_submission: dict[int, list] = {}
    for item in deliveries:
        by_submission.setdefault(item.submission_id, []).append(item)
    submissions = [
        {
            "submission": submission,
            "state": delivery.submission_state(by_submission.get(submission.id, [])),
            "deliveries": sorted(by_submission.get(submission.id, []), key=lambda d: d.sequence),
        }
        for submission in questionnaire.submissions_of(mrn)
    ]
    counts = {state: 0 for state in ("pending", "sent", "failed")}
    for item in deliveries:
        counts[item.state] += 1
    return {
        "link": link,
        "organization": link.organization if link else None,
        "submissions": submissions,
        "deliveries": deliveries,
        "waiting_for": delivery.waiting_for(deliveries),
        "counts": counts,
    }
