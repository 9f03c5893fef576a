"""``linetap-office notify status|test`` as an administrator (and refused to others,
each access in the audit ledger), the dispatcher thread ``serve`` runs, and the
``[notify]`` config's checks."""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from headoffice.authz import Role
from headoffice.cli import main as office_main
from headoffice.config import OfficeConfig, load_office_config
from headoffice.index import Index, open_index
from headoffice.notify.dispatcher import backoff, start_dispatcher
from headoffice.notify.model import Kind, Notification, NotifyConfig, RetryConfig, Severity
from headoffice.notify.outbox import Outbox
from runtime.errors import ConfigError
from tests.notify_servers import WebhookServer
from tests.office_accounts import CHEAP, CHEAP_TOML, SteppingClock, add_account, leaves, use_clock

SECRET = "whsec-0123456789abcdef"
INSTALL = Path(__file__).resolve().parent.parent / "headoffice" / "INSTALL.md"


@pytest.fixture
def webhook() -> Iterator[WebhookServer]:
    server = WebhookServer()
    yield server
    server.close()


@pytest.fixture
def office(tmp_path: Path, webhook: WebhookServer) -> Iterator[tuple[Path, Index]]:
    config = tmp_path / "office.toml"
    config.write_text(
        f'root = "{tmp_path}"\nindex = "sqlite:///{tmp_path}/index.sqlite3"\n{CHEAP_TOML}'
        f'[notify]\nbatch_s = 0\n[notify.webhook]\nurl = "{webhook.url}"\nsecret = "{SECRET}"\n'
    )
    index = open_index(f"sqlite:///{tmp_path}/index.sqlite3")
    yield config, index
    index.close()


def test_an_admin_tests_the_webhook_and_reads_the_delivery_status(
    office: tuple[Path, Index],
    webhook: WebhookServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    config, index = office
    clock = use_clock(monkeypatch, SteppingClock())
    ada = add_account(index, "ada", [Role.ADMIN], settings=CHEAP, clock=clock)
    where = ["--config", str(config)]
    ada.apply(monkeypatch)
    assert office_main(["notify", "test", "--channel", "webhook", *where]) == 0
    out = capsys.readouterr().out
    [request] = webhook.received()
    batch = json.loads(request.body)
    assert out.startswith("webhook: test notification delivered in ")
    assert out.rstrip().endswith(f"(message {batch['batch_id']})")
    [note] = batch["notifications"]
    assert (note["kind"], note["summary"]) == (
        "test",
        "test notification (webhook) requested by ada",
    )
    # A failing channel: the reason on stderr, exit 1, kept in the outbox, not retried.
    webhook.answer(503)
    ada.apply(monkeypatch)
    assert office_main(["notify", "test", "--channel", "webhook", *where]) == 1
    server = webhook.url.split("/hooks")[0]
    error = f"{server} answered HTTP 503 Service Unavailable"
    assert capsys.readouterr().err == f"linetap-office: error: webhook: not delivered: {error}\n"
    ada.apply(monkeypatch)
    assert office_main(["notify", "status", "--json", *where]) == 0
    [status] = json.loads(capsys.readouterr().out)["channels"]
    assert {k: status[k] for k in ("channel", "configured", "pending", "failed", "not_retried",
                                   "sent_24h", "last_error", "next_attempt_at")} == {
        "channel": "webhook", "configured": True, "pending": 0, "failed": 0, "not_retried": 1,
        "sent_24h": 1, "last_error": error, "next_attempt_at": None,
    }  # fmt: skip
    ada.apply(monkeypatch)
    assert office_main(["notify", "status", *where]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split() == [
        "channel", "pending", "failed", "oldest", "waiting", "next", "attempt", "last", "sent",
        "sent", "24h",
    ]  # fmt: skip
    assert "webhook: last error " in text and text.rstrip().endswith(
        "webhook: 1 failed test notification(s), not retried"
    )
    ada.apply(monkeypatch)
    assert office_main(["notify", "test", "--channel", "email", *where]) == 1
    assert "no [notify.email] in the office config" in capsys.readouterr().err
    # Every run is an access leaf of the administrator, before anything was sent or read.
    details = [leaf["detail"] for leaf in leaves(index, "access") if leaf["user"] == "ada"]
    assert details == ["notify test webhook", "notify test webhook", "notify status",
                       "notify status", "notify test email"]  # fmt: skip


def test_only_an_administrator_may_run_them(
    office: tuple[Path, Index],
    webhook: WebhookServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    config, index = office
    rita = add_account(index, "rita", [Role.REVIEWER], settings=CHEAP)
    rita.apply(monkeypatch)
    assert office_main(["notify", "test", "--channel", "webhook", "--config", str(config)]) == 1
    assert "rita may not manage_users" in capsys.readouterr().err
    assert webhook.received() == []
    [leaf] = [leaf for leaf in leaves(index, "access") if leaf["user"] == "rita"]
    assert (leaf["action"], leaf["detail"]) == (
        "manage_users",
        "refused: not granted: reviewer may not manage_users; notify test webhook",
    )


def documented_verify() -> Callable[..., bool]:
    """The Python snippet of INSTALL.md's webhook section, as a receiver would paste it."""
    text = INSTALL.read_text(encoding="utf-8").split("### The webhook's request and signature")[1]
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # our own documentation
    verify: Callable[..., bool] = namespace["verify"]
    return verify


def test_the_dispatcher_thread_delivers_and_stops_with_serve(
    tmp_path: Path, webhook: WebhookServer
):
    cfg = OfficeConfig.model_validate(
        {"root": str(tmp_path),
         "notify": {"batch_s": 0, "webhook": {"url": webhook.url, "secret": SECRET}}}
    )  # fmt: skip
    index = open_index(cfg.index_url)
    stop = threading.Event()  # serve's stop event (SIGTERM)
    try:
        note = Notification(
            kind=Kind.ALARM_RAISED, device_id="shop-1", alarm="offline",
            severity=Severity.CRITICAL, summary="shop-1 offline", raised_at=datetime.now(UTC),
        )  # fmt: skip
        Outbox(index, cfg.notify).enqueue(note)
        thread = start_dispatcher(cfg, index, stop)
        deadline = time.monotonic() + 10
        while not webhook.received() and time.monotonic() < deadline:
            time.sleep(0.05)
        [request] = webhook.received()
        assert json.loads(request.body)["notifications"][0]["id"] == note.id
        # The verification snippet of INSTALL.md accepts it, and nothing altered.
        verify = documented_verify()
        assert verify(SECRET.encode(), request.headers, request.body)
        assert not verify(SECRET.encode(), request.headers, request.body + b" ")
        stale = {**request.headers, "X-Linetap-Timestamp": str(int(time.time()) - 301)}
        assert not verify(SECRET.encode(), stale, request.body)
        stop.set()
        thread.join(timeout=10)
        assert not thread.is_alive()
        [timing] = Outbox(index, cfg.notify).delivery_times(note.raised_at)
        assert 0 <= timing.latency_s < 10
    finally:
        stop.set()
        index.close()


# --------------------------------------------------------------------------- config


def test_office_toml_takes_a_notify_section(tmp_path: Path):
    (tmp_path / "pw").write_text("from-a-file\n")
    path = tmp_path / "office.toml"
    path.write_text(
        '[notify]\nbatch_s = 120\nmax_per_hour = 6\ndigest = "daily"\ndigest_at = "06:30"\n'
        '[notify.email]\nhost = "smtp.example.net"\nusername = "alarms"\n'
        f'password_file = "{tmp_path / "pw"}"\nfrom = "linetap@example.net"\n'
        'to = ["ops@example.net", "boss@example.net"]\n'
        "[notify.retry]\ninitial_s = 10\nmax_s = 600\n"
    )
    notify = load_office_config(path).notify
    assert notify.email is not None
    assert (notify.email.sender, notify.email.to, notify.email.port) == (
        "linetap@example.net", ("ops@example.net", "boss@example.net"), 587
    )  # fmt: skip
    assert (notify.batch_s, notify.max_per_hour, notify.digest_at) == (120, 6, "06:30")
    assert [c.value for c in notify.channels] == ["email"]
    assert OfficeConfig().notify.channels == ()  # off unless configured


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {
                "email": {
                    "host": "h",
                    "from": "a@b.c",
                    "to": ["x@y.z"],
                    "username": "u",
                    "password": "p",
                    "starttls": False,
                }
            },
            "password in clear",
        ),
        (
            {"email": {"host": "h", "from": "a@b.c", "to": ["x@y.z"], "username": "u"}},
            "username together with password",
        ),
        ({"email": {"host": "h", "from": "nobody", "to": ["x@y.z"]}}, "not an e-mail address"),
        ({"webhook": {"url": "https://h.example/x", "secret": "short"}}, "at least 16"),
        ({"webhook": {"url": "ftp://h.example/x", "secret": SECRET}}, "use https://host/path"),
        ({"webhook": {"url": "https://h.example/x"}}, "exactly one of secret or secret_file"),
        ({"digest": "daily"}, "needs [notify.email]"),
        ({"digest_at": "25:00"}, "digest_at"),
        ({"retry": {"initial_s": 600, "max_s": 60}}, "at least initial_s"),
    ],
)
def test_bad_notify_settings_are_refused_with_the_reason(section: dict[str, Any], message: str):
    with pytest.raises(ValidationError, match=re.escape(message)):
        NotifyConfig.model_validate(section)


def test_a_bad_section_in_office_toml_is_a_config_error(tmp_path: Path):
    path = tmp_path / "office.toml"
    path.write_text('[notify.webhook]\nurl = "https://h.example/x"\nsecret = "short"\n')
    with pytest.raises(ConfigError, match=r"notify\.webhook: Value error, secret: at least 16"):
        load_office_config(path)


def test_back_off_doubles_up_to_the_maximum_within_its_jitter():
    rng = random.Random(7)
    exact = RetryConfig(initial_s=30, max_s=3600, jitter=0)
    assert [backoff(exact, n, rng).total_seconds() for n in range(1, 10)] == [
        30, 60, 120, 240, 480, 960, 1920, 3600, 3600
    ]  # fmt: skip
    spread = RetryConfig(initial_s=30, max_s=3600, jitter=0.2)
    waits = [backoff(spread, 2, rng).total_seconds() for _ in range(200)]
    assert 48 <= min(waits) < 52 and 68 < max(waits) <= 72
    assert all(backoff(spread, 20, rng) <= timedelta(hours=1) for _ in range(50))


def test_notification_texts_are_one_clean_line_and_times_must_be_aware():
    note = Notification(
        kind=Kind.ALARM_RAISED, device_id="shop\x1b[2J-1", alarm="offline",
        severity=Severity.WARNING, summary="line one\nline two\u202e" + "x" * 300,
        raised_at=datetime(2026, 11, 25, 11, 0, tzinfo=UTC) + timedelta(hours=0),
        details={"why\n": "a\rb"},
    )  # fmt: skip
    assert note.device_id == "shop\\x1b[2J-1"
    assert note.summary.startswith("line one line two\\u202exxx") and len(note.summary) == 200
    assert note.summary.endswith("…")
    assert dict(note.details) == {"why": "a b"}
    assert Notification.from_json(note.to_json()) == note
    with pytest.raises(ValueError, match="timezone-aware"):
        Notification(kind=Kind.TEST, device_id="d", alarm="a", severity=Severity.INFO,
                     summary="s", raised_at=datetime(2026, 1, 1))  # fmt: skip
    with pytest.raises(ValueError, match="'loud' is not a valid Severity"):
        Notification(kind=Kind.TEST, device_id="d", alarm="a", severity="loud",  # type: ignore[arg-type]
                     summary="s", raised_at=datetime(2026, 1, 1, tzinfo=UTC))  # fmt: skip
