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
