"""``linetap-office notify status|test``: is anything stuck, and does a channel work.

- ``notify status [--json]``: per channel, how many deliveries wait (never tried /
  failed and retrying), the oldest, the next attempt, the last error and the last send;
- ``notify test --channel email|webhook``: sends a test notification now, past the
  batching, the rate limit and any back-off, and says whether it went (exit 0) or why
  not (exit 1). It is kept in the outbox like any notification, and not retried.

Both act as an administrator (right ``manage_users``): the command line logs in as a
named account (:func:`headoffice.cli_query.run_as_account`), and the access is
authorized and written to the audit ledger before anything is read or sent.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

from headoffice.access import Gate
from headoffice.authz import Action
from headoffice.cli_query import office_config, office_options, run_as_account
from headoffice.config import OfficeLocation
from headoffice.index import Index
from headoffice.notify.dispatcher import Dispatcher, build_senders
from headoffice.notify.model import Channel
from headoffice.notify.outbox import ChannelStatus, Outbox, utc_now
from headoffice.printing import fail, format_table, terminal_safe, write_json

__all__ = ["add_notify_commands"]


def _ago(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "-"
    seconds = int((now - when).total_seconds())
    span = (
        f"{seconds} s" if abs(seconds) < 120
        else f"{seconds // 60} min" if abs(seconds) < 7200
        else f"{seconds // 3600} h"
    )  # fmt: skip
    return f"{when:%Y-%m-%d %H:%M:%S} UTC ({span} ago)" if seconds >= 0 else (
        f"{when:%Y-%m-%d %H:%M:%S} UTC (in {span.lstrip('-')})"
    )  # fmt: skip


def _json(s: ChannelStatus, configured: bool) -> dict[str, object]:
    def t(when: datetime | None) -> str | None:
        return None if when is None else when.isoformat(timespec="milliseconds")

    return {
        "channel": s.channel, "configured": configured, "pending": s.pending,
        "failed": s.failed, "not_retried": s.not_retried,
        "oldest_waiting": t(s.oldest_waiting), "next_attempt_at": t(s.next_attempt_at),
        "last_error": s.last_error, "last_error_at": t(s.last_error_at),
        "last_sent_at": t(s.last_sent_at), "sent_24h": s.sent_24h,
    }  # fmt: skip


def run_status(args: argparse.Namespace) -> int:
    def body(where: OfficeLocation, index: Index, gate: Gate) -> int:
        gate.allow(Action.MANAGE_USERS, detail="notify status")
        cfg = office_config(where).notify
        now = utc_now()
        rows = Outbox(index, cfg).status(now)
        configured = {c.value for c in cfg.channels}
        if args.json:
            write_json(sys.stdout, {"at": now.isoformat(timespec="milliseconds"),
                                    "channels": [_json(s, s.channel in configured) for s in rows]})  # fmt: skip
            return 0
        if not rows:
            print("no notification channel configured ([notify.email], [notify.webhook])")
            return 0
        print(format_table(
            ["channel", "pending", "failed", "oldest waiting", "next attempt", "last sent",
             "sent 24h"],
            [[s.channel if s.channel in configured else f"{s.channel} (not configured)",
              s.pending, s.failed, _ago(s.oldest_waiting, now), _ago(s.next_attempt_at, now),
              _ago(s.last_sent_at, now), s.sent_24h] for s in rows],
        ))  # fmt: skip
        for s in rows:
            if s.last_error is not None and s.last_error_at is not None:
                print(terminal_safe(f"{s.channel}: last error {_ago(s.last_error_at, now)}: "
                                    f"{s.last_error}"))  # fmt: skip
            if s.not_retried:
                print(f"{s.channel}: {s.not_retried} failed test notification(s), not retried")
        return 0

    return run_as_account(args, body)


def run_test(args: argparse.Namespace) -> int:
    channel = Channel(args.channel)

    def body(where: OfficeLocation, index: Index, gate: Gate) -> int:
        gate.allow(Action.MANAGE_USERS, detail=f"notify test {channel.value}")
        office = office_config(where)
        senders = build_senders(office.notify, office.web.office_name)
        if channel not in senders:
            return fail(sys.stderr, f"no [notify.{channel.value}] in the office config")
        dispatcher = Dispatcher(index, office.notify, {channel: senders[channel]})
        started = utc_now()
        outcome = dispatcher.send_test(channel, gate.actor.principal.name)
        took = (utc_now() - started).total_seconds()
        if not outcome.sent:
            return fail(sys.stderr, f"{channel.value}: not delivered: {outcome.error}")
        print(terminal_safe(f"{channel.value}: test notification delivered in {took:.1f} s "
                            f"(message {outcome.message_id})"))  # fmt: skip
        return 0

    return run_as_account(args, body)


def add_notify_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Register ``notify status`` and ``notify test``."""
    common = [office_options()]
    who = (
        "Acts as an administrator (right manage_users), logged in the audit ledger before "
        "anything is read or sent."
    )
    p = subparsers.add_parser("notify", help="notifications: delivery status, test a channel")
    sub = p.add_subparsers(dest="notify_command", required=True)
    q = sub.add_parser(
        "status",
        parents=common,
        help="what waits in the outbox per channel, and the last error",
        description="Per channel: deliveries never tried (pending) and failed ones being "
        f"retried, the oldest, the next attempt, the last error and the last send. {who}",
    )
    q.add_argument("--json", action="store_true", help="one JSON document")
    q.set_defaults(func=run_status)
    q = sub.add_parser(
        "test",
        parents=common,
        help="send a test notification now",
        description="Send a test notification on one channel now (past batching, the rate "
        f"limit and any back-off) and say whether it went. {who}",
    )
    q.add_argument("--channel", required=True, choices=[c.value for c in Channel])
    q.set_defaults(func=run_test)
