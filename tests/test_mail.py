"""The core's mailer: .eml files, SMTP (STARTTLS options, auth errors), refusals."""

from email.message import EmailMessage

import pytest

from core import mail


def message(to="someone@example.org"):
    built = EmailMessage()
    built["From"] = "Caredeck <caredeck@example.org>"
    built["To"] = to
    built["Subject"] = "Hello"
    built.set_content("Hello there.")
    return built


def test_urls_choose_the_mailer():
    folder = mail.mailer("file:///tmp/outbox")
    assert isinstance(folder, mail.FolderMailer) and str(folder.folder) == "/tmp/outbox"
    smtp = mail.mailer("smtp://user%40x:p%2Fss@mail.example.org:2525?starttls=require&timeout=5")
    assert (smtp.host, smtp.port, smtp.username, smtp.password) == (
        "mail.example.org",
        2525,
        "user@x",
        "p/ss",
    )
    assert (smtp.starttls, smtp.timeout, smtp.implicit_tls) == ("require", 5.0, False)
    default = mail.mailer("smtp://mail.example.org")
    assert (default.port, default.starttls, default.username) == (587, "auto", None)
    implicit = mail.mailer("smtps://mail.example.org")
    assert (implicit.port, implicit.implicit_tls) == (465, True)
    with pytest.raises(ValueError, match="starttls"):
        mail.mailer("smtp://mail.example.org?starttls=sometimes")
    with pytest.raises(ValueError):
        mail.mailer("http://mail.example.org")


def test_the_folder_mailer_writes_whole_eml_files(tmp_path):
    outbox = tmp_path / "outbox"
    with mail.mailer(f"file://{outbox}").connect() as connection:
        connection.send(message("a@example.org"))
        connection.send(message("b@example.org"))
    files = sorted(outbox.iterdir())
    assert len(files) == 2 and all(f.suffix == ".eml" for f in files)
    assert b"Subject: Hello" in files[0].read_bytes()


def test_smtp_sends_many_messages_over_one_connection(smtp_sink):
    with mail.mailer(smtp_sink.url).connect() as connection:
        for n in range(5):
            connection.send(message(f"r{n}@example.org"))
    received = smtp_sink.wait_for(5)
    assert [m["To"] for m in received] == [f"r{n}@example.org" for n in range(5)]
    assert len(smtp_sink.sessions) == 1  # one SMTP connection for the five


def test_smtp_refusals_are_permanent_and_try_later_is_not(smtp_sink):
    smtp_sink.refuse = {"nobody@example.org"}
    smtp_sink.fail_next = 1
    with mail.mailer(smtp_sink.url).connect() as connection:
        with pytest.raises(mail.MailError) as later:
            connection.send(message())
        assert not later.value.permanent and "451" in str(later.value)
        with pytest.raises(mail.MailError) as refused:
            connection.send(message("nobody@example.org"))
        assert refused.value.permanent
        connection.send(message())  # the connection still works
    assert len(smtp_sink.envelopes) == 1


def test_starttls_required_but_not_offered_is_refused(smtp_sink):
    url = f"smtp://{smtp_sink.host}:{smtp_sink.port}?starttls=require"
    with pytest.raises(mail.MailError, match="does not offer STARTTLS") as error:
        with mail.mailer(url).connect():
            pass
    assert error.value.permanent
    # auto: a server without STARTTLS (mailpit on 1025) is used as it is.
    with mail.mailer(f"smtp://{smtp_sink.host}:{smtp_sink.port}").connect() as connection:
        connection.send(message())
    assert len(smtp_sink.envelopes) == 1


def test_an_unreachable_server_is_a_temporary_failure():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nobody listens there
    with pytest.raises(mail.MailError, match="cannot connect") as error:
        with mail.mailer(f"smtp://127.0.0.1:{port}?timeout=2").connect():
            pass
    assert not error.value.permanent


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1: ``(cert.pem, key.pem)``."""
    import shutil
    import subprocess

    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make a test certificate"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return cert, key


def _tls_server(certificate, **options):
    import socket
    import ssl

    from aiosmtpd.controller import Controller

    from core.testing import SMTPSink

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    sink = SMTPSink()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        sink.port = probe.getsockname()[1]
    if options.pop("implicit", False):
        options["ssl_context"] = context
    else:
        options["tls_context"] = context
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port, **options)
    return sink, controller


def test_starttls_is_used_when_offered_and_the_certificate_checked(certificate):
    sink, controller = _tls_server(certificate, require_starttls=True)
    controller.start()
    try:
        base = f"smtp://127.0.0.1:{sink.port}"
        with mail.mailer(f"{base}?starttls=require&cafile={certificate[0]}").connect() as conn:
            conn.send(message())
        assert len(sink.envelopes) == 1
        # The system's authorities do not know this certificate: refused, not sent in clear.
        with pytest.raises(mail.MailError, match="CERTIFICATE_VERIFY_FAILED"):
            with mail.mailer(base).connect() as connection:
                connection.send(message())
        # starttls=disable against a server that requires it: it refuses the message.
        with pytest.raises(mail.MailError):
            with mail.mailer(f"{base}?starttls=disable").connect() as connection:
                connection.send(message())
        assert len(sink.envelopes) == 1
    finally:
        controller.stop()


def test_smtps_is_implicit_tls(certificate):
    sink, controller = _tls_server(certificate, implicit=True)
    controller.start()
    try:
        url = f"smtps://127.0.0.1:{sink.port}?cafile={certificate[0]}"
        with mail.mailer(url).connect() as connection:
            connection.send(message())
        assert len(sink.envelopes) == 1
    finally:
        controller.stop()


def test_a_recipient_answered_4xx_is_temporary_and_5xx_permanent(smtp_sink):
    async def rcpt(server, session, envelope, address, rcpt_options):
        if address.startswith("grey"):
            return "451 4.7.1 Greylisted, try again later"
        if address.startswith("nobody"):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    smtp_sink.handle_RCPT = rcpt
    with mail.mailer(smtp_sink.url).connect() as connection:
        with pytest.raises(mail.MailError) as grey:
            connection.send(message("grey@example.org"))
        assert not grey.value.permanent and "451" in str(grey.value)
        with pytest.raises(mail.MailError) as refused:
            connection.send(message("nobody@example.org"))
        assert refused.value.permanent and "550" in str(refused.value)
        connection.send(message())  # the connection still works
    assert len(smtp_sink.envelopes) == 1


def test_a_non_ascii_address_uses_smtputf8_or_is_refused_before_anything_is_sent(smtp_sink):
    with mail.mailer(smtp_sink.url).connect() as connection:
        assert connection.client.has_extn("smtputf8")  # the sink offers it
        connection.send_bytes("caredeck@example.org", ["j\u00fcrgen@example.de"], b"x\r\n")
        connection.client.esmtp_features.pop("smtputf8")  # a server that does not
        with pytest.raises(mail.MailError) as error:
            connection.send_bytes("caredeck@example.org", ["j\u00fcrgen@example.de"], b"x\r\n")
        assert error.value.permanent and not error.value.outcome_unknown
        connection.send(message())  # the connection still works
    assert [e.rcpt_tos for e in smtp_sink.envelopes] == [
        ["j\u00fcrgen@example.de"],
        ["someone@example.org"],
    ]


def test_a_reply_lost_after_the_body_is_an_unknown_outcome(smtp_sink):
    import asyncio

    accept = type(smtp_sink).handle_DATA

    async def late(server, session, envelope):
        answer = await accept(smtp_sink, server, session, envelope)  # stored: accepted
        await asyncio.sleep(2)  # the answer comes after the client's timeout
        return answer

    smtp_sink.handle_DATA = late
    with mail.mailer(smtp_sink.url + "&timeout=1").connect() as connection:
        with pytest.raises(mail.MailError) as error:
            connection.send(message())
    assert error.value.outcome_unknown and error.value.permanent
    assert len(smtp_sink.envelopes) == 1


def test_a_failure_before_the_body_is_not_an_unknown_outcome(smtp_sink):
    with mail.mailer(smtp_sink.url).connect() as connection:
        connection.client.close()  # the connection is gone before MAIL FROM
        with pytest.raises(mail.MailError) as error:
            connection.send(message())
    assert not error.value.permanent and not error.value.outcome_unknown
