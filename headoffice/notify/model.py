"""What a notification is, and the ``[notify]`` section of office.toml.

A :class:`Notification` is what the alarm side hands over: one event (an alarm raised,
acknowledged or cleared; the daily digest; a test), with the times needed to measure
delivery latency (``raised_at`` here, ``sent_at`` on each delivery in the outbox).

Its texts end up in e-mail headers, bodies and JSON. They are cleaned, not refused: an
alarm must never be lost because a device id or a summary held a control character, so
such characters are escaped (``\\x1b``), whitespace is collapsed to one line and an
over-long text is cut with "…". A wrong kind, severity or a naive time is a programming
error of the caller and raises :class:`ValueError`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from headoffice.printing import terminal_safe
from sealedrec.errors import LinetapError

MAX_SUMMARY = 200
MAX_FIELD = 100
MAX_DETAIL_KEY = 64
MAX_DETAIL_VALUE = 1000
MAX_DETAILS = 200  # the digest lists its alarms as details
ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")


class Kind(StrEnum):
    ALARM_RAISED = "alarm_raised"
    ALARM_ACKNOWLEDGED = "alarm_acknowledged"
    ALARM_CLEARED = "alarm_cleared"
    DIGEST = "digest"
    TEST = "test"


#: Kinds sent on their own, at once: never batched with alarms nor held by the rate
#: limit (the digest comes once a day; a test is an administrator's explicit request).
SOLO_KINDS = frozenset({Kind.DIGEST, Kind.TEST})


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class Channel(StrEnum):
    EMAIL = "email"
    WEBHOOK = "webhook"


def clean_text(value: str, limit: int) -> str:
    """``value`` on one line for a header, a body or a terminal: control and bidi
    characters escaped, whitespace runs collapsed, at most ``limit`` characters."""
    text = terminal_safe(" ".join(str(value).split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def new_id() -> str:
    return uuid.uuid4().hex


def _utc(when: datetime, what: str) -> datetime:
    if not isinstance(when, datetime) or when.tzinfo is None:
        raise ValueError(f"{what} must be a timezone-aware datetime (UTC)")
    return when.astimezone(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class Notification:
    """One event to deliver. ``id`` is the outbox's key: enqueueing the same id twice
    delivers it once (a caller that retries its transaction cannot double-send)."""

    kind: Kind
    device_id: str
    alarm: str  # the alarm's kind, e.g. "offline", "disk", "hum"
    severity: Severity
    summary: str  # one line, e.g. "shop-12 offline since 09:55 UTC"
    raised_at: datetime  # when the alarm side raised (or cleared) it, aware
    line: str | None = None
    details: Mapping[str, str] = field(default_factory=dict)
    id: str = field(default_factory=new_id)

    def __post_init__(self) -> None:
        if not ID_PATTERN.match(self.id):
            raise ValueError(f"notification id {self.id!r}: 1-100 of A-Z a-z 0-9 . _ : -")
        if len(self.details) > MAX_DETAILS:
            raise ValueError(f"a notification carries at most {MAX_DETAILS} details")
        details = {
            clean_text(k, MAX_DETAIL_KEY): clean_text(v, MAX_DETAIL_VALUE)
            for k, v in self.details.items()
        }
        values: dict[str, Any] = {
            "kind": Kind(self.kind),
            "severity": Severity(self.severity),
            "device_id": clean_text(self.device_id, MAX_FIELD) or "-",
            "alarm": clean_text(self.alarm, MAX_FIELD) or "-",
            "summary": clean_text(self.summary, MAX_SUMMARY) or "-",
            "line": None if self.line is None else clean_text(self.line, MAX_FIELD),
            "raised_at": _utc(self.raised_at, "raised_at"),
            "details": MappingProxyType(details),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @property
    def where(self) -> str:
        """``device/line``, or the device alone."""
        return f"{self.device_id}/{self.line}" if self.line else self.device_id

    def to_json(self) -> dict[str, Any]:
        """The notification as the outbox stores it and the webhook sends it."""
        return {
            "id": self.id,
            "kind": self.kind.value,
            "device_id": self.device_id,
            "line": self.line,
            "alarm": self.alarm,
            "severity": self.severity.value,
            "summary": self.summary,
            "details": dict(self.details),
            "raised_at": iso(self.raised_at),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Notification:
        return cls(
            id=str(data["id"]),
            kind=Kind(data["kind"]),
            device_id=str(data["device_id"]),
            line=None if data.get("line") is None else str(data["line"]),
            alarm=str(data["alarm"]),
            severity=Severity(data["severity"]),
            summary=str(data["summary"]),
            details={str(k): str(v) for k, v in dict(data.get("details") or {}).items()},
            raised_at=datetime.fromisoformat(str(data["raised_at"])),
        )


@dataclass(frozen=True, slots=True)
class Batch:
    """What one message carries. ``id`` names this attempt (in the e-mail's Message-ID,
    the webhook's ``X-Linetap-Batch``); a retry is a new batch, which may fold in more
    notifications, so a receiver drops duplicates by notification id."""

    id: str
    notifications: tuple[Notification, ...]
    sent_at: datetime


class DeliveryError(LinetapError, OSError):
    """A message was not delivered. The text is one line for the log and ``notify
    status``: the channel's server and the reason, never a password, secret or URL path."""


def iso(when: datetime) -> str:
    """The office's time format (the index's): ``2026-11-25T10:00:00.000+00:00``."""
    return _utc(when, "time").isoformat(timespec="milliseconds")


# --------------------------------------------------------------------------- config


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


def _absolute(path: Path | None, what: str) -> None:
    if path is not None and not path.is_absolute():
        raise ValueError(f"{what}: give an absolute path (it is read by the office service)")


def _address(value: str, what: str) -> None:
    local, at, domain = value.rpartition("@")
    if not at or not local or "." not in domain or any(c.isspace() or c in "<>," for c in value):
        raise ValueError(f"{what} {value!r} is not an e-mail address like alarms@example.net")


class EmailConfig(_Model):
    """``[notify.email]``: SMTP submission with STARTTLS and authentication."""

    host: str = Field(min_length=1, description="SMTP server, e.g. smtp.example.net")
    port: int = Field(587, ge=1, le=65535, description="SMTP port (587 = submission)")
    starttls: bool = Field(True, description="upgrade to TLS with STARTTLS (certificate checked)")
    ca_file: Path | None = Field(
        None, description="CA certificate(s) to check the server with (a private CA)"
    )
    username: str | None = Field(None, min_length=1, description="SMTP AUTH user")
    password: SecretStr | None = Field(None, description="SMTP AUTH password")
    password_file: Path | None = Field(
        None, description="file holding the password, mode 0600 (instead of password)"
    )
    sender: str = Field(alias="from", description="From address, e.g. linetap@example.net")
    to: tuple[str, ...] = Field(min_length=1, description="recipients")
    subject_prefix: str = Field("[linetap]", max_length=40, description="subject prefix")
    timeout_s: float = Field(30.0, gt=0, le=300, description="each SMTP step's timeout")

    @model_validator(mode="after")
    def _check(self) -> EmailConfig:
        _absolute(self.ca_file, "ca_file")
        _absolute(self.password_file, "password_file")
        _address(self.sender, "from")
        for rcpt in self.to:
            _address(rcpt, "to")
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        has_password = self.password is not None or self.password_file is not None
        if has_password != (self.username is not None):
            raise ValueError("set username together with password or password_file")
        if self.username is not None and not self.starttls:
            raise ValueError(
                "username without starttls would send the password in clear: set starttls = true"
            )
        return self


class WebhookConfig(_Model):
    """``[notify.webhook]``: a JSON POST signed with HMAC-SHA256 (see INSTALL.md)."""

    url: str = Field(min_length=8, description="https://… endpoint that answers 2xx")
    secret: SecretStr | None = Field(None, description="shared secret of the signature")
    secret_file: Path | None = Field(None, description="file holding the secret, mode 0600")
    timeout_s: float = Field(10.0, gt=0, le=120, description="connect and answer timeout")
    ca_file: Path | None = Field(None, description="CA certificate(s) for an https URL")

    @model_validator(mode="after")
    def _check(self) -> WebhookConfig:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url {self.url[:60]!r}: use https://host/path")
        _absolute(self.secret_file, "secret_file")
        _absolute(self.ca_file, "ca_file")
        if (self.secret is None) == (self.secret_file is None):
            raise ValueError("set exactly one of secret or secret_file")
        if self.secret is not None and len(self.secret.get_secret_value()) < 16:
            raise ValueError("secret: at least 16 characters (e.g. openssl rand -hex 32)")
        return self


class RetryConfig(_Model):
    """Back-off of a channel whose delivery failed: ``initial_s``, doubled per failure
    in a row up to ``max_s``, each wait moved by up to ±``jitter`` of itself."""

    initial_s: float = Field(30.0, ge=1, le=3600, description="first wait after a failure")
    max_s: float = Field(3600.0, ge=1, le=86400, description="longest wait (1 h)")
    jitter: float = Field(0.2, ge=0, le=0.5, description="random share of each wait (±)")

    @model_validator(mode="after")
    def _check(self) -> RetryConfig:
        if self.max_s < self.initial_s:
            raise ValueError("max_s must be at least initial_s")
        return self


class NotifyConfig(_Model):
    """``[notify]``: where alarms go. Nothing is sent without ``[notify.email]`` or
    ``[notify.webhook]``."""

    email: EmailConfig | None = Field(None, description="[notify.email]: SMTP")
    webhook: WebhookConfig | None = Field(None, description="[notify.webhook]: signed JSON POST")
    batch_s: int = Field(
        60, ge=0, le=86400, description="collect notifications this long, then send one message"
    )
    max_per_hour: int = Field(
        20,
        ge=1,
        le=3600,
        description="messages per channel per hour; beyond it notifications wait and are "
        "folded into the next message (never dropped)",
    )
    digest: Literal["off", "daily"] = Field("off", description='"daily": a summary mail a day')
    digest_at: str = Field(
        "07:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="the digest's time, HH:MM UTC"
    )
    retry: RetryConfig = Field(default_factory=RetryConfig, description="[notify.retry]")

    @model_validator(mode="after")
    def _check(self) -> NotifyConfig:
        if self.digest == "daily" and self.email is None:
            raise ValueError('digest = "daily" is a mail: it needs [notify.email]')
        return self

    @property
    def channels(self) -> tuple[Channel, ...]:
        """The configured channels, in a fixed order."""
        configured = {Channel.EMAIL: self.email, Channel.WEBHOOK: self.webhook}
        return tuple(c for c, section in configured.items() if section is not None)
