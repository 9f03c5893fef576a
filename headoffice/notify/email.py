"""The e-mail channel: one plain-text message per batch over SMTP, STARTTLS and AUTH.

The server's certificate is checked (``ssl.create_default_context``, plus ``ca_file``
for a private CA); a username is never sent without TLS (the config refuses it). Every
SMTP step has the configured timeout, so a silent server costs at most that per step.
Each failure becomes a one-line :class:`DeliveryError` naming the server and the reason.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections import Counter
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from headoffice.notify.model import (
    Batch,
    Channel,
    DeliveryError,
    EmailConfig,
    Kind,
    Notification,
    Severity,
    clean_text,
)

log = logging.getLogger(__name__)

MAX_SUBJECT = 180
SUBJECT_ITEMS = 3
_ORDER = {Kind.ALARM_RAISED: 0, Kind.ALARM_ACKNOWLEDGED: 1, Kind.ALARM_CLEARED: 2}
_RANK = {Severity.CRITICAL: 0, Severity.WARNING: 1, Severity.INFO: 2}
_LABEL = {
    Kind.ALARM_RAISED: "RAISED",
    Kind.ALARM_ACKNOWLEDGED: "ACKNOWLEDGED",
    Kind.ALARM_CLEARED: "CLEARED",
    Kind.DIGEST: "DIGEST",
    Kind.TEST: "TEST",
}
_DIGEST_SECTIONS = {"open": "Open alarms", "raised": "Raised", "cleared": "Cleared"}


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _utc_text(when: datetime) -> str:
    return f"{when:%Y-%m-%d %H:%M:%S} UTC"


def ordered(notifications: tuple[Notification, ...]) -> list[Notification]:
    """Raised first, then acknowledged, then cleared; the gravest first in each, then by
    time and place: the subject names what matters most."""
    return sorted(
        notifications,
        key=lambda n: (_ORDER.get(n.kind, 3), _RANK[n.severity], n.raised_at, n.where),
    )


def subject(prefix: str, notifications: tuple[Notification, ...]) -> str:
    """``[linetap] 4 alarms: shop-12 offline, shop-3 disk, shop-7 hum, ...`` (clears and
    acknowledgements counted after the alarms); a digest or a test its own summary."""
    if len(notifications) == 1 and notifications[0].kind in (Kind.DIGEST, Kind.TEST):
        text = notifications[0].summary
    else:
        counts = Counter(n.kind for n in notifications)
        parts = [
            _plural(counts[Kind.ALARM_RAISED], "alarm") if counts[Kind.ALARM_RAISED] else "",
            f"{counts[Kind.ALARM_ACKNOWLEDGED]} acknowledged"
            if counts[Kind.ALARM_ACKNOWLEDGED]
            else "",
            f"{counts[Kind.ALARM_CLEARED]} cleared" if counts[Kind.ALARM_CLEARED] else "",
        ]
        items = [f"{n.where} {n.alarm}" for n in ordered(notifications)]
        # ASCII "...": a non-ASCII subject is folded into an encoded word that Python's
        # email package writes with a stray space before it.
        named = ", ".join(items[:SUBJECT_ITEMS]) + (", ..." if len(items) > SUBJECT_ITEMS else "")
        text = f"{', '.join(p for p in parts if p)}: {named}"
    return clean_text(f"{prefix} {text}".strip(), MAX_SUBJECT)


def _alarm_lines(n: Notification) -> list[str]:
    lines = [
        f"{_LABEL[n.kind]:<12} {n.severity.value:<8} {n.where}  {n.alarm}",
        f"    {_utc_text(n.raised_at)}: {n.summary}",
    ]
    lines += [f"    {key}: {value}" for key, value in n.details.items()]
    return [*lines, ""]


def _digest_lines(n: Notification) -> list[str]:
    lines = [n.summary, ""]
    sections: dict[str, list[str]] = {}
    for key, value in n.details.items():
        sections.setdefault(key.split(" ", 1)[0], []).append(value)
    for name, title in _DIGEST_SECTIONS.items():
        entries = sections.pop(name, [])
        lines += [f"{title} ({len(entries)}):", *(f"  {e}" for e in entries or ["none"]), ""]
    for name, entries in sections.items():  # e.g. "more": what did not fit
        lines += [f"{name}: {e}" for e in entries]
    return lines


def body(office: str, batch: Batch) -> str:
    """The message's text: what happened, one block per notification, and where the
    office keeps the rest."""
    notes = ordered(batch.notifications)
    if len(notes) == 1 and notes[0].kind is Kind.DIGEST:
        lines = [f"{office}: daily digest", "", *_digest_lines(notes[0])]
    elif len(notes) == 1 and notes[0].kind is Kind.TEST:
        lines = [f"{office}: {notes[0].summary}", "", "Nothing is wrong; no action needed.", ""]
    else:
        counts = Counter(n.kind for n in notes)
        what = ", ".join(
            f"{count} {label.lower()}" for kind, label in _LABEL.items() if (count := counts[kind])
        )
        lines = [f"{office}: {what}.", ""]
        for n in notes:
            lines += _alarm_lines(n)
    lines += [
        "--",
        f"Sent {_utc_text(batch.sent_at)} by linetap-office (batch {batch.id}).",
        "Undelivered notifications wait in the office's outbox: linetap-office notify status",
    ]
    return "\n".join(lines) + "\n"


def build_message(cfg: EmailConfig, batch: Batch, office: str) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = subject(cfg.subject_prefix, batch.notifications)
    msg["From"] = cfg.sender
    msg["To"] = ", ".join(cfg.to)
    msg["Date"] = format_datetime(batch.sent_at)
    msg["Message-ID"] = make_msgid(idstring=batch.id, domain=cfg.sender.rpartition("@")[2])
    # RFC 3834: vacation responders and ticket systems must not answer an alarm.
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Linetap-Batch"] = batch.id
    msg.set_content(body(office, batch))
    return msg


def _server_text(detail: bytes | str) -> str:
    text = detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)
    return clean_text(text, 200)


class EmailSender:
    """Sends a batch as one message (see the module docstring)."""

    channel = Channel.EMAIL

    def __init__(self, cfg: EmailConfig, office: str = "linetap head office") -> None:
        self.cfg = cfg
        self.office = office
        self.server = f"{cfg.host}:{cfg.port}"

    def _password(self) -> str | None:
        if self.cfg.password is not None:
            return self.cfg.password.get_secret_value()
        if self.cfg.password_file is None:
            return None
        try:
            # Read at each send: a rotated password needs no restart.
            return self.cfg.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise DeliveryError(
                f"password_file {self.cfg.password_file}: cannot read ({exc.strerror or exc})"
            ) from None

    def _tls(self) -> ssl.SSLContext:
        ca = None if self.cfg.ca_file is None else str(self.cfg.ca_file)
        try:
            return ssl.create_default_context(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise DeliveryError(f"ca_file {ca}: cannot load ({exc})") from None

    def send(self, batch: Batch) -> str:
        """Deliver ``batch``; its Message-ID. Raises :class:`DeliveryError`."""
        msg = build_message(self.cfg, batch, self.office)
        password = self._password()
        context = self._tls() if self.cfg.starttls else None
        try:
            refused = self._submit(msg, password, context)
        except DeliveryError:
            raise
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(
                f"{self.server}: login as {self.cfg.username} refused "
                f"({exc.smtp_code} {_server_text(exc.smtp_error)}); check username and password"
            ) from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise DeliveryError(
                f"{self.server}: every recipient refused ({', '.join(exc.recipients)})"
            ) from None
        except smtplib.SMTPResponseException as exc:
            raise DeliveryError(
                f"{self.server}: {exc.smtp_code} {_server_text(exc.smtp_error)}"
            ) from None
        except smtplib.SMTPException as exc:
            raise DeliveryError(f"{self.server}: {_server_text(str(exc))}") from None
        except ssl.SSLCertVerificationError as exc:
            raise DeliveryError(
                f"{self.server}: its TLS certificate is not trusted ({exc.verify_message}); "
                "set ca_file for a private CA"
            ) from None
        except ssl.SSLError as exc:
            raise DeliveryError(f"{self.server}: TLS failed ({exc.reason or exc})") from None
        except TimeoutError:
            raise DeliveryError(
                f"{self.server}: no answer within {self.cfg.timeout_s:g} s"
            ) from None
        except OSError as exc:
            raise DeliveryError(
                f"{self.server}: cannot connect ({exc.strerror or type(exc).__name__})"
            ) from None
        if refused:
            # Accepted for the others: sending again would duplicate their copy.
            log.warning(
                "notify email: %s refused %s; delivered to the other recipients",
                self.server,
                ", ".join(sorted(refused)),
            )
        return str(msg["Message-ID"])

    def _submit(
        self, msg: EmailMessage, password: str | None, context: ssl.SSLContext | None
    ) -> dict[str, tuple[int, bytes]]:
        with smtplib.SMTP(self.cfg.host, self.cfg.port, timeout=self.cfg.timeout_s) as smtp:
            smtp.ehlo()
            if context is not None:
                if not smtp.has_extn("starttls"):
                    raise DeliveryError(
                        f"{self.server} offers no STARTTLS; use a server that does "
                        "(starttls = false only for a relay on this machine)"
                    )
                smtp.starttls(context=context)
                smtp.ehlo()
            if self.cfg.username is not None and password is not None:
                smtp.login(self.cfg.username, password)
            return smtp.send_message(msg)
