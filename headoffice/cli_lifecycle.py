"""``linetap-office retention plan|run`` and ``linetap-office hold set|release|list``.

- ``retention plan`` shows what the next run would delete and what it keeps and why,
  for the recordings the account may see (an auditor or compliance officer sees all;
  one ``search`` ledger leaf). It deletes nothing.
- ``retention run`` is the office's own job (the systemd timer
  ``linetap-office-retention.timer``): it acts under the office's configured policies,
  not as a person, so it needs no account; every deletion is a ledger tombstone by
  ``retention`` naming the policy. Exit status 1 when a deletion failed (the others
  still ran; the next run tries again).
- ``hold set|release`` act as a compliance officer (right ``hold`` / ``release``), with
  a case reference and a reason; ``hold list`` shows a recording's holds (or every hold
  in force) to whoever may see the recordings' metadata.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime

from headoffice.access import AccessDenied, Gate
from headoffice.authz import Action
from headoffice.cli_query import (
    office_config,
    office_location,
    office_options,
    office_store,
    run_as_account,
)
from headoffice.config import OfficeLocation
from headoffice.holds import Hold, HoldError, Holds, holds_of
from headoffice.index import Index, open_index
from headoffice.index.records import utc_iso
from headoffice.printing import fail, terminal_safe
from headoffice.purge import retention_facts, run_purge
from headoffice.query import lookup, not_found, open_record
from headoffice.retention import Decision, purge_plan
from runtime.process import setup_logging
from sealedrec.errors import LinetapError

__all__ = ["add_lifecycle_commands"]

log = logging.getLogger("headoffice.retention")


def _when(text: str | None) -> datetime:
    return datetime.fromisoformat(utc_iso(text)) if text else datetime.now(UTC)


# --------------------------------------------------------------------------- retention


def run_plan(args: argparse.Namespace) -> int:
    def body(where: OfficeLocation, index: Index, gate: Gate) -> int:
        cfg = office_config(where)
        now = _when(args.at)
        gate.allow(Action.SEARCH, detail=f"retention plan at {now:%Y-%m-%d}")
        facts = retention_facts(index)
        verdicts = purge_plan(cfg.retention, facts, cfg.sites, now)
        visible = {
            r.recording_id
            for r in (index.get(f.recording_id) for f in facts)
            if r is not None and gate.may(Action.VIEW_METADATA, r)
        }
        shown = [v for v in verdicts if v.recording_id in visible]
        if args.json:
            rows = [
                {"recording_id": v.recording_id, "decision": v.decision.value,
                 "policy": v.policy, "reason": v.reason,
                 "expires": v.expires.isoformat() if v.expires else None}
                for v in shown
            ]  # fmt: skip
            print(json.dumps({"at": now.isoformat(), "recordings": rows}, indent=2))
            return 0
        due = [v for v in shown if v.decision is Decision.DELETE]
        for v in due if not args.all else shown:
            print(terminal_safe(f"{v.decision.value:6}  {v.recording_id}  {v.policy}: {v.reason}"))
        hidden = len(verdicts) - len(shown)
        print(
            f"{len(due)} to delete, {len(shown) - len(due)} kept, at {now:%Y-%m-%d %H:%M} UTC"
            + (f" ({hidden} recordings out of your scope not shown)" if hidden else "")
        )
        return 0

    return run_as_account(args, body)


def run_purge_command(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    where = office_location(args)
    cfg = office_config(where)
    try:
        index = open_index(where.index_url)
    except (LinetapError, OSError) as exc:
        return fail(sys.stderr, exc)
    try:
        store = office_store(where)

        def progress(done: int, due: int) -> None:
            if done == due or done % 100 == 0:
                log.info("retention: %d of %d due deletions done", done, due)

        report = run_purge(
            index, store, cfg.retention, cfg.sites, _when(args.at), progress=progress
        )
    except (LinetapError, OSError) as exc:
        return fail(sys.stderr, exc)
    finally:
        index.close()
    kept = [o for o in report.outcomes if not o.deleted]
    log.info(
        "retention: %d deleted, %d kept by hold or store, %d failed, of %d due; "
        "%d newly locked in the store for their mandatory retention",
        report.deleted, len(kept), len(report.failures), report.due, report.locked,
    )  # fmt: skip
    return 1 if report.failures else 0


# --------------------------------------------------------------------------- holds


def _print_hold(h: Hold) -> None:
    state = (
        f"released {h.released_at} by {h.released_by}: {h.release_reason}"
        if h.released_at
        else "IN FORCE"
    )
    print(terminal_safe(f"{h.recording_id}  case {h.case_ref}  set {h.set_at} by {h.set_by}: "
                        f"{h.reason}  [{state}]"))  # fmt: skip


def _change_hold(args: argparse.Namespace, release: bool) -> int:
    def body(where: OfficeLocation, index: Index, gate: Gate) -> int:
        record = lookup(index, args.recording, gate)
        holds = Holds(index, office_store(where), gate)
        try:
            if release:
                hold = holds.release(record, args.case, args.reason)
            else:
                hold = holds.set(record, args.case, args.reason)
        except HoldError as exc:
            return fail(sys.stderr, exc)
        except AccessDenied as exc:  # out of scope: as unknown (the refusal is logged)
            raise not_found(args.recording) if exc.hidden else exc from None
        _print_hold(hold)
        return 0

    return run_as_account(args, body)


def run_hold_set(args: argparse.Namespace) -> int:
    return _change_hold(args, release=False)


def run_hold_release(args: argparse.Namespace) -> int:
    return _change_hold(args, release=True)


def run_hold_list(args: argparse.Namespace) -> int:
    def body(where: OfficeLocation, index: Index, gate: Gate) -> int:
        if args.recording:
            record = open_record(index, gate, args.recording, Action.VIEW_METADATA, detail="holds")
            holds = holds_of(index, record.recording_id)
        else:
            gate.allow(Action.SEARCH, detail="holds in force")
            with index.transaction(False) as q:
                ids = [r[0] for r in q("SELECT DISTINCT recording_id FROM holds "
                                       "WHERE released_at IS NULL ORDER BY recording_id", ())]  # fmt: skip
            holds = []
            for rid in ids:
                found = index.get(rid)
                if found is not None and gate.may(Action.VIEW_METADATA, found):
                    holds += [h for h in holds_of(index, rid) if h.active]
        for h in holds:
            _print_hold(h)
        if not holds:
            print("no holds")
        return 0

    return run_as_account(args, body)


def add_lifecycle_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Register ``retention plan|run`` and ``hold set|release|list``."""
    common = [office_options()]
    p = subparsers.add_parser(
        "retention", help="what the retention policies delete: plan, or run the purge"
    )
    sub = p.add_subparsers(dest="retention_command", required=True)
    q = sub.add_parser(
        "plan",
        parents=common,
        help="show what the next run would delete (nothing is deleted)",
        description="List the recordings the next retention run would delete, with the "
        "policy and reason (--all: the kept ones too). Acts as a named account; only "
        "recordings it may see are listed.",
    )
    q.add_argument("--at", help="judge as at this time (ISO 8601; default now)")
    q.add_argument("--all", action="store_true", help="list kept recordings too")
    q.add_argument("--json", action="store_true", help="one JSON document")
    q.set_defaults(func=run_plan)
    q = sub.add_parser(
        "run",
        parents=common,
        help="delete what has expired and is not on hold (the timer's job)",
        description="Delete every recording past its policy's days and not on legal hold; "
        "each deletion is a ledger tombstone by 'retention'. The office's own job (no "
        "account): run it as the office's service user.",
    )
    q.add_argument("--at", help=argparse.SUPPRESS)  # judge as at another time (tests)
    q.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    q.set_defaults(func=run_purge_command)

    p = subparsers.add_parser("hold", help="legal holds: set, release, list")
    sub = p.add_subparsers(dest="hold_command", required=True)
    for name, verb, run in (
        ("set", "put a recording on legal hold for a case", run_hold_set),
        ("release", "release a recording's hold for a case", run_hold_release),
    ):
        q = sub.add_parser(
            name, parents=common, help=verb, description=f"{verb.capitalize()} (compliance role)."
        )
        q.add_argument("recording", help="recording id (or a unique prefix)")
        q.add_argument("--case", required=True, help="the case reference, e.g. CASE-2026-17")
        q.add_argument("--reason", required=True, help="why (kept in the hold's history)")
        q.set_defaults(func=run)
    q = sub.add_parser("list", parents=common, help="a recording's holds, or all in force")
    q.add_argument("recording", nargs="?", help="recording id (or a unique prefix)")
    q.set_defaults(func=run_hold_list)
