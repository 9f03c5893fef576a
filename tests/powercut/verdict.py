"""What survived the power cuts, judged against the promises (DESIGN.md, promise 2).

The card is read back without mounting it: the data partition extracted from the disk
image, checked with e2fsck and listed/dumped with debugfs. The head office's store is
read as files. Every recording is verified (signature, blob hashes, decrypted audio),
placed on the boot and call it came from, and compared with the line's file.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from buffers.outbox import parse_entry_name
from firmware.events import parse_events
from headoffice.store import BLOB_SUFFIXES, MANIFEST_SUFFIX
from sealedrec.manifest import ManifestError, verify_chain, verify_signature
from sealedrec.verify import check_recording, decrypt_samples, verify_entry
from tests.powercut.boots import ACKED_RE, RECORDING_STARTED_RE, SEALED_RE, BootRecord
from tests.vm import debugfs, extract, partitions

CARD_DIRS = (
    "journal",
    "outbox/tmp",
    "outbox/sealed",
    "outbox/uploading",
    "outbox/acked",
    "outbox/deleted",
)
UPLOADED_OR_GONE = (None, "outbox/acked", "outbox/deleted")
# Plain audio as it starts on disk: each pattern is 6-8 fixed bytes, so a match in
# ciphertext (or in the noise of freed blocks) is practically impossible.
PLAIN_AUDIO = {
    "WAV": re.compile(rb"RIFF....WAVE", re.S),
    "FLAC": re.compile(rb"fLaC[\x00\x80]\x00\x00\x22"),
    "Ogg": re.compile(rb"OggS\x00[\x00-\x07]"),
}
SCAN_CHUNK = 16 * 1024 * 1024
BLOCK = 4096  # the data partition's block size (image/genimage.cfg)


@dataclass(frozen=True)
class Call:
    number: int  # 0-based, in the order of the line's events
    offhook_s: float
    onhook_s: float


def read_calls(events: Path) -> list[Call]:
    parsed = parse_events(events.read_text(), str(events))
    offs = [e.t_s for e in parsed if e.event == "offhook"]
    ons = [e.t_s for e in parsed if e.event == "onhook"]
    return [Call(i, a, b) for i, (a, b) in enumerate(zip(offs, ons, strict=True))]


# -- the card after each cut -------------------------------------------------------------


@dataclass
class CardState:
    where: dict[str, str]  # recording id -> the directory it is in
    fsck_problems: list[str]
    files: dict[str, bytes]  # the files asked for that exist (path on the partition)


def _names(listing: str) -> list[str]:
    """Entry names from ``debugfs ls -p`` (``/inode/mode/uid/gid/name/size/``)."""
    names = []
    for line in listing.splitlines():
        parts = line.split("/")
        if len(parts) >= 7 and parts[5] not in {".", ".."}:
            names.append(parts[5])
    return names


def _fsck(fs: Path, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["e2fsck", mode, str(fs)], capture_output=True, text=True, timeout=600, check=False
    )


def read_card(
    disk: Path, scratch: Path, *, after_cut: bool, fetch: Sequence[str] = ()
) -> CardState:
    """The data partition's recordings by directory, e2fsck's verdict on it, and the
    files ``fetch`` names.

    ``after_cut``: the ext4 journal needs recovery, as at the next boot; on a scratch
    copy (the disk is not touched) e2fsck -fp does what systemd-fsck does then (replays
    the journal, fixes only what is safe, e.g. the superblock's free counts, which ext4
    does not keep exact) and must succeed; -fn must then find nothing. After a clean
    power-off, -fn alone must pass.
    """
    fs = extract(disk, partitions(disk)[2], scratch)
    try:
        problems = []
        if after_cut:
            preen = _fsck(fs, "-fp")
            if preen.returncode >= 4:
                problems.append(f"e2fsck -fp exit {preen.returncode}: {preen.stdout.strip()}")
        check = _fsck(fs, "-fn")
        if check.returncode != 0:
            found = [ln.strip() for ln in check.stdout.splitlines() if "?" in ln]
            problems.append(f"e2fsck -fn exit {check.returncode}: {'; '.join(found)[:2000]}")
        where: dict[str, str] = {}
        for directory in CARD_DIRS:
            for name in _names(debugfs(fs, f"ls -p /{directory}")):
                parsed = parse_entry_name(name)
                where[parsed[1] if parsed and directory != "journal" else name] = directory
        files = {}
        for path in fetch:
            out = scratch.with_suffix(".file")
            out.unlink(missing_ok=True)
            debugfs(fs, f"dump /{path} {out}")
            if out.exists():
                files[path] = out.read_bytes()
                out.unlink()
    finally:
        fs.unlink(missing_ok=True)
    return CardState(where, problems, files)


def durability_problems(
    boot: BootRecord, state: CardState, sealed: set[str], acked: set[str], at_office: set[str]
) -> list[str]:
    """What a daemon said it had done before the cut must still be done after it: an
    entry the recorder reported sealed is in the outbox, one the uploader reported acked
    is acked (or, both, deleted by retention after its ack).

    A sealed entry may be gone without a reported ack when the office stored it: the
    uploader marked it acked, the cut took its log line (the console runs behind the
    guest), and retention deleted it at a later boot. Only the office's copy makes that
    innocent; the final check still wants every recording there exactly once."""
    problems = []
    for rid in sorted(acked):
        if state.where.get(rid) not in UPLOADED_OR_GONE:
            problems.append(
                f"cut {boot.number}: {rid} was acked before the cut, and is back in "
                f"{state.where[rid]}/ after it (an outbox rename was not durable)"
            )
    for rid in sorted(sealed - acked):
        place = state.where.get(rid)
        if place is None and rid in at_office:
            continue
        if place is None or place in {"journal", "outbox/tmp"}:
            problems.append(
                f"cut {boot.number}: {rid} was sealed into the outbox before the cut, and is "
                f"{'gone' if place is None else 'back in ' + place + '/'} after it"
            )
    return problems


def reported(boots: Iterable[BootRecord]) -> tuple[set[str], set[str]]:
    """Recording ids the recorder reported sealed and the uploader reported acked."""
    sealed: set[str] = set()
    acked: set[str] = set()
    for b in boots:
        sealed.update(b.ids(SEALED_RE))
        acked.update(b.ids(ACKED_RE, 2))
    return sealed, acked


# -- plain audio -------------------------------------------------------------------------


def plain_audio(fs: Path) -> list[str]:
    """Every place on the partition (used or free blocks, the ext4 journal) where a WAV,
    FLAC or Ogg stream begins, with the file that owns it."""
    found: set[tuple[str, int]] = set()
    with fs.open("rb") as fh:
        base = 0
        tail = b""  # a pattern may straddle two chunks: the next one starts with this
        while chunk := fh.read(SCAN_CHUNK):
            data = tail + chunk
            for kind, pattern in PLAIN_AUDIO.items():
                found.update((kind, base - len(tail) + m.start()) for m in pattern.finditer(data))
            tail = data[-16:]
            base += len(chunk)
    out = []
    for kind, offset in sorted(found, key=lambda f: f[1]):
        block = offset // BLOCK
        inode = re.search(rf"^{block}\s+(\d+)", debugfs(fs, f"icheck {block}"), re.M)
        owner = "a free block"
        if inode:
            path = re.search(
                rf"^{inode.group(1)}\s+(\S+)", debugfs(fs, f"ncheck {inode.group(1)}"), re.M
            )
            owner = path.group(1) if path else f"inode {inode.group(1)}"
        out.append(f"plain {kind} audio at byte {offset} of the data partition ({owner})")
    return out


# -- recordings --------------------------------------------------------------------------


@dataclass
class Recording:
    rid: str
    manifest: dict[str, Any]
    samples: npt.NDArray[np.int16]
    places: list[str]
    problems: list[str] = field(default_factory=list)


def card_recordings(
    dump: Path, device_key: Ed25519PublicKey, identities: Sequence[X25519PrivateKey]
) -> dict[str, Recording]:
    """The outbox's recordings (rdump'ed to ``dump``), each verified and decrypted."""
    found: dict[str, Recording] = {}
    for state in ("sealed", "uploading", "acked"):
        for entry in sorted((dump / "outbox" / state).glob("*/manifest.json")):
            report = verify_entry(entry.parent, device_key, identities)
            manifest = report.manifest or {}
            rid = str(manifest.get("recording_id", entry.parent.name))
            samples = np.zeros(0, np.int16)
            if manifest.get("container"):
                blob = entry.parent / f"recording.{manifest['container']}"
                samples = decrypt_samples(blob, manifest["container"], identities)
            found[rid] = Recording(rid, manifest, samples, [f"card {state}"], report.problems)
    return found


def office_recordings(
    root: Path, device: str, device_key: Ed25519PublicKey, identities: Sequence[X25519PrivateKey]
) -> dict[str, Recording]:
    """The office store's recordings of ``device``, each verified and decrypted."""
    found: dict[str, Recording] = {}
    for path in sorted((root / "blobs" / device).rglob(f"*{MANIFEST_SUFFIX}")):
        manifest = json.loads(path.read_text())
        rid = path.name.removesuffix(MANIFEST_SUFFIX)
        problems = []
        try:
            verify_signature(manifest, device_key)
        except ManifestError as exc:
            problems.append(str(exc))
        container = manifest.get("container")
        blob = path.parent / f"{rid}{BLOB_SUFFIXES[container]}" if container else None
        problems += check_recording(manifest, blob, identities)
        samples = np.zeros(0, np.int16)
        if blob is not None:
            samples = decrypt_samples(blob, container, identities)
        found[rid] = Recording(rid, manifest, samples, ["office"], problems)
    return found


def merge(*sources: Mapping[str, Recording]) -> tuple[dict[str, Recording], list[str]]:
    """One entry per recording id; a recording kept in two places must be the same."""
    merged: dict[str, Recording] = {}
    problems = []
    for source in sources:
        for rid, rec in source.items():
            if rid not in merged:
                merged[rid] = rec
                continue
            if merged[rid].manifest != rec.manifest:
                problems.append(f"{rid}: the card's and the office's manifests differ")
            merged[rid].places += rec.places
    return merged, problems


def chain_problems(recordings: Iterable[Recording]) -> list[str]:
    manifests = sorted((r.manifest for r in recordings), key=lambda m: int(m.get("seq", 0)))
    return [f"chain: seq {p.seq} ({p.recording_id}): {p.message}" for p in verify_chain(manifests)]


# -- placing recordings on the line and measuring what the cuts lost --------------------


@dataclass
class Placed:
    rec: Recording
    boot: int
    call: int | None
    start: int | None  # frame of the line's file where the recording begins
    end: int | None


def _utc(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def find_start(samples: npt.NDArray[np.int16], line: npt.NDArray[np.int16]) -> int | None:
    """Where in the line's file ``samples`` are, exactly; None if nowhere."""
    if samples.shape[0] < 4:
        return None
    hits = np.flatnonzero(
        (line[:-3] == samples[0])
        & (line[1:-2] == samples[1])
        & (line[2:-1] == samples[2])
        & (line[3:] == samples[3])
    )
    for start in hits:
        stop = start + samples.shape[0]
        if stop <= line.shape[0] and np.array_equal(line[start:stop], samples):
            return int(start)
    return None


def place(  # noqa: PLR0917 - the recordings, the line, and where each came from
    recordings: Mapping[str, Recording],
    line: npt.NDArray[np.int16],
    calls: Sequence[Call],
    boots: Sequence[BootRecord],
    offsets: Mapping[int, float],
    rate: int,
) -> tuple[list[Placed], list[str]]:
    """Each recording's boot (its start time, guest clock mapped by that boot's offset)
    and call (where its audio sits in the line's file, which must match exactly)."""
    placed, problems = [], []
    for rec in recordings.values():
        started = _utc(rec.manifest["started_utc"])
        boots_in = [
            b.number
            for b in boots
            if b.started_utc - 2 <= started + offsets[b.number] <= b.ended_utc + 2
        ]
        if len(boots_in) != 1:
            problems.append(f"{rec.rid}: started at {started:.1f} (guest clock): boots {boots_in}")
            continue
        start = find_start(rec.samples, line)
        call = None
        if start is not None:
            call = next(
                (c.number for c in calls if c.offhook_s - 10 <= start / rate <= c.onhook_s), None
            )
        elif rec.samples.shape[0]:
            problems.append(f"{rec.rid}: its audio is not the line's audio at any offset")
        end = None if start is None else start + rec.samples.shape[0]
        placed.append(Placed(rec, boots_in[0], call, start, end))
    return placed, problems


@dataclass
class CutLoss:
    boot: int
    lost_s: float | None  # None: no call was under way or ended unsealed at the cut
    detail: str
    unread_s: float = 0.0  # of it, what the emulated recorder had not yet read (its lag)

    @property
    def judged_s(self) -> float:
        """What the cut lost of the audio the recorder had read: what the promise bounds."""
        return (self.lost_s or 0.0) - self.unread_s


def losses(
    placed: Sequence[Placed], calls: Sequence[Call], boots: Sequence[BootRecord], rate: int
) -> tuple[list[CutLoss], list[str]]:
    """Per cut, the audio of the call it hit that no recording holds: from the call's
    off-hook (the pre-roll is the line before the call) to the cut, or to the call's end
    if it had ended; and the exactly-once and completeness checks per boot and call."""
    problems: list[str] = []
    ends: dict[int, set[tuple[int | None, int | None]]] = {}
    for p in placed:
        if p.call is not None and not p.rec.manifest["recovered"]:
            ends.setdefault(p.call, set()).add((p.start, p.end))
    for number, spans in sorted(ends.items()):
        if len(spans) != 1:
            problems.append(f"call {number + 1}: complete recordings differ in extent: {spans}")
    full = {c: next(iter(s)) for c, s in ends.items()}
    out = []
    for boot in boots:
        cut = boot.cut_position_s
        worst: CutLoss | None = None
        for call in calls:
            mine = [p for p in placed if p.boot == boot.number and p.call == call.number]
            if len(mine) > 1:
                problems.append(
                    f"boot {boot.number}, call {call.number + 1}: {len(mine)} recordings "
                    f"({', '.join(p.rec.rid for p in mine)})"
                )
            if boot.plan is None:
                if len(mine) != 1 or mine[0].rec.manifest["recovered"]:
                    problems.append(
                        f"boot {boot.number} (no cut), call {call.number + 1}: not one "
                        f"complete recording: {[p.rec.rid for p in mine]}"
                    )
                continue
            if cut is None or cut <= call.offhook_s or call.number not in full:
                continue
            full_end = full[call.number][1]
            assert full_end is not None
            intended = min(cut, full_end / rate)
            got = max((p.end / rate for p in mine if p.end is not None), default=call.offhook_s)
            lost = max(0.0, intended - max(got, call.offhook_s))
            for p in mine:
                if not p.rec.manifest["recovered"] and (p.start, p.end) != full[call.number]:
                    problems.append(f"{p.rec.rid}: not recovered, but not the whole call")
            if worst is None or (worst.lost_s or 0.0) < lost:
                kept = ", ".join(
                    f"{p.rec.rid[:8]} {'recovered' if p.rec.manifest['recovered'] else 'sealed'}"
                    for p in mine
                )
                unread = min(lost, max(0.0, boot.cut_lag_s or 0.0))
                detail = f"call {call.number + 1}: {kept or 'none'}"
                worst = CutLoss(boot.number, lost, detail, unread)
        if boot.plan is not None:
            out.append(worst or CutLoss(boot.number, None, "no call under way"))
    return out, problems


def started_but_missing(
    boots: Iterable[BootRecord], recordings: Mapping[str, Recording]
) -> list[str]:
    """Recordings the recorder said it started that are neither on the card nor stored."""
    return [
        f"boot {b.number}: recording {rid} was started and is nowhere (card or office)"
        for b in boots
        for rid in b.ids(RECORDING_STARTED_RE)
        if rid not in recordings
    ]


def loss_summary(cut_losses: Sequence[CutLoss]) -> str:
    hit = [c for c in cut_losses if c.lost_s is not None]
    if not hit:
        return "no cut fell into a call"
    lost = [c.lost_s or 0.0 for c in hit]
    judged = [c.judged_s for c in hit]
    return (
        f"lost per cut into a call ({len(hit)}): max {max(lost):.3f} s, median "
        f"{statistics.median(lost):.3f} s of the line; of what the recorder had read: max "
        f"{max(judged):.3f} s, median {statistics.median(judged):.3f} s"
    )
