"""The report email: plain text and HTML, the PDF attached (or linked when it is too large),
and the RFC 8058 one-click unsubscribe headers."""

from __future__ import annotations

import datetime
import email.charset
import email.header
import email.policy
import email.utils
import unicodedata
import uuid
from email.message import MIMEPart
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

from flask import current_app, render_template

from plugins.reporting.reports import timing, tokens

CRLF = email.policy.compat32.clone(linesep="\r\n", max_line_length=998)  # RFC 5322 limit
UTF8 = email.charset.Charset("utf-8")
UTF8.body_encoding = email.charset.QP  # readable text, unlike base64

TOTAL_LABELS = (
    ("new", "New documents"),
    ("updated", "Updated documents"),
    ("deleted", "Deleted documents"),
    ("moved_out", "Documents moved to another study"),
    ("deleted_meanwhile", "New documents deleted while the report was made"),
    ("images", "Images"),
    ("missing", "Missing files"),
    ("corrupt", "Corrupt files (MD5 mismatch)"),
    ("near_duplicates", "Near-duplicate images"),
)


def public_url(path: str) -> str:
    return current_app.config["REPORTING_PUBLIC_URL"].rstrip("/") + path


def attachment(pdf: bytes, week: str, study: str | None) -> bytes:
    """The PDF as a serialised MIME part: encoded once per batch and spliced into every
    message of it (encoding a large PDF for each recipient would cost more than the SMTP
    conversation)."""
    part = MIMEPart(policy=email.policy.SMTP)
    name = f"caredeck-report-{week}{'-' + _slug(study) if study else ''}.pdf"
    part.set_content(pdf, maintype="application", subtype="pdf", filename=name)
    return part.as_bytes(policy=email.policy.SMTP)


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
    pdf_part: bytes | None,
    sender: str,
) -> bytes:
    """One recipient's message, serialised. ``pdf_part`` (from :func:`attachment`) is
    attached; None: the PDF is over the size limit, so the message links to it instead (a
    signed link that expires)."""
    unsubscribe = public_url(f"/reports/unsubscribe/{tokens.unsubscribe_token(subscription_id)}")
    link = None
    if pdf_part is None:
        link = public_url(f"/reports/pdf/{tokens.report_link_token(run_id)}")
    first = timing.week_monday(week)
    last = first + datetime.timedelta(days=6)
    # Study names are checked when they come in; one stored before that, with a newline,
    # must still not break the Subject header (or the whole message).
    scope = f"study {_one_line(study)}" if study else "all studies"
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
    # The classic email API (compat32): the modern one parses and refolds every header,
    # which was most of the cost of an email at hundreds a second.
    domain = email.utils.parseaddr(sender)[1].rpartition("@")[2] or "caredeck.local"
    alternative = MIMEMultipart("alternative", policy=CRLF)
    alternative.attach(MIMEText(_text(context), "plain", UTF8, policy=CRLF))
    html = render_template("reporting/mail.html", **context)
    alternative.attach(MIMEText(html, "html", UTF8, policy=CRLF))
    boundary = f"=_caredeck_{uuid.uuid4().hex}"
    message = alternative if pdf_part is None else MIMEMultipart("mixed", policy=CRLF)
    message.set_boundary(boundary)
    message["Subject"] = _header(f"Caredeck weekly documents report {week} ({scope})")
    message["From"] = _address(sender)
    message["To"] = recipient
    message["Date"] = email.utils.format_datetime(datetime.datetime.now(datetime.UTC))
    # One subscription and week, one Message-ID: a receiver can drop a duplicate by it.
    message["Message-ID"] = f"<report-{subscription_id}-{week}@{domain}>"
    message["List-Unsubscribe"] = f"<{unsubscribe}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message["Auto-Submitted"] = "auto-generated"
    if pdf_part is None:
        return message.as_bytes(policy=CRLF)
    message.attach(alternative)
    data = message.as_bytes(policy=CRLF)
    # Splice the encoded PDF in as the last part, before the closing delimiter.
    closing = data.rindex(f"--{boundary}--".encode())
    return b"".join(
        (data[:closing], f"--{boundary}\r\n".encode(), pdf_part, b"\r\n", data[closing:])
    )


def _one_line(text: str) -> str:
    return "".join(
        " " if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs") else c for c in text
    )


def _header(text: str) -> str:
    return text if text.isascii() else email.header.Header(text, "utf-8").encode()


def _address(text: str) -> str:
    name, address = email.utils.parseaddr(text)
    return email.utils.formataddr((name, address), charset="utf-8")


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
