"""``linetap-office`` query commands: ``ls``/``search``, ``show``, ``export``, ``verify``.

Each ``cmd_*`` function takes an open :class:`~headoffice.index.Index` (and
:class:`~headoffice.store.BlobStore` where it reads blobs), prints for people (aligned
tables) or, with ``as_json``, one JSON document for scripts, and returns the exit code:
0 success, 1 an error (one line on ``err``, never a traceback) or, for ``verify``,
problems found. :func:`add_query_commands` registers them on an argparse sub-parser set.

The data behind them is available without printing: :func:`export_recording`,
:func:`verify_store`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
import tempfile
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt
import soundfile
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from headoffice.config import (
    CONFIG_ENV,
    DEFAULT_CONFIG,
    INDEX_ENV,
    STORE_ENV,
    OfficeLocation,
    resolve_office,
)
from headoffice.index import Index, PendingUpload, StoredRecord, open_index, row_from_manifest
from headoffice.store import BlobStore, StoreError
from sealedrec.age import AgeError, AgeReader, decrypt_bytes, load_identities
from sealedrec.errors import LinetapError
from sealedrec.manifest import ManifestError, manifest_hash, verify_chain, verify_signature
from sealedrec.segments import JournalFormatError, iter_segments
from sealedrec.verify import decode_audio

DeviceKeys = Callable[[str], Ed25519PublicKey] | Mapping[str, Ed25519PublicKey]

# Plaintext suffixes that take a codec's stream as it is (no re-encoding).
NATIVE_SUFFIXES = {"flac": (".flac",), "opus": (".opus", ".ogg")}
WRITE_FORMATS = {".wav": "WAV", ".flac": "FLAC"}


class QueryError(LinetapError, ValueError):
    """A query command cannot do what was asked (no such recording, bad output name…)."""


# --------------------------------------------------------------------------- output

# Unicode categories never printed as they are: control characters (C0, DEL, C1), format
# characters (bidi embeddings/overrides/isolates U+202A-202E and U+2066-2069, LRM/RLM,
# zero-width characters, tag characters), lone surrogates (not encodable), line and
# paragraph separators.
_UNPRINTED = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _escape_char(c: str) -> str:
    if unicodedata.category(c) not in _UNPRINTED:
        return c
    code = ord(c)
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else f"\\U{code:08x}"
    )


def terminal_safe(text: object) -> str:
    """``text`` for a terminal: every control, format (bidi) and separator character as
    an escape (ESC as ``\\x1b``, U+202E as ``\\u202e``). Manifests are written by the
    devices: a caller name must not move the cursor, clear the screen or reverse a line.
    Every human-readable line of ls/search, show and verify goes through this."""
    s = str(text)
    if s.isprintable():  # the usual case; isprintable() is False for all of _UNPRINTED
        return s
    return "".join(_escape_char(c) for c in s)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned; every cell escaped
    with :func:`terminal_safe`."""
    cells = [[("" if v is None else terminal_safe(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    numeric = [
        bool(rows) and all(isinstance(r[i], int) and not isinstance(r[i], bool) for r in rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(widths[i]) if numeric[i] else v.ljust(widths[i]) for i, v in enumerate(values)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(r) for r in cells)])


def format_duration(ms: int) -> str:
    seconds = round(ms / 1000)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _short_time(iso: str | None) -> str:
    return "" if not iso else iso[:19].replace("T", " ")


def _caller(record: StoredRecord) -> str:
    return " ".join(p for p in (record.caller_number, record.caller_name) if p)


def _flags(record: StoredRecord) -> str:
    return ",".join(
        f for f, on in (("recovered", record.recovered), ("discarded", record.discarded)) if on
    )


def _json(out: TextIO, payload: Any) -> None:
    # ensure_ascii: every non-ASCII character as \\uXXXX, so no raw control, bidi or lone
    # surrogate character from a manifest reaches a terminal or breaks the encoding; any
    # JSON parser reads back the exact strings.
    out.write(json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=True) + "\n")


def _fail(err: TextIO, exc: BaseException | str) -> int:
    if isinstance(exc, OSError) and not isinstance(exc, LinetapError) and exc.filename:
        text = f"{exc.filename}: {exc.strerror or exc}"
    else:
        text = " ".join(str(exc).split()) or type(exc).__name__
    err.write(f"linetap-office: error: {terminal_safe(text)}\n")
    return 1


def _streams(out: TextIO | None, err: TextIO | None) -> tuple[TextIO, TextIO]:
    return out or sys.stdout, err or sys.stderr


def _lookup(index: Index, rec: str) -> StoredRecord:
    """A recording by id or by an unambiguous id prefix."""
    record = index.get(rec)
    if record is not None:
        return record
    matches = index.find(rec, limit=2) if len(rec) >= 4 else []
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise QueryError(f"recording id prefix {rec!r} is ambiguous; give more of the id")
    raise QueryError(f"no recording {rec!r} in the index")


# --------------------------------------------------------------------------- ls / search


def cmd_ls(
    index: Index,
    *,
    store: BlobStore | None = None,
    device: str | None = None,
    line: str | None = None,
    since: str | None = None,
    until: str | None = None,
    caller: str | None = None,
    digits: str | None = None,
    min_duration_ms: int | None = None,
    max_duration_ms: int | None = None,
    recovered: bool | None = None,
    limit: int = 1000,
    pending: bool = False,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """List stored recordings matching the filters (``pending``: uploads in progress)."""
    out, err = _streams(out, err)
    try:
        if pending:
            return _ls_pending(index, store, device, as_json, out)
        records = index.search(
            device=device,
            line=line,
            since=since,
            until=until,
            caller=caller,
            digits=digits,
            min_duration_ms=min_duration_ms,
            max_duration_ms=max_duration_ms,
            recovered=recovered,
            limit=limit,
        )
    except (LinetapError, OSError) as exc:
        return _fail(err, exc)
    if as_json:
        _json(out, {"count": len(records), "recordings": [r.as_dict() for r in records]})
        return 0
    if not records:
        out.write("no recordings match\n")
        return 0
    rows = [
        [
            _short_time(r.started_utc),
            r.device_id,
            r.line,
            r.seq,
            format_duration(r.duration_ms),
            r.direction or "",
            _caller(r),
            r.dialled_digits,
            _flags(r),
            r.recording_id,
        ]
        for r in records
    ]
    headers = ["STARTED (UTC)", "DEVICE", "LINE", "SEQ", "DURATION", "DIRECTION", "CALLER"]
    out.write(format_table([*headers, "DIGITS", "FLAGS", "RECORDING"], rows) + "\n")
    more = " (the limit; narrow the search or raise --limit)" if len(records) >= limit else ""
    out.write(f"{len(records)} recording{'s' if len(records) != 1 else ''}{more}\n")
    return 0


def _received(upload: PendingUpload, store: BlobStore | None) -> int:
    if store is None:
        return upload.received
    try:
        return len(store.parked(upload.device_id, upload.recording_id))
    except StoreError:
        return upload.received


def _ls_pending(
    index: Index, store: BlobStore | None, device: str | None, as_json: bool, out: TextIO
) -> int:
    uploads = index.uploads(device)
    items: list[dict[str, Any]] = []
    for u in uploads:
        manifest = u.init.get("manifest")
        seq = manifest.get("seq") if isinstance(manifest, dict) else None
        items.append(
            {
                "device_id": u.device_id,
                "recording_id": u.recording_id,
                "seq": seq,
                "chunk_count": u.chunk_count,
                "received": _received(u, store),
                "blob_bytes": u.init.get("blob_bytes"),
                "updated_at": u.updated_at,
            }
        )
    if as_json:
        _json(out, {"count": len(items), "uploads": items})
        return 0
    if not items:
        out.write("no uploads in progress\n")
        return 0
    rows = [
        [
            i["device_id"],
            i["seq"],
            f"{i['received']}/{i['chunk_count']}",
            i["blob_bytes"],
            _short_time(str(i["updated_at"])),
            i["recording_id"],
        ]
        for i in items
    ]
    out.write(
        format_table(["DEVICE", "SEQ", "CHUNKS", "BYTES", "UPDATED (UTC)", "RECORDING"], rows)
        + "\n"
    )
    return 0


# --------------------------------------------------------------------------- show


def cmd_show(
    index: Index,
    rec: str,
    *,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Everything the index knows about one recording (id or unique id prefix)."""
    out, err = _streams(out, err)
    try:
        record = _lookup(index, rec)
    except (LinetapError, OSError) as exc:
        return _fail(err, exc)
    m = record.manifest
    if as_json:
        _json(out, {"record": record.as_dict(), "manifest": m})
        return 0
    caller = m.get("caller_id") or {}
    consent = ", ".join(
        f"{e.get('type')}@{e.get('audio_ms', e.get('at_ms', '?'))}ms"
        for e in m.get("consent_events") or []
    )
    audio = (
        f"{record.codec} in {record.container}, {record.blob_bytes} bytes, "
        f"sha256 {record.blob_sha256}"
        if record.container
        else "none"
    )
    fields = [
        ("recording", record.recording_id),
        ("device", f"{record.device_id} (seq {record.seq}, key {m.get('device_key_id', '?')})"),
        ("line", f"{record.line} (channel {m.get('channel', '?')})"),
        ("started", record.started_utc),
        ("ended", record.ended_utc or "(not recorded)"),
        (
            "duration",
            f"{format_duration(record.duration_ms)} ({m.get('audio_frames', '?')} frames "
            f"at {m.get('sample_rate', '?')} Hz)",
        ),
        ("trigger", f"{m.get('trigger', '?')} -> {m.get('end_reason', '?')}"),
        ("direction", record.direction or ""),
        (
            "caller",
            f"{_caller(record)} ({caller.get('source', '?')})" if _caller(record) else "",
        ),
        ("dialled", record.dialled_digits),
        ("masked", str(len(m.get("masked_spans") or [])) + " span(s)"),
        ("consent", consent or "none"),
        ("audio", audio),
        ("flags", _flags(record) or "none"),
        ("path", record.path),
        ("stored", record.stored_at),
    ]
    width = max(len(k) for k, _ in fields)
    out.writelines(f"{k.ljust(width)}  {terminal_safe(v) or '-'}\n" for k, v in fields)
    return 0


# --------------------------------------------------------------------------- decrypting


def _blob_path(store: BlobStore, record: StoredRecord) -> Path:
    return store.resolve(record.path)


def _check_blob(path: Path, record: StoredRecord) -> list[str]:
    """Problems of a blob against its manifest (size, SHA-256)."""
    rec = record.recording_id
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as fh:
            while block := fh.read(1024 * 1024):
                digest.update(block)
                size += len(block)
    except OSError as exc:
        return [f"recording {rec}: blob {path} unreadable ({exc.strerror or exc})"]
    problems = []
    want_bytes = record.manifest.get("blob_bytes")
    if size != want_bytes:
        problems.append(f"recording {rec}: blob is {size} bytes, the manifest says {want_bytes}")
    if digest.hexdigest() != record.manifest.get("blob_sha256"):
        problems.append(
            f"recording {rec}: blob sha256 differs from the manifest (altered or corrupt)"
        )
    return problems


def _age_plaintext(path: Path, identities: Sequence[X25519PrivateKey]) -> bytes:
    with open(path, "rb") as fh:
        return AgeReader(fh, identities).read()


def decrypt_samples(
    path: Path, container: str, identities: Sequence[X25519PrivateKey]
) -> npt.NDArray[np.int16]:
    """The recording's samples: one age file (FLAC or Opus inside), or a segments journal
    whose every record is an age file holding a FLAC."""
    if container == "age":
        return decode_audio(_age_plaintext(path, identities))
    parts = []
    with open(path, "rb") as fh:
        for segment, _ in iter_segments(fh):
            parts.append(decode_audio(decrypt_bytes(segment.payload, identities)))
    return np.concatenate(parts) if parts else np.zeros(0, np.int16)


@dataclass(frozen=True, slots=True)
class ExportResult:
    path: Path
    frames: int  # -1: written as it was sealed, not decoded
    sample_rate: int
    format: str


@contextmanager
def _atomic_output(output: Path) -> Iterator[Path]:
    """A temp file beside ``output`` (mode 0600: plain audio) renamed onto it on success."""
    directory = output.parent if str(output.parent) else Path(".")
    fd, name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)


def export_recording(
    index: Index,
    store: BlobStore,
    rec: str,
    identities: Sequence[X25519PrivateKey],
    output: Path,
) -> ExportResult:
    """Decrypt a stored recording to ``output``: ``.wav`` (16-bit PCM) or ``.flac``
    for any recording; ``.flac`` / ``.opus`` / ``.ogg`` matching the sealed codec is the
    sealed stream itself, bit for bit."""
    record = _lookup(index, rec)
    rid = record.recording_id
    suffix = output.suffix.lower()
    if record.container is None:
        raise QueryError(f"recording {rid} has no audio (discarded, or cut before any was synced)")
    native = record.container == "age" and suffix in NATIVE_SUFFIXES.get(record.codec or "", ())
    if not native and suffix not in WRITE_FORMATS:
        raise QueryError(
            f"output {output}: use a .wav or .flac name"
            + (" (or .opus / .ogg for this Opus recording)" if record.codec == "opus" else "")
        )
    path = _blob_path(store, record)
    problems = _check_blob(path, record)
    if problems:
        raise QueryError(problems[0] + "; run 'linetap-office verify'")
    rate = int(record.manifest.get("sample_rate", 0))
    try:
        with _atomic_output(output) as tmp:
            if native:
                tmp.write_bytes(_age_plaintext(path, identities))
                return ExportResult(output, -1, rate, suffix[1:])
            samples = decrypt_samples(path, record.container, identities)
            soundfile.write(tmp, samples, rate, subtype="PCM_16", format=WRITE_FORMATS[suffix])
            return ExportResult(output, int(samples.shape[0]), rate, WRITE_FORMATS[suffix])
    except (AgeError, JournalFormatError, RuntimeError) as exc:
        raise QueryError(f"recording {rid}: cannot decrypt/decode: {exc}") from exc


def cmd_export(
    index: Index,
    store: BlobStore,
    rec: str,
    *,
    identity: Path,
    output: Path,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    out, err = _streams(out, err)
    try:
        identities = load_identities(identity)
        result = export_recording(index, store, rec, identities, output)
    except (LinetapError, OSError) as exc:
        return _fail(err, exc)
    if result.frames >= 0:
        seconds = result.frames / result.sample_rate if result.sample_rate else 0.0
        out.write(
            f"wrote {result.path}: {result.format}, {seconds:.2f} s at {result.sample_rate} Hz\n"
        )
    else:
        out.write(f"wrote {result.path}: the sealed {result.format} stream\n")
    return 0


# --------------------------------------------------------------------------- verify


@dataclass
class RecordCheck:
    recording_id: str
    device_id: str
    seq: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class VerifyReport:
    recordings: list[RecordCheck] = field(default_factory=list)
    chain: list[dict[str, Any]] = field(
        default_factory=list
    )  # device_id, seq, recording_id, message

    @property
    def ok(self) -> bool:
        return not self.chain and all(r.ok for r in self.recordings)

    def as_dict(self) -> dict[str, Any]:
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
            "chain": self.chain,
        }


def _device_key(device_keys: DeviceKeys, device: str) -> Ed25519PublicKey:
    try:
        if isinstance(device_keys, Mapping):
            return device_keys[device]
        return device_keys(device)
    except KeyError:
        raise QueryError(f"no public key known for device {device}") from None


def _check_record(
    record: StoredRecord,
    store: BlobStore,
    key: Ed25519PublicKey | None,
    key_problem: str | None,
    identities: Sequence[X25519PrivateKey],
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
    if record.container is None:
        if not (
            manifest.get("discarded")
            or (manifest.get("recovered") and manifest.get("audio_frames") == 0)
        ):
            problems.append(f"recording {rid}: no audio and not marked discarded")
        return check, manifest
    path = _blob_path(store, record)
    blob_problems = _check_blob(path, record)
    problems.extend(blob_problems)
    if identities and not any("unreadable" in p for p in blob_problems):
        try:
            samples = decrypt_samples(path, record.container, identities)
        except (AgeError, JournalFormatError, RuntimeError) as exc:
            problems.append(f"recording {rid}: cannot decrypt/decode: {exc}")
            return check, manifest
        if samples.shape[0] != manifest.get("audio_frames"):
            problems.append(
                f"recording {rid}: {samples.shape[0]} frames decoded, the manifest says "
                f"{manifest.get('audio_frames')}"
            )
        expected = manifest.get("audio_pcm_sha256")
        pcm_sha = hashlib.sha256(samples.astype("<i2").tobytes()).hexdigest()
        if expected and manifest.get("codec") == "flac" and pcm_sha != expected:
            problems.append(f"recording {rid}: decoded audio differs from the signed hash")
    return check, manifest


def verify_store(
    index: Index,
    store: BlobStore,
    device_keys: DeviceKeys,
    *,
    device: str | None = None,
    identities: Sequence[X25519PrivateKey] = (),
) -> VerifyReport:
    """Check every stored recording (of ``device``): manifest signature against the
    device's key, index against store, blob size and SHA-256, each device's seq / hash
    chain, and — with ``identities`` — the decrypted audio against the signed hashes."""
    report = VerifyReport()
    states = {d.device_id: d for d in index.devices()}
    if device is not None and device not in states:
        raise QueryError(f"device {device!r} has no recordings in the index")
    devices = [device] if device is not None else sorted(states)
    for dev in devices:
        try:
            key: Ed25519PublicKey | None = _device_key(device_keys, dev)
            key_problem = None
        except (LinetapError, OSError, ValueError) as exc:
            key, key_problem = None, str(exc)
        manifests = []
        records = index.all_for_device(dev)
        for record in records:
            check, manifest = _check_record(record, store, key, key_problem, identities)
            report.recordings.append(check)
            manifests.append(manifest)
        for problem in verify_chain(manifests):
            report.chain.append(
                {
                    "device_id": dev,
                    "seq": problem.seq,
                    "recording_id": problem.recording_id,
                    "message": f"device {dev}: {problem.message}",
                }
            )
        state = states.get(dev)
        top = max((r.seq for r in records), default=0)
        if state is not None and state.last_seq > top:
            first = top + 1
            span = f"seq {first}" if first == state.last_seq else f"seq {first}-{state.last_seq}"
            report.chain.append(
                {
                    "device_id": dev,
                    "seq": state.last_seq,
                    "recording_id": None,
                    "message": f"device {dev}: {span} missing at the end (the index received up to seq {state.last_seq})",
                }
            )
        elif state is not None and records and state.last_seq == top:
            latest = [m for m in manifests if m.get("seq") == top]
            if latest and all(manifest_hash(m) != state.last_manifest_sha256 for m in latest):
                report.chain.append(
                    {
                        "device_id": dev,
                        "seq": top,
                        "recording_id": latest[0].get("recording_id"),
                        "message": f"device {dev}: the manifest of seq {top} is not the one received",
                    }
                )
    return report


def cmd_verify(
    index: Index,
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
    out, err = _streams(out, err)
    try:
        identities = load_identities(identity) if identity is not None else []
        report = verify_store(index, store, device_keys, device=device, identities=identities)
    except (LinetapError, OSError) as exc:
        return _fail(err, exc)
    if as_json:
        _json(out, report.as_dict())
        return 0 if report.ok else 1
    rows = [[r.device_id, r.seq, r.recording_id, p] for r in report.recordings for p in r.problems]
    rows += [
        [c["device_id"], c["seq"], c["recording_id"] or "", c["message"]] for c in report.chain
    ]
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


# --------------------------------------------------------------------------- argparse


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
    :class:`~firmware.errors.ConfigError` (exit status 2)."""
    return resolve_office(
        getattr(args, "config", None), getattr(args, "store", None), getattr(args, "index", None)
    )


def _open_store(root: Path) -> BlobStore:
    if not root.is_dir():
        raise QueryError(f"no blob store at {root}; give --config office.toml or --root DIR")
    return BlobStore(root)


def _run(args: argparse.Namespace, body: Callable[[OfficeLocation, Index], int]) -> int:
    where = office_location(args)  # ConfigError: run_command prints it, exit status 2
    try:
        index = open_index(where.index_url)
    except (LinetapError, OSError) as exc:
        return _fail(sys.stderr, exc)
    try:
        return body(where, index)
    except (LinetapError, OSError) as exc:
        return _fail(sys.stderr, exc)
    finally:
        index.close()


def _seconds_ms(value: float | None) -> int | None:
    return None if value is None else round(value * 1000)


def run_ls(args: argparse.Namespace) -> int:
    def body(where: OfficeLocation, index: Index) -> int:
        store = BlobStore(where.root) if args.pending and where.root.is_dir() else None
        return cmd_ls(
            index,
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

    return _run(args, body)


def run_show(args: argparse.Namespace) -> int:
    return _run(args, lambda _where, index: cmd_show(index, args.recording, as_json=args.json))


def run_export(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda where, index: cmd_export(
            index,
            _open_store(where.root),
            args.recording,
            identity=args.identity,
            output=args.output,
        ),
    )


def enrolled_device_keys(root: Path) -> Callable[[str], Ed25519PublicKey]:
    """The signing keys recorded when devices were enrolled in the office root."""
    from headoffice.enroll import device_signing_key

    return lambda device: device_signing_key(root, device)


def run_verify(args: argparse.Namespace) -> int:
    def keys(where: OfficeLocation) -> DeviceKeys:
        if args.device_keys is not None:
            return device_keys_from_dir(args.device_keys)
        return enrolled_device_keys(where.root)

    return _run(
        args,
        lambda where, index: cmd_verify(
            index,
            _open_store(where.root),
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

    p = subparsers.add_parser(
        "ls", aliases=["search"], parents=common, help="list or search stored recordings"
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

    p = subparsers.add_parser("show", parents=common, help="one recording's details")
    p.add_argument("recording", help="recording id (or a unique prefix)")
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.set_defaults(func=run_show)

    p = subparsers.add_parser("export", parents=common, help="decrypt a recording to a file")
    p.add_argument("recording", help="recording id (or a unique prefix)")
    p.add_argument(
        "--identity", "-i", type=Path, required=True, help="age identity file (age-keygen)"
    )
    p.add_argument(
        "--output", "-o", type=Path, required=True, help="out.wav or out.flac (.opus for Opus)"
    )
    p.set_defaults(func=run_export)

    p = subparsers.add_parser(
        "verify", parents=common, help="check signatures, blobs and sequence chains"
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
