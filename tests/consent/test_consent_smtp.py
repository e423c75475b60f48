"""The SMTP sender against a real local SMTP server (aiosmtpd): plain, STARTTLS + AUTH, and the
configuration / delivery errors an operator sees."""

from __future__ import annotations

import ipaddress
import socket
import ssl
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from repository.errors import ConfigError
from repository.models import Notification, User
from repository.services import notify

USER, PASSWORD = "mailer", "s3cret-pass"


class Inbox:
    """aiosmtpd handler: keeps every accepted message."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, N802
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


def _authenticator(server, session, envelope, mechanism, auth_data):  # noqa: ANN001
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == USER.encode()
        and auth_data.password == PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost (the test's own CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("smtp-tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(inbox: Inbox, **server_kwargs) -> Controller:  # noqa: ANN003
    controller = Controller(inbox, hostname="127.0.0.1", port=_free_port(), **server_kwargs)
    controller.start()
    return controller


@pytest.fixture
def plain_server():
    inbox = Inbox()
    controller = _start(inbox)
    yield controller, inbox
    controller.stop()


@pytest.fixture
def tls_server(tls_files):
    cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    inbox = Inbox()
    controller = _start(
        inbox,
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        authenticator=_authenticator,
    )
    yield controller, inbox
    controller.stop()


def _parsed(raw: bytes):
    return message_from_bytes(raw, policy=default_policy)


def test_plain_smtp_delivers_the_message(plain_server):
    controller, inbox = plain_server
    sender = notify.SmtpSender("127.0.0.1", controller.port, "vault@example.org")
    sender.send("researcher@example.org", "[MyoVault] Decision", "Your request was approved.\n")
    assert len(inbox.messages) == 1
    mail_from, rcpt, raw = inbox.messages[0]
    assert (mail_from, rcpt) == ("vault@example.org", ["researcher@example.org"])
    message = _parsed(raw)
    assert message["Subject"] == "[MyoVault] Decision"
    assert message.get_content().replace("\r\n", "\n") == "Your request was approved.\n"


def test_starttls_and_login_deliver(tls_server, tls_files):
    controller, inbox = tls_server
    sender = notify.SmtpSender(
        "127.0.0.1",
        controller.port,
        "vault@example.org",
        starttls=True,
        username=USER,
        password=PASSWORD,
        ca_file=str(tls_files[0]),
    )
    sender.send("dac@example.org", "Reminder", "Request #3 is overdue.")
    assert [m[1] for m in inbox.messages] == [["dac@example.org"]]
    assert _parsed(inbox.messages[0][2])["Subject"] == "Reminder"


def test_server_requiring_tls_refuses_a_clear_sender(tls_server):
    controller, inbox = tls_server
    sender = notify.SmtpSender("127.0.0.1", controller.port, "vault@example.org")
    with pytest.raises(notify.MailError, match=r"answered 530 .*STARTTLS"):
        sender.send("dac@example.org", "s", "b")
    assert inbox.messages == []


def test_wrong_password_gives_a_clear_message(tls_server, tls_files):
    controller, inbox = tls_server
    sender = notify.SmtpSender(
        "127.0.0.1",
        controller.port,
        "vault@example.org",
        starttls=True,
        username=USER,
        password="wrong",
        ca_file=str(tls_files[0]),
    )
    with pytest.raises(
        notify.MailError, match=r"refused the login of 'mailer' \(535 .*SMTP_PASSWORD"
    ):
        sender.send("dac@example.org", "s", "b")
    assert inbox.messages == []


def test_untrusted_certificate_is_refused(tls_server):
    controller, inbox = tls_server
    sender = notify.SmtpSender(
        "127.0.0.1",
        controller.port,
        "vault@example.org",
        starttls=True,
        username=USER,
        password=PASSWORD,
    )
    with pytest.raises(notify.MailError, match=r"TLS with the SMTP server .* SMTP_CA_FILE"):
        sender.send("dac@example.org", "s", "b")
    assert inbox.messages == []


def test_starttls_required_but_not_offered(plain_server):
    controller, inbox = plain_server
    sender = notify.SmtpSender("127.0.0.1", controller.port, "vault@example.org", starttls=True)
    with pytest.raises(notify.MailError, match="does not offer STARTTLS"):
        sender.send("dac@example.org", "s", "b")
    assert inbox.messages == []


def test_unreachable_server():
    sender = notify.SmtpSender("127.0.0.1", _free_port(), "vault@example.org", timeout_s=2)
    with pytest.raises(
        notify.MailError, match=r"cannot reach the SMTP server .*SMTP_HOST/SMTP_PORT"
    ):
        sender.send("dac@example.org", "s", "b")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"SMTP_HOST": None}, "SMTP_HOST is not set"),
        ({"SMTP_USERNAME": "u", "SMTP_PASSWORD": "p"}, "SMTP_STARTTLS is false"),
        ({"SMTP_STARTTLS": True, "SMTP_USERNAME": "u"}, "SMTP_PASSWORD is empty"),
        ({"SMTP_STARTTLS": True, "SMTP_PASSWORD": "p"}, "SMTP_USERNAME is empty"),
        ({"SMTP_PORT": 0}, "SMTP_PORT must be between"),
        ({"SMTP_PORT": "x"}, "must be numbers"),
        ({"MAIL_FROM": "nobody"}, "MAIL_FROM must be an e-mail address"),
        ({"SMTP_STARTTLS": True, "SMTP_CA_FILE": "/nonexistent/ca.pem"}, "does not exist"),
        ({"MAIL_SENDER": "pigeon"}, "unknown MAIL_SENDER"),
    ],
)
def test_configuration_errors_say_what_to_fix(settings, message):
    config = {"MAIL_SENDER": "smtp", "SMTP_HOST": "mail.example.org", **settings}
    with pytest.raises(ConfigError, match=message):
        notify.sender_from_config(config)


def _queue_message(app, email: str) -> int:
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        user = session.scalar(select(User).where(User.email == email))
        (row,) = notify.notify(
            session, [user], kind="test", subject="Hello", body="A message for you."
        )
        return row.id


def test_notifications_go_out_through_smtp_after_commit(app, world, plain_server):
    controller, inbox = plain_server
    app.config.update(MAIL_SENDER="smtp", SMTP_HOST="127.0.0.1", SMTP_PORT=controller.port)
    notify.set_sender(None)
    with app.app_context():
        row_id = _queue_message(app, world.emails["researcher"])
    assert [m[1] for m in inbox.messages] == [[world.emails["researcher"]]]
    with app.extensions["myovault"].db.transaction() as session:
        row = session.get(Notification, row_id)
        assert row.sent_at is not None and row.error == ""


def test_misconfigured_mail_is_recorded_and_never_blocks_the_change(app, world, plain_server):
    controller, inbox = plain_server
    app.config.update(
        MAIL_SENDER="smtp", SMTP_HOST="127.0.0.1", SMTP_PORT=controller.port, SMTP_USERNAME="u"
    )
    notify.set_sender(None)
    with app.app_context():
        row_id = _queue_message(app, world.emails["researcher"])
    assert inbox.messages == []
    with app.extensions["myovault"].db.transaction() as session:
        row = session.get(Notification, row_id)
        assert row is not None and row.sent_at is None
        assert "mail is misconfigured: SMTP_USERNAME is set but SMTP_STARTTLS is false" in row.error
