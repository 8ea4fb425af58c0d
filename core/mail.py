"""The core's mailer: one setting, ``SMTP_URL``, says where mail goes.

- ``file:///folder``: each message is written to ``folder`` as an ``.eml`` file (the embedded
  default, ``instance/outbox``): nothing leaves the machine.
- ``smtp://user:password@host:587``: SMTP, upgraded with STARTTLS when the server offers it.
  ``?starttls=require`` refuses a server that does not offer it; ``?starttls=disable`` never
  upgrades (a local catcher such as mailpit on port 1025).
- ``smtps://user:password@host:465``: SMTP over implicit TLS.

``?cafile=/path/ca.pem`` trusts a private certificate authority (the system's are trusted
otherwise; the server's certificate is always verified). ``?timeout=SECONDS`` (default 30)
bounds every network step, so a hung server fails the
send instead of leaving a job "working" forever. Send many messages over one connection::

    with mailer_for(app).connect() as connection:
        for message in messages:
            connection.send(message)

A failure raises :class:`MailError`; ``permanent`` says whether trying again can help (the
server refused the recipient or the message with a 5xx code) or not (a 4xx code, even for a
recipient, or a lost connection). ``outcome_unknown``: the whole message had been sent when
the connection failed, so the server may have accepted it; do not send it again. An address
that is not ASCII is sent with SMTPUTF8 when the server offers it, refused (permanently,
before anything is sent) otherwise.
"""

from __future__ import annotations

import contextlib
import copy
import email.policy
import email.utils
import os
import re
import smtplib
import ssl
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_TIMEOUT = 30.0
STARTTLS_MODES = ("auto", "require", "disable")


class MailError(Exception):
    """A message was not accepted. ``permanent``: the server refused it for good (5xx)."""

    def __init__(
        self, message: str, *, permanent: bool = False, outcome_unknown: bool = False
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        # The whole message had been handed to the server when the connection failed or its
        # answer was lost: it may have been accepted; sending it again may duplicate it.
        self.outcome_unknown = outcome_unknown


class Mailer:
    """Where mail goes; :meth:`connect` opens a connection for one or more messages."""

    def connect(self) -> contextlib.AbstractContextManager[Connection]:
        raise NotImplementedError


class Connection:
    def send(self, message: EmailMessage) -> None:
        """Send ``message`` to its To, Cc and Bcc addresses, from its From address."""
        sender = email.utils.parseaddr(message["From"] or "")[1]
        fields = [message.get_all(name, []) for name in ("To", "Cc", "Bcc")]
        recipients = [address for _, address in email.utils.getaddresses(sum(fields, []))]
        if message["Bcc"] is not None:
            message = copy.copy(message)
            del message["Bcc"]
        self.send_bytes(sender, recipients, message.as_bytes(policy=email.policy.SMTP))

    def send_bytes(self, sender: str, recipients: list[str], data: bytes) -> None:
        """Send an already serialised message (CRLF line ends): the way to send many
        messages that share a large part without serialising that part for each one."""
        raise NotImplementedError


def mailer_for(app) -> Mailer:
    return mailer(app.config["SMTP_URL"])


def mailer(url: str) -> Mailer:
    parts = urlsplit(url)
    if parts.scheme == "file":
        return FolderMailer(Path(unquote(parts.path)))
    if parts.scheme in ("smtp", "smtps"):
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        starttls = query.get("starttls", "auto")
        if starttls not in STARTTLS_MODES:
            raise ValueError(f"SMTP_URL: starttls must be one of {', '.join(STARTTLS_MODES)}")
        return SMTPMailer(
            host=parts.hostname or "localhost",
            port=parts.port or (465 if parts.scheme == "smtps" else 587),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            implicit_tls=parts.scheme == "smtps",
            starttls=starttls,
            timeout=float(query.get("timeout", DEFAULT_TIMEOUT)),
            tls_context=ssl.create_default_context(cafile=query["cafile"])
            if "cafile" in query
            else None,
        )
    raise ValueError(f"SMTP_URL must start with file://, smtp:// or smtps://, got {parts.scheme}")


# .eml files ------------------------------------------------------------------------------


class FolderMailer(Mailer):
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        self.folder.mkdir(parents=True, exist_ok=True)
        yield _FolderConnection(self.folder)


class _FolderConnection(Connection):
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def send_bytes(self, sender: str, recipients: list[str], data: bytes) -> None:
        name = f"{uuid.uuid4().hex}.eml"
        partial = self.folder / f".{name}.partial"
        try:
            # Written aside and renamed: a reader of the folder never sees half a message.
            partial.write_bytes(data)
            os.replace(partial, self.folder / name)
        except OSError as error:
            partial.unlink(missing_ok=True)
            raise MailError(f"cannot write to the outbox {self.folder}: {error}") from error


# SMTP ------------------------------------------------------------------------------------


class SMTPMailer(Mailer):
    def __init__(
        self,
        host: str,
        port: int,
        username: str | None = None,
        password: str | None = None,
        *,
        implicit_tls: bool = False,
        starttls: str = "auto",
        timeout: float = DEFAULT_TIMEOUT,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.username, self.password = username, password
        self.implicit_tls, self.starttls, self.timeout = implicit_tls, starttls, timeout
        self.tls_context = tls_context or ssl.create_default_context()

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        client = self._open()
        try:
            yield _SMTPConnection(client)
        finally:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                client.quit()
            client.close()

    def _open(self) -> smtplib.SMTP:
        where = f"{self.host}:{self.port}"
        try:
            if self.implicit_tls:
                client = smtplib.SMTP_SSL(
                    self.host, self.port, timeout=self.timeout, context=self.tls_context
                )
            else:
                client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            try:
                client.ehlo()
                if not self.implicit_tls and self.starttls != "disable":
                    if client.has_extn("starttls"):
                        client.starttls(context=self.tls_context)
                        client.ehlo()
                    elif self.starttls == "require":
                        raise MailError(
                            f"the mail server {where} does not offer STARTTLS and SMTP_URL "
                            "requires it (starttls=require)",
                            permanent=True,
                        )
                if self.username:
                    client.login(self.username, self.password or "")
            except BaseException:
                client.close()
                raise
        except smtplib.SMTPAuthenticationError as error:
            raise MailError(f"the mail server {where} refused the login: {error}") from error
        except (smtplib.SMTPException, OSError) as error:
            raise MailError(f"cannot connect to the mail server {where}: {error}") from error
        return client


class _SMTPConnection(Connection):
    def __init__(self, client: smtplib.SMTP) -> None:
        self.client = client

    def send_bytes(self, sender: str, recipients: list[str], data: bytes) -> None:
        """One SMTP transaction. A failure before the message's final dot has been sent
        raises a :class:`MailError` the server cannot have acted on; once the whole body has
        been sent, a lost or late reply raises one with ``outcome_unknown`` (the server may
        have accepted it: sending it again may duplicate it), and the connection is closed,
        since a late reply would otherwise be read as the answer to the next command."""
        client = self.client
        body_sent = False
        try:
            client.ehlo_or_helo_if_needed()
            options = []
            if not all(address.isascii() for address in (sender, *recipients)):
                if not client.has_extn("smtputf8"):
                    # Nothing has been sent: smtplib would fail to encode the command.
                    raise MailError(
                        "an address is not ASCII and the mail server does not offer SMTPUTF8",
                        permanent=True,
                    )
                options.append("SMTPUTF8")
            if client.does_esmtp and client.has_extn("size"):
                options.append(f"size={len(data)}")
            code, reply = client.mail(sender, options)
            if code != 250:
                self._reset()
                raise _answered("the mail server refused the sender", code, reply)
            refused: dict[str, tuple[int, bytes]] = {}
            for recipient in recipients:
                code, reply = client.rcpt(recipient)
                if code not in (250, 251):
                    refused[recipient] = (code, reply)
            if len(refused) == len(recipients):
                self._reset()
                # 5xx: refused for good; 4xx (greylisting, a full mailbox): try again later.
                raise MailError(
                    f"recipient refused: {_describe(refused)}",
                    permanent=all(500 <= code < 600 for code, _ in refused.values()),
                )
            code, reply = client.docmd("data")
            if code != 354:
                self._reset()
                raise _answered("the mail server refused DATA", code, reply)
            body = re.sub(rb"(?m)^\.", b"..", data)
            if not body.endswith(b"\r\n"):
                body += b"\r\n"
            client.send(body + b".\r\n")
            body_sent = True
            code, reply = client.getreply()
            if code != 250:
                # A definite answer after the body: not accepted, so trying again is safe.
                raise _answered("the mail server answered", code, reply)
        except MailError:
            raise
        except (smtplib.SMTPException, OSError) as error:
            if body_sent:
                client.close()
                raise MailError(
                    "outcome unknown: the message was sent but the mail server's answer "
                    f"was lost ({type(error).__name__}: {error})",
                    permanent=True,
                    outcome_unknown=True,
                ) from error
            raise MailError(f"the connection to the mail server failed: {error}") from error
        if refused:
            raise MailError(f"recipient refused: {_describe(refused)}", permanent=True)

    def _reset(self) -> None:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            self.client.rset()


def _answered(what: str, code: int, reply: bytes) -> MailError:
    # 5xx: the server will not take this message; 4xx: try again later.
    text = reply.decode(errors="replace")
    return MailError(f"{what}: {code} {text}", permanent=500 <= code < 600)


def _describe(refused: dict[str, tuple[int, bytes]]) -> str:
    return ", ".join(
        f"{address} ({code} {reply.decode(errors='replace')})"
        for address, (code, reply) in refused.items()
    )
