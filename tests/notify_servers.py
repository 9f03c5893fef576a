"""Real servers for the notification tests, on free loopback ports.

- :class:`SmtpServer`: aiosmtpd with STARTTLS (a self-signed certificate made here with
  ``cryptography``) required before AUTH, AUTH required before mail; it keeps every
  message it accepted, with whether the session was encrypted and who logged in.
  :meth:`SmtpServer.start` and :meth:`SmtpServer.stop` can be called again: the port
  stays the same, so a client sees the server go down and come back.
- :class:`WebhookServer`: ``http.server`` in a thread that answers each POST with the
  next status of its script (then 200) and keeps the requests.
"""

from __future__ import annotations

import datetime as dt
import email
import email.message
import email.policy
import ipaddress
import socket
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "linetap test smtp")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "smtp.crt", directory / "smtp.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@dataclass(frozen=True)
class Received:
    message: email.message.EmailMessage
    mail_from: str
    rcpt_tos: tuple[str, ...]
    encrypted: bool
    user: str | None

    @property
    def text(self) -> str:
        body = self.message.get_body(("plain",))
        assert body is not None
        # SMTP carries CRLF line ends
        return str(body.get_content()).replace("\r\n", "\n")


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_DATA(self, _smtp: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, email.message.EmailMessage)
        auth = session.auth_data
        user = auth.login.decode() if isinstance(auth, LoginPassword) else None
        with self.server.lock:
            self.server.received.append(
                Received(message, str(envelope.mail_from), tuple(envelope.rcpt_tos),
                         session.ssl is not None, user)
            )  # fmt: skip
        return "250 OK"


class SmtpServer:
    """aiosmtpd on ``port`` with STARTTLS and AUTH (``user`` / ``password``)."""

    def __init__(self, cert: Path, key: Path, user: str, password: str) -> None:
        self.port = free_port()
        self.user, self.password = user, password
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.load_cert_chain(cert, key)
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self._controller: Controller | None = None

    def _authenticate(
        self, _server: SMTP, _session: Session, _envelope: Envelope, _mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            self.user.encode(),
            self.password.encode(),
        )
        # handled=False: aiosmtpd answers a refusal itself (535)
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

    def start(self) -> None:
        assert self._controller is None
        self._controller = Controller(
            _Handler(self),
            hostname=HOST,
            port=self.port,
            tls_context=self.tls,
            require_starttls=True,
            authenticator=self._authenticate,
            auth_required=True,
        )
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller.loop.close()
            self._controller = None

    def messages(self) -> list[Received]:
        with self.lock:
            return list(self.received)


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: bytes


class WebhookServer:
    """Answers each POST with the next status of ``script`` (200 once it is used up)."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.script: list[int] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with owner.lock:
                    owner.requests.append(Request(self.path, dict(self.headers.items()), body))
                    status = owner.script.pop(0) if owner.script else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test reads the requests, not the log

        self.httpd = ThreadingHTTPServer((HOST, 0), Handler)
        self.httpd.daemon_threads = False
        self.url = f"http://{HOST}:{self.httpd.server_address[1]}/hooks/T0KEN-in-path"
        # shutdown() waits for serve_forever's next poll (0.5 s by default): close at once.
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="webhook-server"
        )
        self._thread.start()

    def answer(self, *statuses: int) -> None:
        with self.lock:
            self.script.extend(statuses)

    def received(self) -> list[Request]:
        with self.lock:
            return list(self.requests)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join()
