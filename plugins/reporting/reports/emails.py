"""The report email: plain text and HTML, the PDF attached (or linked when it is too large),
and the RFC 8058 one-click unsubscribe headers."""

from __future__ import annotations

import datetime
import email.policy
import email.utils
from email.message import EmailMessage, MIMEPart

from flask import current_app, render_template

from plugins.reporting.reports import timing, tokens

TOTAL_LABELS = (
    ("new", "New documents"),
    ("updated", "Updated documents"),
    ("deleted", "Deleted documents"),
    ("images", "Images"),
    ("missing", "Missing files"),
    ("corrupt", "Corrupt files (MD5 mismatch)"),
    ("near_duplicates", "Near-duplicate images"),
)


def public_url(path: str) -> str:
    return current_app.config["REPORTING_PUBLIC_URL"].rstrip("/") + path


def attachment(pdf: bytes, week: str, study: str | None) -> MIMEPart:
    """The PDF as a MIME part: built once per batch and attached to every message of it
    (base64 of a large PDF per recipient would cost more than the SMTP conversation)."""
    part = MIMEPart(policy=email.policy.SMTP)
    name = f"caredeck-report-{week}{'-' + _slug(study) if study else ''}.pdf"
    part.set_content(pdf, maintype="application", subtype="pdf", filename=name)
    return part


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)[:60]


def compose(
    *,
    recipient: str,
    name: str,
    subscription_id: int,
    run_id: int,
    week: str,
    study: str | None,
    totals: dict,
    pdf_part: MIMEPart | None,
    sender: str,
) -> EmailMessage:
    """One recipient's message. ``pdf_part`` None: the PDF is over the size limit, so the
    message links to it instead (a signed link that expires)."""
    unsubscribe = public_url(f"/reports/unsubscribe/{tokens.unsubscribe_token(subscription_id)}")
    link = None
    if pdf_part is None:
        link = public_url(f"/reports/pdf/{tokens.report_link_token(run_id)}")
    first, last = timing.week_bounds(week)
    scope = f"study {study}" if study else "all studies"
    context = {
        "name": name,
        "week": week,
        "first": first,
        "last": last,
        "scope": scope,
        "totals": [(label, totals.get(key, 0)) for key, label in TOTAL_LABELS],
        "link": link,
        "link_days": current_app.config["REPORTING_LINK_DAYS"],
        "unsubscribe": unsubscribe,
    }
    message = EmailMessage(policy=email.policy.SMTP)
    message["Subject"] = f"Caredeck weekly documents report {week} ({scope})"
    message["From"] = sender
    message["To"] = recipient
    message["Date"] = email.utils.format_datetime(datetime.datetime.now(datetime.UTC))
    domain = email.utils.parseaddr(sender)[1].rpartition("@")[2] or "caredeck.local"
    # One subscription and week, one Message-ID: a receiver can drop a duplicate by it.
    message["Message-ID"] = f"<report-{subscription_id}-{week}@{domain}>"
    message["List-Unsubscribe"] = f"<{unsubscribe}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(_text(context))
    message.add_alternative(render_template("reporting/mail.html", **context), subtype="html")
    if pdf_part is not None:
        message.make_mixed()
        message.attach(pdf_part)
    return message


def _text(context: dict) -> str:
    lines = [
        f"Hello {context['name']},",
        "",
        f"This is the Caredeck documents report for {context['week']} "
        f"({context['first']:%d %B} to {context['last']:%d %B %Y}), {context['scope']}.",
        "",
    ]
    lines += [f"  {label}: {value}" for label, value in context["totals"]]
    lines.append("")
    if context["link"]:
        lines += [
            "The PDF is too large to attach. Download it here (the link works for "
            f"{context['link_days']} days):",
            context["link"],
        ]
    else:
        lines.append("The full report is attached as a PDF.")
    lines += ["", "To stop receiving this report, open:", context["unsubscribe"], ""]
    return "\n".join(lines)
