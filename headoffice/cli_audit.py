"""``linetap-office audit``: the audit ledger on the command line.

::

    linetap-office audit keygen --name ORIGIN --key PATH     (once, as root)
    linetap-office audit checkpoint [--key PATH] [--out FILE]  (the checkpoint timer)
    linetap-office audit verify [--checkpoint FILE ...] [--no-blobs] [--no-worm] [--json]
    linetap-office audit proof REC -o DIR
    linetap-office audit log [--from N] [--limit N] [--json]

``checkpoint`` signs with the ledger key, which only its own unit can read (systemd
``LoadCredential``: ``$CREDENTIALS_DIRECTORY/ledger-key``). ``verify``, ``proof`` and
``log`` act as a named account with the ``read_audit`` right, and each use is itself a
leaf of the ledger (appended before anything is shown). With ``[audit] worm_bucket``,
``checkpoint`` also writes each checkpoint there (write-once, COMPLIANCE retention) and
``verify`` checks the ledger against every one found there (headoffice/ledger/worm.py).
See headoffice/AUDIT.md.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from headoffice.access import Gate, cli_actor
from headoffice.authz import Action
from headoffice.cli_query import office_location, office_options
from headoffice.config import OfficeConfig
from headoffice.index import Index, open_index
from headoffice.ledger.audit import KeptCheckpoint, audit
from headoffice.ledger.checkpoint import (
    AuditError,
    keygen,
    load_verifier,
    make_checkpoint,
    proof_bundle,
)
from headoffice.ledger.store import Ledger
from headoffice.ledger.worm import open_worm
from headoffice.printing import terminal_safe
from headoffice.stores import open_store

CREDENTIAL = "ledger-key"


def _config(args: argparse.Namespace) -> tuple[OfficeConfig, str]:
    where = office_location(args)
    return where.config or OfficeConfig(root=where.root), where.index_url


def _signer_path(args: argparse.Namespace) -> Path:
    if args.key is not None:
        return Path(args.key)
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds:
        return Path(creds) / CREDENTIAL
    raise AuditError(
        "no ledger key: pass --key PATH (the checkpoint unit gets it as the systemd "
        f"credential {CREDENTIAL!r})"
    )


def cmd_keygen(args: argparse.Namespace) -> int:
    cfg, _ = _config(args)
    keys = keygen(args.name, Path(args.key), cfg.root)
    print(f"ledger key (private, for the checkpoint unit only): {keys.signer}")
    print(f"verifier key (public, give it to auditors): {keys.verifier}")
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    cfg, url = _config(args)
    signer = _signer_path(args).read_text(encoding="utf-8")
    origin = load_verifier(cfg.root).name
    worm = open_worm(cfg)  # checked before signing: a misconfigured bucket fails first
    with open_index(url) as index:
        row = make_checkpoint(Ledger(index), origin, signer)
    if args.out is not None:
        Path(args.out).write_text(row.note, encoding="utf-8")
    print(f"checkpoint of {row.tree_size} leaves, root {row.root_sha256}")
    if worm is not None:
        written = worm.put(row.tree_size, row.note)
        print(
            f"{'already in' if written.already else 'written to'} the WORM bucket: "
            f"s3://{worm.bucket}/{written.key} (COMPLIANCE until "
            f"{written.retain_until.date().isoformat()})"
        )
    return 0


def _gate(cfg: OfficeConfig, index: Index) -> Gate:
    return Gate(index, cfg, cli_actor(cfg, index))


def cmd_verify(args: argparse.Namespace) -> int:
    cfg, url = _config(args)
    verifier = load_verifier(cfg.root)
    external = [
        KeptCheckpoint(str(p), Path(p).read_text(encoding="utf-8")) for p in args.checkpoint
    ]
    with open_index(url) as index:
        _gate(cfg, index).allow(Action.READ_AUDIT, detail="audit verify")
        worm = None if args.no_worm else open_worm(cfg)
        from_worm = worm.kept() if worm is not None else []
        store = None if args.no_blobs else open_store(cfg, cfg.root)
        report = audit(
            index, store, origin=verifier.name, vkey=verifier, external=[*external, *from_worm]
        )
    if args.json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "leaves": report.leaves,
                    "checkpoints": report.checkpoints,
                    "worm_checkpoints": len(from_worm),
                    "recordings": report.recordings,
                    "blobs": report.blobs,
                    "problems": [{"where": p.where, "message": p.message} for p in report.problems],
                },
                indent=2,
            )
        )
    else:
        for problem in report.problems:
            print(f"FAIL  {terminal_safe(str(problem))}")
        print(
            f"{'OK' if report.ok else 'FAILED'}: {report.leaves} leaves, "
            f"{report.checkpoints} checkpoints"
            + (f" ({len(from_worm)} from {worm.url})" if worm is not None else "")
            + f", {report.recordings} recordings, "
            f"{report.blobs} blobs checked"
            + (
                f"; first problem: {terminal_safe(str(report.problems[0]))}"
                if report.problems
                else ""
            )
        )
    return 0 if report.ok else 1


def cmd_proof(args: argparse.Namespace) -> int:
    cfg, url = _config(args)
    with open_index(url) as index:
        record = index.get(args.recording)
        gate = _gate(cfg, index)
        gate.allow(Action.READ_AUDIT, detail=f"audit proof {args.recording}")
        if record is not None:
            gate.allow(Action.VIEW_METADATA, record, detail="evidence bundle")
        out = proof_bundle(
            index,
            open_store(cfg, cfg.root),
            cfg.root,
            args.recording,
            Path(args.out),
            origin=load_verifier(cfg.root).name,
        )
    print(f"evidence bundle: {out} (check it with: python3 {out / 'verify_bundle.py'} {out})")
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    cfg, url = _config(args)
    with open_index(url) as index:
        _gate(cfg, index).allow(Action.READ_AUDIT, detail="audit log")
        end = None if args.limit is None else args.start + args.limit
        for row in Ledger(index).rows(args.start, end):
            if args.json:
                print(json.dumps({"idx": row.idx, "leaf": json.loads(row.body)}))
            else:
                print(f"{row.idx:>8}  {row.appended_at}  {terminal_safe(row.body.decode())}")
    return 0


def add_audit_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    where = office_options()
    audit_p = sub.add_parser("audit", help="the audit ledger: verify, checkpoint, proof, log")
    cmds = audit_p.add_subparsers(dest="audit_command", required=True)

    p = cmds.add_parser("keygen", parents=[where], help="make the ledger key (once)")
    p.add_argument(
        "--name", required=True, help="the log's name (origin), e.g. acme.example/ledger"
    )
    p.add_argument("--key", required=True, help="where the private key goes (root only, 0600)")
    p.set_defaults(func=cmd_keygen)

    p = cmds.add_parser("checkpoint", parents=[where], help="sign and keep a checkpoint")
    p.add_argument("--key", help=f"the ledger key (default: the systemd credential {CREDENTIAL})")
    p.add_argument("--out", help="also write the signed checkpoint to this file")
    p.set_defaults(func=cmd_checkpoint)

    p = cmds.add_parser("verify", parents=[where], help="prove the ledger complete and unaltered")
    p.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="FILE",
        help="a checkpoint kept elsewhere, checked as well (repeatable)",
    )
    p.add_argument("--no-blobs", action="store_true", help="skip hashing the stored blobs")
    p.add_argument(
        "--no-worm",
        action="store_true",
        help="skip the checkpoints in the [audit] worm_bucket (read and checked by default)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = cmds.add_parser("proof", parents=[where], help="an evidence bundle for one recording")
    p.add_argument("recording")
    p.add_argument("-o", "--out", required=True, help="a new directory for the bundle")
    p.set_defaults(func=cmd_proof)

    p = cmds.add_parser("log", parents=[where], help="list the ledger's leaves")
    p.add_argument("--from", dest="start", type=int, default=0)
    p.add_argument("--limit", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_log)


__all__ = ["add_audit_commands"]
