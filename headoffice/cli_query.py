"""``linetap-office`` query commands on the command line: ``ls``/``search``, ``show``,
``export``, ``verify``.

The commands themselves are :mod:`headoffice.query` (ls, show), :mod:`headoffice.export`
and :mod:`headoffice.storeverify`; this module turns ``--config`` / ``--root`` /
``--index`` into an open index and store (one resolver for every office command:
:func:`office_location`) and registers the sub-commands (:func:`add_query_commands`).

Every query command acts as a named account: it logs in with
:func:`headoffice.access.cli_actor` (``$LINETAP_OFFICE_USER`` / ``$LINETAP_OFFICE_PASSWORD``
/ ``$LINETAP_OFFICE_TOTP``, or asked on a terminal) and goes through one
:class:`~headoffice.access.Gate`: each access is authorized and appended to the audit
ledger before anything is shown or written. A refused login or access is one line on
stderr, exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from headoffice.access import PASSWORD_ENV, TOTP_ENV, USER_ENV, Gate, cli_actor
from headoffice.blobstore import BlobStore
from headoffice.config import (
    CONFIG_ENV,
    DEFAULT_CONFIG,
    INDEX_ENV,
    STORE_ENV,
    OfficeConfig,
    OfficeLocation,
    resolve_office,
)
from headoffice.export import cmd_export
from headoffice.index import Index, open_index
from headoffice.printing import fail
from headoffice.query import QueryError, cmd_ls, cmd_show
from headoffice.stores import open_store
from headoffice.storeverify import (
    DeviceKeys,
    cmd_verify,
    device_keys_from_dir,
    enrolled_device_keys,
)
from sealedrec.errors import LinetapError


def office_options(*, index: bool = True) -> argparse.ArgumentParser:
    """``--config`` (the primary form), ``--root`` (alias ``--store``) and, with ``index``,
    ``--index``, as a parent parser (``add_help=False``) for every linetap-office command.
    :func:`office_location` turns them into the store root and index URL."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--config",
        type=Path,
        metavar="OFFICE_TOML",
        help=f"the office config: store root and index from it (default ${CONFIG_ENV}, "
        f"else {DEFAULT_CONFIG})",
    )
    parent.add_argument(
        "--root",
        "--store",
        dest="store",
        type=Path,
        metavar="DIR",
        help=f"the office root (blob store, CA, keys) without a config (or ${STORE_ENV}); "
        "overrides the config's root",
    )
    if index:
        parent.add_argument(
            "--index",
            help=f"index URL: sqlite:///path or postgresql://… (default: the config's, or "
            f"${INDEX_ENV} with --root, else sqlite:///ROOT/index.sqlite3)",
        )
    return parent


def office_location(args: argparse.Namespace) -> OfficeLocation:
    """The root and index URL named by ``--config`` / ``--root`` / ``--index`` (see
    :func:`headoffice.config.resolve_office`); a missing or bad config raises
    :class:`~runtime.errors.ConfigError` (exit status 2)."""
    return resolve_office(
        getattr(args, "config", None), getattr(args, "store", None), getattr(args, "index", None)
    )


def office_store(where: OfficeLocation) -> BlobStore:
    """The blob store of the office ``--config`` / ``--root`` name (a clear error when
    there is no office there), for every command that reads or changes stored calls."""
    root = where.root
    if not root.is_dir():
        raise QueryError(f"no blob store at {root}; give --config office.toml or --root DIR")
    return open_store(where.config, root)


def office_config(where: OfficeLocation) -> OfficeConfig:
    """The office's settings (accounts, sites): its config's, or the defaults for a store
    named by ``--root`` alone."""
    return where.config if where.config is not None else OfficeConfig(root=where.root)


def run_as_account(
    args: argparse.Namespace, body: Callable[[OfficeLocation, Index, Gate], int]
) -> int:
    """Open the office ``args`` name, log in as its account, and run ``body`` with one
    gate; any refusal or error is one line on stderr and exit status 1."""
    where = office_location(args)  # ConfigError: run_command prints it, exit status 2
    try:
        index = open_index(where.index_url)
    except (LinetapError, OSError) as exc:
        return fail(sys.stderr, exc)
    try:
        cfg = office_config(where)
        gate = Gate(index, cfg, cli_actor(cfg, index))  # AccessDenied: one line, status 1
        return body(where, index, gate)
    except (LinetapError, OSError) as exc:
        return fail(sys.stderr, exc)
    finally:
        index.close()


def _seconds_ms(value: float | None) -> int | None:
    return None if value is None else round(value * 1000)


def run_ls(args: argparse.Namespace) -> int:
    def body(where: OfficeLocation, index: Index, gate: Gate) -> int:
        store = (
            open_store(where.config, where.root) if args.pending and where.root.is_dir() else None
        )
        return cmd_ls(
            index,
            gate,
            store=store,
            device=args.device,
            line=args.line,
            since=args.since,
            until=args.until,
            caller=args.caller,
            digits=args.digits,
            min_duration_ms=_seconds_ms(args.min_duration),
            max_duration_ms=_seconds_ms(args.max_duration),
            recovered=args.recovered,
            limit=args.limit,
            pending=args.pending,
            as_json=args.json,
        )

    return run_as_account(args, body)


def run_show(args: argparse.Namespace) -> int:
    return run_as_account(
        args,
        lambda _where, index, gate: cmd_show(index, gate, args.recording, as_json=args.json),
    )


def run_export(args: argparse.Namespace) -> int:
    return run_as_account(
        args,
        lambda where, index, gate: cmd_export(
            index,
            gate,
            office_store(where),
            args.recording,
            identity=args.identity,
            output=args.output,
        ),
    )


def run_verify(args: argparse.Namespace) -> int:
    def keys(where: OfficeLocation) -> DeviceKeys:
        if args.device_keys is not None:
            return device_keys_from_dir(args.device_keys)
        return enrolled_device_keys(where.root)

    return run_as_account(
        args,
        lambda where, index, gate: cmd_verify(
            index,
            gate,
            office_store(where),
            keys(where),
            device=args.device,
            identity=args.identity,
            as_json=args.json,
        ),
    )


def add_query_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    parents: Sequence[argparse.ArgumentParser] | None = None,
) -> None:
    """Register ``ls`` (alias ``search``), ``show``, ``export`` and ``verify``; each sets
    ``func(args) -> int``. ``parents`` must provide what :func:`office_location` reads
    (default: :func:`office_options`)."""
    common = list(parents) if parents is not None else [office_options()]
    who = (
        f"Acts as the account named by ${USER_ENV} / ${PASSWORD_ENV} (and ${TOTP_ENV} for a "
        "role that needs a one-time code), or asks on a terminal; the access is authorized "
        "and written to the audit ledger before anything is shown."
    )

    p = subparsers.add_parser(
        "ls",
        aliases=["search"],
        parents=common,
        help="list or search stored recordings",
        description="List or search the stored recordings the account may see (right "
        f"search, then view_metadata on each; one ledger entry per search). {who}",
    )
    p.add_argument("--device", help="only this device")
    p.add_argument("--line", help="only this line (e.g. line1)")
    p.add_argument("--since", help="started at or after (ISO 8601, UTC if no offset)")
    p.add_argument("--until", help="started before (ISO 8601; a date means its midnight)")
    p.add_argument("--caller", help="caller number or name contains this")
    p.add_argument("--digits", help="dialled digits contain this")
    p.add_argument("--min-duration", type=float, metavar="SECONDS")
    p.add_argument("--max-duration", type=float, metavar="SECONDS")
    rec = p.add_mutually_exclusive_group()
    rec.add_argument("--recovered", dest="recovered", action="store_const", const=True)
    rec.add_argument("--not-recovered", dest="recovered", action="store_const", const=False)
    p.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    p.add_argument("--pending", action="store_true", help="uploads in progress instead")
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.set_defaults(func=run_ls)

    p = subparsers.add_parser(
        "show",
        parents=common,
        help="one recording's details",
        description="One recording's details (right view_metadata on it; a recording out "
        f"of the account's scope is 'not found', as an unknown one). {who}",
    )
    p.add_argument("recording", help="recording id (or a unique prefix)")
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.set_defaults(func=run_show)

    p = subparsers.add_parser(
        "export",
        parents=common,
        help="decrypt a recording to a file",
        description="Decrypt a recording to a file (right export on it: supervisor or "
        "compliance, within scope). Refused, or when the ledger cannot take the entry: "
        f"nothing is written. {who}",
    )
    p.add_argument("recording", help="recording id (or a unique prefix)")
    p.add_argument(
        "--identity", "-i", type=Path, required=True, help="age identity file (age-keygen)"
    )
    p.add_argument(
        "--output", "-o", type=Path, required=True, help="out.wav or out.flac (.opus for Opus)"
    )
    p.set_defaults(func=run_export)

    p = subparsers.add_parser(
        "verify",
        parents=common,
        help="check signatures, blobs and sequence chains",
        description="Check signatures, blobs and sequence chains of every device whose "
        "recordings the account may all see (right search, and view_metadata on each "
        "recording: an auditor or an office-wide supervisor checks every device; other "
        "devices are left out). With --identity the audio is decrypted too, which needs "
        "the export right on every recording checked (each decryption is a ledger "
        f"entry); an auditor verifies without --identity. {who}",
    )
    p.add_argument("--device", help="only this device")
    p.add_argument(
        "--device-keys",
        type=Path,
        metavar="DIR",
        help="directory of device public keys, DEVICE.pub (base64 or PEM); "
        "default: the keys enrolled in the store root",
    )
    p.add_argument(
        "--identity", "-i", type=Path, help="also decrypt and check the audio with this key"
    )
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.set_defaults(func=run_verify)
