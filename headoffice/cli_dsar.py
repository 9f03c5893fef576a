"""``linetap-office dsar access|erase`` and ``linetap-office anonymise``.

- ``dsar access --number N | --name TEXT --ref REQ --output subject.zip``: every
  recording about the caller (rules: :mod:`headoffice.dsar`) as a ZIP of decrypted WAVs
  with ``recordings.csv``/``.json`` and a ``README.txt`` (compliance: the ``export``
  right, within scope).
- ``dsar erase --number N | --name TEXT --ref REQ [--dry-run] [--json]``: delete them,
  except those on legal hold, under mandatory retention or refused by the store; each
  kept one is listed with why (the ``delete`` right). Exit status 1 when one failed.
- ``anonymise [ls's filters] --output train.zip``: the anonymised training export
  (:mod:`headoffice.anonymise`; the ``export`` right).

All act as a named account (as ``ls``), write each recording's ledger leaf before its
bytes, print progress on stderr (``[3/40] …``), and write their ZIP through a temp file
beside it (0600), renamed once whole: an existing output is refused unless ``--force``,
and a full disk leaves nothing behind. The office identity is ``ROOT/keys/office.key``
unless ``--identity`` names another. No match is an error (exit status 1), as is a
refused login.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from headoffice.access import Gate
from headoffice.anonymise import DEFAULT_LIMIT, Anonymiser, find_for_training
from headoffice.cli_query import office_config, office_options, office_store, run_as_account
from headoffice.config import OfficeLocation
from headoffice.dsar import (
    DsarError,
    DsarRequest,
    ErasureReport,
    Fate,
    Subject,
    access_zip,
    check_ref,
    erase,
    find_subject,
)
from headoffice.exportzip import AudioSource, RecordingsZip, write_zip_file
from headoffice.index import Index
from headoffice.officeroot import CaLayout
from headoffice.printing import terminal_safe
from headoffice.query import QueryError
from headoffice.web.notes import NoteStore
from headoffice.web.search import SearchFilters, SearchParameterError
from sealedrec.age import load_identities

__all__ = ["add_dsar_commands"]


def _source(where: OfficeLocation, identity: Path | None) -> AudioSource:
    key = identity if identity is not None else CaLayout(where.root).office_key

    def identities() -> Sequence[X25519PrivateKey]:
        return load_identities(key)

    return AudioSource(where.root, identities)


def _say(text: str) -> None:
    print(terminal_safe(text), file=sys.stderr, flush=True)


def _progress(n: int, total: int, rid: str, status: str, detail: str = "") -> str:
    return f"[{n}/{total}] {rid} {status}" + (f": {detail}" if detail else "")


def _request(args: argparse.Namespace, where: OfficeLocation, gate: Gate) -> DsarRequest:
    subject = Subject.parse(args.number, args.name, exact=args.exact)
    office = office_config(where).web.office_name
    return DsarRequest(
        check_ref(args.ref), subject, gate.actor.principal.name, datetime.now(UTC), office
    )


def _no_match(request: DsarRequest) -> DsarError:
    return DsarError(
        f"no recording in your scope matches the {request.subject.describe()}; nothing was "
        "done (check the number or name, or --exact)"
    )


def run_access(args: argparse.Namespace) -> int:
    def body(where: OfficeLocation, index: Index, gate: Gate) -> int:
        request = _request(args, where, gate)
        if args.output.exists() and not args.force:  # before any ledger leaf or decryption
            raise QueryError(f"{args.output} exists: give another name, or --force to replace it")
        records = find_subject(index, gate, request, "access")
        if not records:
            raise _no_match(request)
        store, source = office_store(where), _source(where, args.identity)

        def fill(out: RecordingsZip) -> list[str]:
            statuses = []
            items = access_zip(out, request, records, store=store, gate=gate, source=source)
            for n, item in enumerate(items, 1):
                _say(_progress(n, len(records), item.recording_id, item.status, item.detail))
                statuses.append(item.status)
            return statuses

        statuses = write_zip_file(args.output, fill, force=args.force)
        done = statuses.count("exported")
        left = len(statuses) - done
        print(
            f"wrote {args.output}: {done} of {len(statuses)} recordings for {request.ref}"
            + (f"; {left} left out (listed in recordings.csv with why)" if left else "")
        )
        return 0 if done else 1

    return run_as_account(args, body)


def _print_report(report: ErasureReport) -> None:
    for item in report.items:
        until = f" (until {item.until})" if item.until else ""
        print(terminal_safe(f"{item.fate.value:12}  {item.recording_id}  {item.started_utc[:19]}"
                            f"  {item.device_id}/{item.line}  {item.reason}{until}"))  # fmt: skip
    verb = "would delete" if report.dry_run else "deleted"
    fate = Fate.WOULD_DELETE if report.dry_run else Fate.DELETED
    failed = report.count(Fate.FAILED)
    print(
        f"{report.request.ref}: {report.count(fate)} {verb}, {report.count(Fate.KEPT)} kept"
        + (f", {failed} failed (run it again)" if failed else "")
        + (" — a dry run: nothing was deleted" if report.dry_run else "")
    )


def run_erase(args: argparse.Namespace) -> int:
    def body(where: OfficeLocation, index: Index, gate: Gate) -> int:
        request = _request(args, where, gate)
        purpose = "erasure dry run" if args.dry_run else "erasure"
        records = find_subject(index, gate, request, purpose)
        if not records:
            raise _no_match(request)
        cfg = office_config(where)
        report = erase(
            request, records, index=index, store=office_store(where), gate=gate,
            retention=cfg.retention, sites=cfg.sites, dry_run=args.dry_run,
            progress=lambda n, total, rid, fate: _say(_progress(n, total, rid, fate)),
        )  # fmt: skip
        if args.json:
            print(json.dumps(report.as_json(), indent=2))
        else:
            _print_report(report)
        return 1 if report.count(Fate.FAILED) else 0

    return run_as_account(args, body)


def _filters(args: argparse.Namespace) -> SearchFilters:
    given = {
        "since": args.since, "until": args.until, "site": args.site, "device": args.device,
        "line": args.line, "direction": args.direction, "caller": args.caller,
        "digits": args.digits, "min_duration": args.min_duration,
        "max_duration": args.max_duration,
        "recovered": None if args.recovered is None else str(args.recovered).lower(),
    }  # fmt: skip
    try:
        return SearchFilters.from_query({k: str(v) for k, v in given.items() if v is not None})
    except SearchParameterError as exc:
        name = exc.parameter.replace("_", "-")
        message = str(exc).replace(f"search parameter {exc.parameter!r}", f"--{name}")
        raise QueryError(message) from None


def run_anonymise(args: argparse.Namespace) -> int:
    def body(where: OfficeLocation, index: Index, gate: Gate) -> int:
        filters = _filters(args)
        if args.output.exists() and not args.force:
            raise QueryError(f"{args.output} exists: give another name, or --force to replace it")
        records = find_for_training(index, gate, filters, args.limit)
        if not records:
            raise QueryError("no recording in your scope matches the search; nothing written")
        store, source, notes = office_store(where), _source(where, args.identity), NoteStore(index)

        def fill(out: RecordingsZip) -> list[str]:
            statuses = []
            anon = Anonymiser.fresh()
            items = anon.zip(out, records, store=store, gate=gate, source=source, notes=notes)
            for n, item in enumerate(items, 1):
                _say(_progress(n, len(records), item.recording_id, item.status, item.detail))
                for warning in item.warnings:
                    _say(f"  warning: {item.recording_id}: {warning}")
                statuses.append(item.status)
            return statuses

        statuses = write_zip_file(args.output, fill, force=args.force)
        done = statuses.count("exported")
        left = len(statuses) - done
        print(
            f"wrote {args.output}: {done} anonymised recordings"
            + (f"; {left} left out (see above)" if left else "")
        )
        return 0 if done else 1

    return run_as_account(args, body)


def _subject_options(p: argparse.ArgumentParser) -> None:
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--number", help="the caller's number, any format (+41 44 555 01 01)")
    who.add_argument("--name", help="the caller's name, or part of it (any case)")
    p.add_argument(
        "--exact", action="store_true", help="numbers: the same digits only (no ending match)"
    )
    p.add_argument("--ref", required=True, help="the request's reference, e.g. REQ-2026-17")


def _output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", "-o", type=Path, required=True, help="the ZIP to write")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument(
        "--identity", "-i", type=Path, help="age identity (default: ROOT/keys/office.key)"
    )


def add_dsar_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Register ``dsar access|erase`` and ``anonymise``."""
    common = [office_options()]
    p = subparsers.add_parser("dsar", help="data-subject requests: access, erase")
    sub = p.add_subparsers(dest="dsar_command", required=True)
    q = sub.add_parser(
        "access",
        parents=common,
        help="every recording about a caller, as a ZIP",
        description="Every recording about a caller (by number or name) in your scope, "
        "as a ZIP of decrypted WAVs, recordings.csv/.json and a README (compliance: the "
        "export right). Each recording is an export entry in the audit ledger before "
        "it is written.",
    )
    _subject_options(q)
    _output_options(q)
    q.set_defaults(func=run_access)
    q = sub.add_parser(
        "erase",
        parents=common,
        help="delete every recording about a caller (not held or retained)",
        description="Delete every recording about a caller (by number or name) in your "
        "scope, except those on legal hold, under mandatory retention ([retention] "
        "min_days) or refused by the store: each one is listed with what became of it "
        "and why. Each deletion is a ledger tombstone naming the request.",
    )
    _subject_options(q)
    q.add_argument("--dry-run", action="store_true", help="show what would happen; delete nothing")
    q.add_argument("--json", action="store_true", help="one JSON document")
    q.set_defaults(func=run_erase)

    p = subparsers.add_parser(
        "anonymise",
        aliases=["anonymize"],
        parents=common,
        help="an anonymised export for training (ZIP of WAVs and a CSV)",
        description="The recordings of a search (ls's filters) as a ZIP for training: no "
        "caller number or name, dialled digits, device or line (pseudonyms per export), "
        "times shifted by a random offset and rounded to the minute, the pre-roll, "
        "masked key presses and spans marked sensitive silenced (the export right).",
    )
    p.add_argument("--since", help="started at or after (ISO 8601, UTC if no offset)")
    p.add_argument("--until", help="started before (ISO 8601; a date means its midnight)")
    p.add_argument("--site", help="only this site's devices")
    p.add_argument("--device", help="only this device")
    p.add_argument("--line", help="only this line (e.g. line1)")
    p.add_argument("--direction", choices=["inbound", "outbound", "unknown"])
    p.add_argument("--caller", help="caller number or name contains this")
    p.add_argument("--digits", help="dialled digits contain this")
    p.add_argument("--min-duration", type=int, metavar="SECONDS")
    p.add_argument("--max-duration", type=int, metavar="SECONDS")
    rec = p.add_mutually_exclusive_group()
    rec.add_argument("--recovered", dest="recovered", action="store_const", const=True)
    rec.add_argument("--not-recovered", dest="recovered", action="store_const", const=False)
    p.add_argument(
        "--limit", type=int, default=DEFAULT_LIMIT, help=f"at most this many ({DEFAULT_LIMIT})"
    )
    _output_options(p)
    p.set_defaults(func=run_anonymise)
