"""Office notifications (issue 18): e-mail to a real aiosmtpd server (STARTTLS, AUTH),
the signed webhook to a real HTTP server, retries with back-off, batching, the rate
limit and the daily digest, with the outbox on SQLite and PostgreSQL.

Time is an injected clock: each run of the dispatcher is told the time, so back-off and
batch windows are checked to the second without waiting for them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest

from headoffice.index import Index, open_index
from headoffice.notify.dispatcher import LEASE, Dispatcher, build_senders
from headoffice.notify.model import Channel, Kind, Notification, NotifyConfig, Severity
from headoffice.notify.outbox import Outbox
from tests.notify_servers import SmtpServer, WebhookServer, self_signed
from tests.test_office_index import index_url, pg_dsn  # noqa: F401 - fixtures

USER, PASSWORD = "alarms", "s3cret-pass"
SECRET = "whsec-0123456789abcdef"
T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


class Clock:
    def __init__(self, at: datetime = T0) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> datetime:
        self.at += timedelta(**delta)
        return self.at


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("smtp-cert"))


@pytest.fixture
def smtp(cert: tuple[Path, Path]) -> Iterator[SmtpServer]:
    """Not started: each test starts it (or leaves it down)."""
    server = SmtpServer(*cert, USER, PASSWORD)
    yield server
    server.stop()


@pytest.fixture
def webhook() -> Iterator[WebhookServer]:
    server = WebhookServer()
    yield server
    server.close()


@pytest.fixture
def index(index_url: str) -> Iterator[Index]:  # noqa: F811 - the imported fixture
    idx = open_index(index_url)
    yield idx
    idx.close()


def email_section(smtp: SmtpServer, cert: Path, password: str = PASSWORD) -> dict[str, Any]:
    return {
        "host": "127.0.0.1", "port": smtp.port, "ca_file": str(cert), "username": USER,
        "password": password, "from": "linetap@office.example", "to": ["ops@example.net"],
        "timeout_s": 5,
    }  # fmt: skip


def config(**sections: Any) -> NotifyConfig:
    """``[notify]`` with no jitter (exact back-off times) unless a test says otherwise."""
    return NotifyConfig.model_validate({"retry": {"jitter": 0}, **sections})


def alarm(
    device: str,
    at: datetime,
    name: str = "offline",
    *,
    kind: Kind = Kind.ALARM_RAISED,
    severity: Severity = Severity.CRITICAL,
    line: str | None = None,
    **details: str,
) -> Notification:
    return Notification(
        kind=kind, device_id=device, line=line, alarm=name, severity=severity,
        summary=f"{device} {name}", raised_at=at, details=details,
    )  # fmt: skip


def deliveries(index: Index) -> list[tuple[Any, ...]]:
    with index.transaction(False) as q:
        return q(
            "SELECT notification_id, channel, state, attempts, next_attempt_at, last_error, "
            "sent_at FROM deliveries ORDER BY notification_id, channel",
            (),
        )


def at(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds")


# --------------------------------------------------------------------------- e-mail


def test_a_mail_arrives_over_starttls_with_auth_after_the_batch_window(
    index: Index, smtp: SmtpServer, cert: tuple[Path, Path]
):
    smtp.start()
    clock = Clock()
    cfg = config(email=email_section(smtp, cert[0]), batch_s=60)
    d = Dispatcher(index, cfg, build_senders(cfg, "ACME office"), clock)
    note = alarm("shop-12", T0 - timedelta(seconds=30), line="line1", last_seen="09:55 UTC")
    assert d.outbox.enqueue(note)
    assert d.run_once(clock.advance(seconds=59)) == []  # still collecting
    [outcome] = d.run_once(clock.advance(seconds=1))
    assert outcome.sent and outcome.ids == (note.id,)
    [mail] = smtp.messages()
    assert (mail.encrypted, mail.user) == (True, USER)  # STARTTLS, then AUTH
    assert (mail.mail_from, mail.rcpt_tos) == ("linetap@office.example", ("ops@example.net",))
    assert mail.message["Subject"] == "[linetap] 1 alarm: shop-12/line1 offline"
    assert mail.message["Message-ID"] == outcome.message_id
    assert mail.message["Message-ID"].endswith("@office.example>")
    assert parsedate_to_datetime(mail.message["Date"]) == T0 + timedelta(seconds=60)
    assert mail.message["Auto-Submitted"] == "auto-generated"
    text = mail.text
    assert text.startswith("ACME office: 1 raised.\n")
    assert "critical shop-12/line1  offline" in text
    assert "2026-11-25 09:59:30 UTC: shop-12 offline" in text and "last_seen: 09:55 UTC" in text
    # Delivered once, with its times for the latency figure.
    [row] = deliveries(index)
    assert row == (note.id, "email", "sent", 1, None, None, at(T0 + timedelta(seconds=60)))
    [timing] = d.outbox.delivery_times(T0)
    assert timing.latency_s == 90.0
    assert d.run_once(clock.advance(hours=1)) == [] and len(smtp.messages()) == 1


def test_a_wrong_password_fails_clearly_and_is_retried_after_the_back_off(
    index: Index, smtp: SmtpServer, cert: tuple[Path, Path]
):
    smtp.start()
    clock = Clock()
    wrong = config(email=email_section(smtp, cert[0], password="not-it"), batch_s=0)
    d = Dispatcher(index, wrong, build_senders(wrong, "office"), clock)
    note = alarm("shop-3", T0)
    d.outbox.enqueue(note)
    [failed] = d.run_once(T0)
    assert failed.error is not None
    assert re.fullmatch(
        rf"127\.0\.0\.1:{smtp.port}: login as alarms refused \(535 .+\); check username "
        "and password",
        failed.error,
    ), failed.error
    assert PASSWORD not in failed.error and "not-it" not in failed.error
    [row] = deliveries(index)
    assert row == (note.id, "email", "failed", 1, at(T0 + timedelta(seconds=30)), failed.error,
                   None)  # fmt: skip
    assert smtp.messages() == []
    # The password is fixed (a new config, as after editing office.toml): retried when due.
    right = config(email=email_section(smtp, cert[0]), batch_s=0)
    d = Dispatcher(index, right, build_senders(right, "office"), clock)
    assert d.run_once(clock.advance(seconds=29)) == []
    [sent] = d.run_once(clock.advance(seconds=1))
    assert sent.sent and len(smtp.messages()) == 1
    assert deliveries(index)[0][2:4] == ("sent", 2)


def test_while_the_server_is_down_deliveries_wait_with_growing_back_off_and_go_once(
    index_url: str,  # noqa: F811 - the imported fixture
    smtp: SmtpServer,
    cert: tuple[Path, Path],
):
    clock = Clock()
    cfg = config(email=email_section(smtp, cert[0]), batch_s=10)
    index = open_index(index_url)
    d = Dispatcher(index, cfg, build_senders(cfg, "office"), clock)
    first = [alarm("shop-1", T0), alarm("shop-2", T0)]
    for note in first:
        d.outbox.enqueue(note)
    waits = []
    clock.advance(seconds=10)
    for _ in range(3):
        [outcome] = d.run_once(clock())
        assert outcome.error == f"127.0.0.1:{smtp.port}: cannot connect (Connection refused)"
        assert outcome.retry_at is not None
        waits.append((outcome.retry_at - clock()).total_seconds())
        assert d.run_once(clock.at + timedelta(seconds=waits[-1] - 1)) == []  # not before
        clock.at = retry_at = outcome.retry_at
        if len(waits) == 1:  # an alarm raised meanwhile waits for the retry, not its window
            late = alarm("shop-9", clock.advance(seconds=-20))
            d.outbox.enqueue(late)
            assert d.run_once(clock.advance(seconds=19)) == []
            clock.advance(seconds=1)
    assert waits == [30.0, 60.0, 120.0]
    assert {r[2:4] for r in deliveries(index)} == {("failed", 3), ("failed", 2)}
    index.close()
    # The office restarts and the server comes back: nothing was lost, one message goes.
    smtp.start()
    index = open_index(index_url)
    try:
        d = Dispatcher(index, cfg, build_senders(cfg, "office"), clock)
        assert d.run_once(clock() - timedelta(seconds=1)) == []
        [outcome] = d.run_once(clock())
        assert outcome.sent and set(outcome.ids) == {n.id for n in [*first, late]}
        assert d.run_once(clock.advance(hours=2)) == []
        [mail] = smtp.messages()
        assert mail.message["Subject"] == (
            "[linetap] 3 alarms: shop-1 offline, shop-2 offline, shop-9 offline"
        )
        assert {r[2] for r in deliveries(index)} == {"sent"}
        [status] = d.outbox.status(clock())
        assert (status.pending, status.failed, status.sent_24h) == (0, 0, 3)
        assert status.last_error == f"127.0.0.1:{smtp.port}: cannot connect (Connection refused)"
        assert status.last_sent_at == retry_at
    finally:
        index.close()


def test_twenty_alarms_within_the_window_make_one_mail_listing_all(
    index: Index, smtp: SmtpServer, cert: tuple[Path, Path]
):
    smtp.start()
    clock = Clock()
    cfg = config(email=email_section(smtp, cert[0]), batch_s=60)
    d = Dispatcher(index, cfg, build_senders(cfg, "office"), clock)
    for i in range(20):
        d.outbox.enqueue(alarm(f"shop-{i:02}", clock(), "disk", severity=Severity.WARNING))
        assert d.run_once(clock.advance(seconds=2.5)) == []
    clock.at = T0 + timedelta(seconds=60)
    [outcome] = d.run_once(clock())
    assert len(outcome.ids) == 20
    [mail] = smtp.messages()
    assert mail.message["Subject"] == (
        "[linetap] 20 alarms: shop-00 disk, shop-01 disk, shop-02 disk, ..."
    )
    listed = re.findall(r"^RAISED +warning +(shop-\d\d)  disk$", mail.text, re.M)
    assert listed == [f"shop-{i:02}" for i in range(20)]


# --------------------------------------------------------------------------- webhook


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The receiver's check, written from the documented scheme (INSTALL.md)."""
    timestamp = headers["X-Linetap-Timestamp"]
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(headers["X-Linetap-Signature"], "sha256=" + expected.hexdigest())


def test_the_webhook_is_signed_retried_after_a_500_and_sent_once(
    index: Index, webhook: WebhookServer
):
    webhook.answer(500)
    clock = Clock()
    cfg = config(webhook={"url": webhook.url, "secret": SECRET}, batch_s=0)
    d = Dispatcher(index, cfg, build_senders(cfg, "office"), clock)
    note = alarm("shop-7", T0, "hum", severity=Severity.WARNING, line="line2", hz="50")
    d.outbox.enqueue(note)
    [failed] = d.run_once(T0)
    # The error names the server, never the URL's path (a chat webhook's token).
    assert (
        failed.error
        == f"http://{webhook.url.split('/')[2]} answered HTTP 500 Internal Server Error"
    )
    assert d.run_once(clock.advance(seconds=29)) == []
    [sent] = d.run_once(clock.advance(seconds=1))
    assert sent.sent
    assert d.run_once(clock.advance(hours=1)) == []
    first, second = webhook.received()
    for request, when in ((first, T0), (second, T0 + timedelta(seconds=30))):
        assert request.path == "/hooks/T0KEN-in-path"
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["X-Linetap-Timestamp"] == str(int(when.timestamp()))
        assert verify(SECRET, request.headers, request.body)
        assert not verify(SECRET, request.headers, request.body.replace(b"hum", b"hux"))
        assert not verify("another-secret-0000", request.headers, request.body)
    document = json.loads(second.body)
    assert document["batch_id"] == second.headers["X-Linetap-Batch"] == sent.message_id
    assert document["sent_at"] == "2026-11-25T10:00:30.000+00:00"
    assert document["notifications"] == [
        {"id": note.id, "kind": "alarm_raised", "device_id": "shop-7", "line": "line2",
         "alarm": "hum", "severity": "warning", "summary": "shop-7 hum",
         "details": {"hz": "50"}, "raised_at": "2026-11-25T10:00:00.000+00:00"}
    ]  # fmt: skip


def test_over_max_per_hour_notifications_are_held_and_folded_never_dropped(
    index: Index, webhook: WebhookServer, caplog: pytest.LogCaptureFixture
):
    clock = Clock()
    cfg = config(webhook={"url": webhook.url, "secret": SECRET}, batch_s=0, max_per_hour=2)
    d = Dispatcher(index, cfg, build_senders(cfg, "office"), clock)
    notes = [alarm(f"shop-{i}", T0) for i in range(5)]
    d.outbox.enqueue(notes[0])
    assert [o.ids for o in d.run_once(clock())] == [(notes[0].id,)]
    d.outbox.enqueue(notes[1])
    assert [o.ids for o in d.run_once(clock.advance(minutes=1))] == [(notes[1].id,)]
    caplog.set_level(logging.WARNING, "headoffice.notify.dispatcher")
    for note in notes[2:]:
        d.outbox.enqueue(note)
        assert d.run_once(clock.advance(minutes=10)) == []  # held: 2 in the last hour
    assert len(caplog.records) == 1 and "max_per_hour" in caplog.records[0].getMessage()
    # The first send is an hour old at T0 + 60 min: everything held goes in one message.
    assert d.run_once(T0 + timedelta(minutes=59, seconds=59)) == []
    [folded] = d.run_once(T0 + timedelta(minutes=60))
    assert folded.ids == tuple(n.id for n in notes[2:])
    sent = [json.loads(r.body)["notifications"] for r in webhook.received()]
    assert [[n["device_id"] for n in batch] for batch in sent] == [
        ["shop-0"],
        ["shop-1"],
        ["shop-2", "shop-3", "shop-4"],
    ]


# --------------------------------------------------------------------------- digest


def test_the_daily_digest_goes_at_the_configured_time_once_a_day(
    index: Index, smtp: SmtpServer, cert: tuple[Path, Path]
):
    smtp.start()
    day = datetime(2026, 11, 25, tzinfo=UTC)
    clock = Clock(day - timedelta(days=2))
    cfg = config(email=email_section(smtp, cert[0]), digest="daily", digest_at="07:00")
    d = Dispatcher(index, cfg, build_senders(cfg, "office"), clock)
    events = [
        alarm("shop-1", day - timedelta(days=2), "clock"),  # before the period, still open
        alarm("shop-2", day - timedelta(hours=15), "disk"),  # raised and cleared in it
        alarm("shop-2", day - timedelta(hours=14), "disk", kind=Kind.ALARM_CLEARED),
        alarm("shop-3", day - timedelta(hours=3), "offline", line="line1"),  # open
        alarm("shop-4", day + timedelta(hours=7, minutes=30), "hum"),  # after the digest
    ]
    for note in events[:4]:
        clock.at = note.raised_at
        d.outbox.enqueue(note)
    outcomes = d.run_once(day + timedelta(hours=6, minutes=59))
    assert [len(o.ids) for o in outcomes] == [4]  # the alarms' own message; no digest yet
    clock.at = day + timedelta(hours=7)
    [digest] = d.run_once(clock())
    assert digest.ids == ("digest-2026-11-25",)
    mail = smtp.messages()[-1]
    assert mail.message["Subject"] == (
        "[linetap] daily digest 2026-11-25: 2 raised, 1 cleared, 2 open"
    )
    text = mail.text
    open_part = text.split("Open alarms (2):\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert open_part == [
        "  shop-1 clock (critical) since 2026-11-23 00:00 UTC: shop-1 clock",
        "  shop-3/line1 offline (critical) since 2026-11-24 21:00 UTC: shop-3 offline",
    ]
    assert text.split("Raised (2):\n", 1)[1].split("\n\n", 1)[0].splitlines() == [
        "  2026-11-24 09:00 UTC shop-2 disk (critical): shop-2 disk",
        "  2026-11-24 21:00 UTC shop-3/line1 offline (critical): shop-3 offline",
    ]
    assert "Cleared (1):\n  2026-11-24 10:00 UTC shop-2 disk (critical): shop-2 disk\n" in text
    # Once a day, whichever dispatcher asks (a restart, a second worker).
    again = Dispatcher(index, cfg, build_senders(cfg, "office"), clock)
    assert again.run_once(clock.advance(minutes=5)) == []
    d.outbox.enqueue(events[4])
    clock.at = day + timedelta(days=1, hours=7)
    subjects = [o.ids for o in again.run_once(clock())]
    assert subjects == [("digest-2026-11-26",), (events[4].id,)]
    assert smtp.messages()[-2].message["Subject"] == (
        "[linetap] daily digest 2026-11-26: 1 raised, 0 cleared, 3 open"
    )


# --------------------------------------------------------------------------- the outbox


def test_enqueue_joins_the_callers_transaction_and_an_id_goes_once(index: Index):
    cfg = config(webhook={"url": "https://hooks.example/x", "secret": SECRET})
    outbox = Outbox(index, cfg, Clock())
    note = alarm("shop-5", T0)
    with pytest.raises(RuntimeError), index.transaction(True) as q:
        assert outbox.enqueue_in(q, note)
        raise RuntimeError("the alarm's own insert failed")
    assert deliveries(index) == [] and not outbox.exists(note.id)
    with index.transaction(True) as q:
        assert outbox.enqueue_in(q, note)
    assert outbox.enqueue(note) is False  # a retried caller
    assert deliveries(index) == [(note.id, "webhook", "pending", 0, at(T0 + timedelta(seconds=60)),
                                  None, None)]  # fmt: skip


def test_a_claim_of_a_killed_dispatcher_lapses_and_the_delivery_goes_once(
    index: Index, webhook: WebhookServer
):
    clock = Clock()
    cfg = config(webhook={"url": webhook.url, "secret": SECRET}, batch_s=0)
    note = alarm("shop-6", T0)
    Outbox(index, cfg, clock).enqueue(note)
    # A worker claims it and dies before sending: nobody else sends it meanwhile.
    claimed = Outbox(index, cfg, clock).claim(Channel.WEBHOOK, T0, LEASE, lambda s: [note.id])
    assert [n.id for n in claimed] == [note.id]
    d = Dispatcher(index, cfg, build_senders(cfg, "office"), clock)
    assert d.run_once(T0 + LEASE - timedelta(seconds=1)) == []
    [outcome] = d.run_once(T0 + LEASE)
    assert outcome.sent and len(webhook.received()) == 1
