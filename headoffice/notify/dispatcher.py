"""The dispatcher: from the outbox to the channels, batched, rate-limited, retried.

Per channel, each :meth:`Dispatcher.run_once`:

1. a due digest or test notification goes alone, at once;
2. alarm notifications wait out ``batch_s`` from the oldest one (an alarm's delivery is
   due ``batch_s`` after it was enqueued); then everything the channel has waiting goes
   as one message (at most :data:`MAX_BATCH` notifications, the rest in the next);
3. while the channel already sent ``max_per_hour`` alarm messages in the last hour,
   nothing goes: notifications wait (never dropped) and are folded into the next
   message, once the oldest of those sends is an hour old;
4. a failed message leaves its deliveries ``failed``, tried again after the channel's
   back-off: ``retry.initial_s`` doubled per attempt up to ``retry.max_s``, ± jitter.
   Until then new alarms wait too (a server that is down is not hammered), and are
   folded into the retry. A success brings every waiting retry forward.

Nothing escapes :meth:`~Dispatcher.run_once`: each failure is one log line naming the
channel and the reason (no secret), and the outbox keeps the delivery until it goes.
:class:`DispatcherThread` runs it every :data:`POLL_S` seconds in ``serve``.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Protocol

from headoffice.config import OfficeConfig
from headoffice.index import Index
from headoffice.notify.digest import build_digest, digest_id, digest_time
from headoffice.notify.email import EmailSender
from headoffice.notify.model import (
    SOLO_KINDS,
    Batch,
    Channel,
    DeliveryError,
    Kind,
    Notification,
    NotifyConfig,
    RetryConfig,
    Severity,
    new_id,
)
from headoffice.notify.outbox import FAILED, ChannelState, Outbox, utc_now
from headoffice.notify.webhook import WebhookSender
from sealedrec.errors import LinetapError

log = logging.getLogger(__name__)

POLL_S = 5.0
LEASE = timedelta(minutes=15)  # far beyond a send's timeouts; then a claim lapses
MAX_BATCH = 200
MAX_MESSAGES_PER_RUN = 20
HOUR = timedelta(hours=1)


class Sender(Protocol):
    def send(self, batch: Batch) -> str:
        """Deliver ``batch``; the message's id. Raises :class:`DeliveryError`."""
        ...


@dataclass(frozen=True, slots=True)
class Choice:
    ids: tuple[str, ...]
    held: bool = False  # alarms are due but the rate limit holds them


@dataclass(frozen=True, slots=True)
class Outcome:
    """One message: which notifications, and its id or the error."""

    channel: Channel
    ids: tuple[str, ...]
    message_id: str | None
    error: str | None
    retry_at: datetime | None = None

    @property
    def sent(self) -> bool:
        return self.error is None


def backoff(retry: RetryConfig, attempts: int, rng: random.Random) -> timedelta:
    """The wait after the ``attempts``-th failure in a row (1, 2, …)."""
    base = min(retry.max_s, retry.initial_s * 2 ** min(max(attempts, 1) - 1, 30))
    spread = base * retry.jitter
    return timedelta(seconds=min(retry.max_s, max(1.0, base + rng.uniform(-spread, spread))))


def pick(state: ChannelState, now: datetime, cfg: NotifyConfig) -> Choice:
    """What the channel sends next (see the module docstring); pure."""
    for item in state.queued:
        if item.notification.kind in SOLO_KINDS and item.next_attempt_at <= now:
            return Choice((item.notification.id,))
    alarms = [i for i in state.queued if i.notification.kind not in SOLO_KINDS]
    if not alarms:
        return Choice(())
    failed = [i.next_attempt_at for i in alarms if i.state == FAILED]
    due = min(failed) if failed else min(i.next_attempt_at for i in alarms)
    if due > now:
        return Choice(())
    recent = [at for at in state.sent_last_hour if at > now - HOUR]
    if len(recent) >= cfg.max_per_hour:
        return Choice((), held=True)
    return Choice(tuple(i.notification.id for i in alarms[:MAX_BATCH]))


class Dispatcher:
    """Delivers the outbox of ``index`` through ``senders`` (see the module docstring).
    ``clock`` stamps sends and failures; ``rng`` spreads the back-off."""

    def __init__(
        self,
        index: Index,
        cfg: NotifyConfig,
        senders: Mapping[Channel, Sender],
        clock: Callable[[], datetime] = utc_now,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.senders = dict(senders)
        self.clock = clock
        self.outbox = Outbox(index, cfg, clock)
        self.rng = rng or random.Random()
        self._held: set[Channel] = set()

    def run_once(
        self, now: datetime | None = None, stop: threading.Event | None = None
    ) -> list[Outcome]:
        """One pass: the digest if due, then each channel's due messages. Never raises;
        stops between messages once ``stop`` is set."""
        at = self.clock() if now is None else now
        self._guarded("digest", lambda: self._digest(at))
        outcomes: list[Outcome] = []
        for channel in self.senders:
            if stop is not None and stop.is_set():
                break
            self._guarded(channel.value, partial(self._run_channel, channel, at, outcomes, stop))
        return outcomes

    def _guarded(self, what: str, work: Callable[[], object]) -> None:
        try:
            work()
        except LinetapError as exc:
            log.error("notify %s: %s", what, exc)
        except Exception as exc:  # noqa: BLE001 - notifications must outlive any one failure
            log.error("notify %s: unexpected %s (please report)", what, type(exc).__name__)

    def _digest(self, now: datetime) -> None:
        at = digest_time(self.cfg, now)
        if at is None or Channel.EMAIL not in self.senders or self.outbox.exists(digest_id(at)):
            return
        if self.outbox.enqueue(build_digest(self.outbox, at), (Channel.EMAIL,)):
            log.info("notify: daily digest %s queued", digest_id(at))

    def _run_channel(
        self,
        channel: Channel,
        now: datetime,
        outcomes: list[Outcome],
        stop: threading.Event | None,
    ) -> None:
        for _ in range(MAX_MESSAGES_PER_RUN):
            if stop is not None and stop.is_set():
                return
            notes, held = self._claim(channel, now)
            self._note_held(channel, held)
            if not notes:
                return
            outcome = self._send(channel, notes)
            outcomes.append(outcome)
            if not outcome.sent:
                return

    def _claim(self, channel: Channel, now: datetime) -> tuple[list[Notification], bool]:
        """The next message's notifications, claimed; and whether the rate limit holds
        alarms back."""
        choices: list[Choice] = []

        def choose(state: ChannelState) -> tuple[str, ...]:
            choices.append(pick(state, now, self.cfg))
            return choices[-1].ids

        notes = self.outbox.claim(channel, now, LEASE, choose)
        return notes, bool(choices) and choices[-1].held

    def _note_held(self, channel: Channel, held: bool) -> None:
        if held and channel not in self._held:
            log.warning(
                "notify %s: %d messages in the last hour (max_per_hour); notifications wait "
                "and go together in the next message",
                channel.value,
                self.cfg.max_per_hour,
            )
            self._held.add(channel)
        elif not held:
            self._held.discard(channel)

    def _send(
        self, channel: Channel, notes: Sequence[Notification], *, quiet: bool = False
    ) -> Outcome:
        """Send one message and record it; ``quiet``: the caller reports a failure."""
        ids = tuple(n.id for n in notes)
        batch = Batch(new_id(), tuple(notes), self.clock())
        try:
            message_id: str | None = self.senders[channel].send(batch)
            error: str | None = None
        except DeliveryError as exc:
            message_id, error = None, str(exc)
        except Exception as exc:  # noqa: BLE001 - a sender's bug must not lose the batch
            message_id, error = None, f"unexpected {type(exc).__name__} (please report)"
        at = self.clock()
        if error is None:
            self.outbox.record_sent(channel, ids, message_id or batch.id, at)
            log.info("notify %s: sent %d notification(s) in %s", channel.value, len(ids),
                     message_id)  # fmt: skip
            return Outcome(channel, ids, message_id, None)
        attempts = self.outbox.attempts(channel, ids) + 1
        # A test is answered on the spot (notify test); it is not sent again later.
        tests_only = all(n.kind is Kind.TEST for n in notes)
        retry_at = None if tests_only else at + backoff(self.cfg.retry, attempts, self.rng)
        self.outbox.record_failed(channel, ids, error, at, retry_at)
        (log.info if quiet else log.warning)(
            "notify %s: %d notification(s) not delivered (attempt %d): %s; %s",
            channel.value, len(ids), attempts, error,
            "not retried" if retry_at is None else f"next try at {retry_at:%H:%M:%S} UTC",
        )  # fmt: skip
        return Outcome(channel, ids, None, error, retry_at)

    def send_test(self, channel: Channel, requested_by: str) -> Outcome:
        """Send a test notification on ``channel`` now, past batching, rate limit and
        back-off (an administrator checking a fix); recorded in the outbox like any."""
        now = self.clock()
        note = Notification(
            kind=Kind.TEST,
            device_id="office",
            alarm="test",
            severity=Severity.INFO,
            summary=f"test notification ({channel.value}) requested by {requested_by}",
            raised_at=now,
        )
        self.outbox.enqueue_claimed(note, channel, now, LEASE)
        return self._send(channel, [note], quiet=True)


def build_senders(cfg: NotifyConfig, office: str) -> dict[Channel, Sender]:
    """A sender per configured channel."""
    senders: dict[Channel, Sender] = {}
    if cfg.email is not None:
        senders[Channel.EMAIL] = EmailSender(cfg.email, office)
    if cfg.webhook is not None:
        senders[Channel.WEBHOOK] = WebhookSender(cfg.webhook)
    return senders


class DispatcherThread(threading.Thread):
    """Runs a dispatcher every ``poll_s`` until ``stop`` is set; a send in progress is
    finished (its timeouts bound it), then the thread ends."""

    def __init__(
        self, dispatcher: Dispatcher, stop: threading.Event | None = None, poll_s: float = POLL_S
    ) -> None:
        super().__init__(name="notify-dispatcher", daemon=True)
        self.dispatcher = dispatcher
        self.stop_event = stop or threading.Event()
        self.poll_s = poll_s

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.dispatcher.run_once(stop=self.stop_event)
            self.stop_event.wait(self.poll_s)

    def close(self, timeout: float | None = None) -> None:
        """Stop after the current send and wait for the thread (at most ``timeout``)."""
        self.stop_event.set()
        self.join(timeout)


def start_dispatcher(
    cfg: OfficeConfig, index: Index, stop: threading.Event | None = None
) -> DispatcherThread:
    """The notification dispatcher of ``serve``, started: ``[notify]`` of ``cfg``, the
    outbox in ``index``; it ends when ``stop`` is set (or at :meth:`DispatcherThread.close`)."""
    notify = cfg.notify
    senders = build_senders(notify, cfg.web.office_name)
    if senders:
        log.info(
            "notify: %s; batches of %d s, at most %d messages per hour per channel",
            ", ".join(c.value for c in senders), notify.batch_s, notify.max_per_hour,
        )  # fmt: skip
    else:
        log.info("notify: no channel in [notify]; notifications are kept in the outbox only")
    thread = DispatcherThread(Dispatcher(index, notify, senders), stop)
    thread.start()
    return thread
