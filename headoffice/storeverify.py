"""``linetap-office verify``: the store proven against the devices' signatures.

For every stored recording (of one device, or all): the manifest's signature against the
device's key (the store's copy and, if it differs, the index's), the index's columns
against the signed manifest, and the recording itself through the one verifier of the
format (:func:`sealedrec.verify.check_recording`: blob size and SHA-256, and with an
office identity the decrypted audio against the signed hashes). Per device, the seq /
hash chain, and its end against what the index received last.

Access: verifying is a search of the office (one ``search`` leaf, authorized and logged
first) that reads the metadata of every recording it checks, so it checks whole devices
whose every recording the account may see the metadata of (an auditor's or an
office-wide supervisor's: all of them); other devices are left out, as if absent.
Decrypting the audio (``--identity``) needs the ``export`` right on each recording
(supervisor or compliance, within scope): it is checked for all of them before anything
is decrypted, and each decryption is an ``export`` leaf of its own, appended before it.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from headoffice.access import Gate
from headoffice.authz import Action, Target, authorize
from headoffice.blobstore import BlobStore, StoreError
from headoffice.index import DeviceState, Index, StoredRecord, row_from_manifest
from headoffice.officeroot import device_signing_key
from headoffice.printing import fail, format_table, streams, write_json
from headoffice.query import QueryError
from sealedrec.age import load_identities
from sealedrec.errors import LinetapError
from sealedrec.manifest import (
    ChainStub,
    ManifestError,
    manifest_hash,
    verify_chain,
    verify_signature,
)
from sealedrec.verify import check_recording

DeviceKeys = Callable[[str], Ed25519PublicKey] | Mapping[str, Ed25519PublicKey]


@dataclass
class RecordCheck:
    recording_id: str
    device_id: str
    seq: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class ChainProblem:
    """A problem of a device's sequence (gap, replay, broken link, missing end)."""

    device_id: str
    seq: int | None
    recording_id: str | None
    message: str

    def as_dict(self) -> dict[str, str | int | None]:
        return {
            "device_id": self.device_id,
            "seq": self.seq,
            "recording_id": self.recording_id,
            "message": self.message,
        }


@dataclass
class VerifyReport:
    recordings: list[RecordCheck] = field(default_factory=list)
    chain: list[ChainProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.chain and all(r.ok for r in self.recordings)

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "checked": len(self.recordings),
            "problems": sum(len(r.problems) for r in self.recordings) + len(self.chain),
            "recordings": [
                {
                    "recording_id": r.recording_id,
                    "device_id": r.device_id,
                    "seq": r.seq,
                    "ok": r.ok,
                    "problems": r.problems,
                }
                for r in self.recordings
            ],
            "chain": [c.as_dict() for c in self.chain],
        }


def _device_key(device_keys: DeviceKeys, device: str) -> Ed25519PublicKey:
    try:
        if isinstance(device_keys, Mapping):
            return device_keys[device]
        return device_keys(device)
    except KeyError:
        raise QueryError(f"no public key known for device {device}") from None


def _check_manifest(
    record: StoredRecord, manifest: dict[str, Any], key: Ed25519PublicKey | None, key_problem: str
) -> list[str]:
    """The signatures of the stored manifest (and of the index's copy, if it differs), and
    the index's columns against the signed manifest."""
    rid = record.recording_id
    problems = []
    if key is None:
        problems.append(f"recording {rid}: {key_problem}")
    else:
        copies = [("", manifest)]
        if manifest != record.manifest:
            copies.append((" (index copy)", record.manifest))
        for which, m in copies:
            try:
                verify_signature(m, key)
            except ManifestError as exc:
                problems.append(f"{exc}{which}")
    try:
        derived = row_from_manifest(record.manifest)
    except ManifestError as exc:
        problems.append(f"recording {rid}: {exc}")
    else:
        stale = [k for k, v in derived.items() if getattr(record, k) != v]
        if stale:
            problems.append(
                f"recording {rid}: index columns {', '.join(stale)} differ from the signed manifest"
            )
    return problems


def _check_record(
    record: StoredRecord,
    store: BlobStore,
    key: Ed25519PublicKey | None,
    key_problem: str,
    *,
    identities: Sequence[X25519PrivateKey],
    gate: Gate,
) -> tuple[RecordCheck, dict[str, Any]]:
    """One recording's problems, and the manifest its chain is checked with."""
    rid = record.recording_id
    check = RecordCheck(rid, record.device_id, record.seq)
    problems = check.problems
    try:
        manifest = store.stored_manifest(record.path)
    except StoreError as exc:
        problems.append(f"recording {rid}: {exc}")
        manifest = record.manifest
    else:
        if manifest != record.manifest:
            problems.append(
                f"recording {rid}: the index's copy of the manifest differs from the store's"
            )
    problems += _check_manifest(record, manifest, key, key_problem)
    if record.container is None:
        problems += check_recording(manifest, None)
    else:
        if identities:
            gate.allow(Action.EXPORT, record, detail="verify: audio decrypted, checked, not kept")
        with store.local_blob(record.path) as blob:
            problems += check_recording(manifest, blob, identities)
    return check, manifest


def _end_of_chain(
    dev: str,
    state: DeviceState | None,
    records: list[StoredRecord],
    manifests: list[dict[str, Any]],
    stubs: list[ChainStub],
) -> list[ChainProblem]:
    """The chain's end against the newest seq and manifest the index received."""
    top = max([r.seq for r in records] + [t.seq for t in stubs], default=0)
    end_stub = next((t for t in stubs if t.seq == top), None)
    if state is not None and end_stub is not None and state.last_seq == top:
        if end_stub.manifest_sha256 == state.last_manifest_sha256:
            return []
        message = f"the deleted manifest of seq {top} is not the one received"
        return [ChainProblem(dev, top, end_stub.recording_id, f"device {dev}: {message}")]
    if state is not None and state.last_seq > top:
        first = top + 1
        span = f"seq {first}" if first == state.last_seq else f"seq {first}-{state.last_seq}"
        message = f"{span} missing at the end (the index received up to seq {state.last_seq})"
        return [ChainProblem(dev, state.last_seq, None, f"device {dev}: {message}")]
    if state is not None and records and state.last_seq == top:
        latest = [m for m in manifests if m.get("seq") == top]
        if latest and all(manifest_hash(m) != state.last_manifest_sha256 for m in latest):
            message = f"the manifest of seq {top} is not the one received"
            rid = latest[0].get("recording_id")
            return [ChainProblem(dev, top, rid, f"device {dev}: {message}")]
    return []


def verify_store(
    index: Index,
    store: BlobStore,
    device_keys: DeviceKeys,
    *,
    gate: Gate,
    device: str | None = None,
    identities: Sequence[X25519PrivateKey] = (),
) -> VerifyReport:
    """Check every stored recording (of ``device``) of the devices the account may see
    whole (see the module docstring): manifest signature against the device's key, index
    against store, blob size and SHA-256, each device's seq / hash chain, and — with
    ``identities`` — the decrypted audio against the signed hashes."""
    what = f"verify{f' device={device}' if device else ''}{' with audio' if identities else ''}"
    gate.allow(Action.SEARCH, detail=what)
    report = VerifyReport()
    states = {d.device_id: d for d in index.devices()}
    plan = _visible_devices(index, gate, [device] if device is not None else sorted(states))
    if device is not None and (device not in states or not plan):
        raise QueryError(f"device {device!r} has no recordings in the index")
    if identities:
        for record in (r for records in plan.values() for r in records):
            if record.container is not None and not gate.may(Action.EXPORT, record):
                gate.allow(Action.EXPORT, record, detail="verify: audio not decrypted")  # raises
    for dev, records in plan.items():
        key: Ed25519PublicKey | None = None
        key_problem = ""
        try:
            key = _device_key(device_keys, dev)
        except (LinetapError, OSError, ValueError) as exc:
            key_problem = str(exc)
        manifests = []
        for record in records:
            check, manifest = _check_record(
                record, store, key, key_problem, identities=identities, gate=gate
            )
            report.recordings.append(check)
            manifests.append(manifest)
        stubs = index.chain_stubs(dev)  # deleted recordings keep their place in the chain
        chain: list[Mapping[str, Any] | ChainStub] = [*manifests, *stubs]
        for problem in verify_chain(sorted(chain, key=lambda m: int(m.get("seq") or 0))):
            report.chain.append(
                ChainProblem(
                    dev, problem.seq, problem.recording_id, f"device {dev}: {problem.message}"
                )
            )
        report.chain += _end_of_chain(dev, states.get(dev), records, manifests, stubs)
    return report


def _visible_devices(index: Index, gate: Gate, devices: list[str]) -> dict[str, list[StoredRecord]]:
    """The devices (with their recordings) whose every recording the account may see the
    metadata of; a device without recordings when the account's scope covers the device."""
    plan = {}
    for dev in devices:
        records = index.all_for_device(dev)
        if records:
            whole = all(gate.may(Action.VIEW_METADATA, r) for r in records)
        else:
            target = Target(dev, "")
            whole = authorize(
                gate.actor.principal, Action.VIEW_METADATA, target, gate.sites
            ).allowed
        if whole:
            plan[dev] = records
    return plan


def cmd_verify(
    index: Index,
    gate: Gate,
    store: BlobStore,
    device_keys: DeviceKeys,
    *,
    device: str | None = None,
    identity: Path | None = None,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """0 when every check passes, 1 when any fails (or verification cannot run)."""
    out, err = streams(out, err)
    try:
        identities = load_identities(identity) if identity is not None else []
        report = verify_store(
            index, store, device_keys, gate=gate, device=device, identities=identities
        )
    except (LinetapError, OSError) as exc:
        return fail(err, exc)
    if as_json:
        write_json(out, report.as_dict())
        return 0 if report.ok else 1
    rows = [[r.device_id, r.seq, r.recording_id, p] for r in report.recordings for p in r.problems]
    rows += [[c.device_id, c.seq, c.recording_id or "", c.message] for c in report.chain]
    devices = len({r.device_id for r in report.recordings})
    checked = f"{len(report.recordings)} recording(s) of {devices} device(s)"
    audio = ", audio decrypted" if identity is not None else ""
    if report.ok:
        out.write(f"verified {checked}{audio}: all good\n")
        return 0
    out.write(format_table(["DEVICE", "SEQ", "RECORDING", "PROBLEM"], rows) + "\n")
    out.write(f"checked {checked}{audio}: {len(rows)} problem(s)\n")
    return 1


# --------------------------------------------------------------------------- device keys


def device_keys_from_dir(directory: Path) -> Callable[[str], Ed25519PublicKey]:
    """Device public keys as ``{directory}/{device}.pub``: the base64 raw key (as the
    device prints it) or a PEM public key."""

    def lookup(device: str) -> Ed25519PublicKey:
        path = directory / f"{device}.pub"
        try:
            text = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise QueryError(f"no public key for device {device}: {path} not found") from None
        try:
            if text.startswith("-----BEGIN"):
                key = serialization.load_pem_public_key(text.encode())
            else:
                key = Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
        except ValueError as exc:
            raise QueryError(f"{path}: not an Ed25519 public key ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise QueryError(f"{path}: not an Ed25519 public key")
        return key

    return lookup


def enrolled_device_keys(root: Path) -> Callable[[str], Ed25519PublicKey]:
    """The signing keys recorded when devices were enrolled in the office root."""
    return lambda device: device_signing_key(root, device)
