"""Data-subject requests and the anonymised training export (issue 17), on both index
backends, checked against the audit ledger and against what the store still holds.

Two offices: :class:`Callers` (the honest device of tests/test_receiver_hostile.py, a
chain of opaque blobs with caller IDs in all formats: matching and erasure need no
audio), and :class:`Sealed` (tests/test_web_playback.py's real calls, sealed by
``linetap replay`` and received by the real receiver: the sample call and the
synthesized call of ALICE SMITH 5551234567, whose pre-roll holds her caller-ID burst).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sqlite3
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
import soundfile

import headoffice.ledger.store
from firmware.analyze import analyze_channel
from headoffice import enroll
from headoffice.access import Gate
from headoffice.anonymise import Anonymiser, find_for_training, silence
from headoffice.authz import Principal, Role, Scope
from headoffice.cli import main as office_main
from headoffice.config import OfficeConfig
from headoffice.dsar import (
    DsarError,
    DsarRequest,
    Fate,
    Subject,
    access_zip,
    digits_of,
    erase,
    find_subject,
    number_matches,
)
from headoffice.export import export_recording
from headoffice.exportzip import AudioSource, OutputError, RecordingsZip, write_zip_file
from headoffice.holds import Holds
from headoffice.index import Index, open_index
from headoffice.index.records import StoredRecord
from headoffice.ledger.store import LedgerError
from headoffice.officeroot import CaLayout
from headoffice.receiver import Receiver
from headoffice.retention import RetentionConfig
from headoffice.store import FileBlobStore
from headoffice.web.notes import NoteError, NoteStore
from headoffice.web.search import SearchFilters
from sealedrec.age import load_identities
from sealedrec.keys import load_device_key
from sealedrec.manifest import GENESIS_HASH, manifest_hash
from sealedrec.verify import decrypt_samples
from tests.helpers import mounted_tmpfs
from tests.office_accounts import (
    CHEAP,
    CHEAP_TOML,
    SteppingClock,
    add_account,
    gate_for,
    leaves,
    use_clock,
)
from tests.test_audit import Audited
from tests.test_office_index import index_url, pg_dsn  # noqa: F401 - fixtures
from tests.test_receiver_hostile import HONEST
from tests.test_web_playback import (
    DEVICE,
    SAMPLES,
    SECOND_DEVICE,
    SITES,
    SYNTH_CALLER,
    receive,
    replay_sealed,
    synth_call,
)

NOW = datetime.now(UTC)
COMPLIANCE = Principal("cora", frozenset({Role.COMPLIANCE}), Scope.all())


def not_none(x: Any) -> Any:
    assert x is not None
    return x


def access_leaves(index: Index, action: str) -> list[dict[str, Any]]:
    return [leaf for leaf in leaves(index, "access") if leaf["action"] == action]


def tombstone_leaves(index: Index) -> list[dict[str, Any]]:
    return [leaf for leaf in leaves(index, "admin") if leaf["action"] == "tombstone"]


# -- the matching rules ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("query", "stored", "exact", "expected"),
    [
        ("+41 44 555 01 01", "0445550101", False, True),  # national number ends the query
        ("0445550101", "+41 44 555 01 01", False, True),  # and the other way round
        ("(044) 555-0101", "0445550101", True, True),  # the same digits, any format
        ("+41 44 555 01 01", "0445550101", True, False),  # exact: digits must be equal
        ("5551234567", "+1 555 123 4567", False, True),
        ("5551234567", "5551234568", False, False),
        ("555 1234", "5551234", False, True),  # 7 digits, equal
        ("555 1234", "0215551234", False, True),  # a 7-digit local number ends a longer one
        ("123456", "0123456", False, False),  # 6 digits: equal digits only
        ("0123456", "123456", False, False),
        ("０４４５５５０１０１", "0445550101", True, True),  # full-width digits (NFKC)
        ("0445550101", None, False, False),
        ("0445550101", "PRIVATE", False, False),
    ],
)
def test_number_rule(query: str, stored: str | None, exact: bool, expected: bool):
    assert number_matches(digits_of(query), stored, exact=exact) is expected


@pytest.mark.parametrize(
    ("query", "stored", "expected"),
    [
        ("zoë", "ZOË ÅNGSTRÖM", True),
        ("ångström", "Zoë Ångström-Meier", True),
        ("Zoë", "ZOE ANGSTROM", False),  # a diacritic is a different letter
        ("strasse", "Hauptstraße 1", True),  # case folding: ß is ss
        ("alice  smith", "ALICE SMITH", True),  # white space runs are one space
        ("smith", None, False),
    ],
)
def test_name_rule(query: str, stored: str | None, expected: bool):
    assert Subject.parse(None, query).matches(None, stored) is expected


@pytest.mark.parametrize(
    ("number", "name", "message"),
    [
        (None, None, "one of them"),
        ("0445550101", "Zoë", "one of them"),
        ("+-", None, "fewer than 3 digits"),
        (None, " a b ", "at least 3 letters"),
        (None, "alice\x1b[2J", "control"),
    ],
)
def test_a_subject_that_is_not_one_is_refused(number: str | None, name: str | None, message: str):
    with pytest.raises(DsarError, match=message):
        Subject.parse(number, name)


# -- an office of caller IDs: matching, scope and erasure -------------------------------
#: (recording, caller number, caller name, age in days), seq 1..n of the honest device
CALLS = (
    ("rec-a", "+41 44 555 01 01", "Zoë Ångström", 400),
    ("rec-b", "0445550101", "ZOË ÅNGSTRÖM-MEIER", 10),
    ("rec-c", "044 555 01 02", "Bob Jones", 10),
    ("rec-d", None, "zoe angstrom", 10),
    ("rec-e", "5550101", None, 300),
    ("rec-f", "+41445550101", "Zoe", 200),
)
RULES = RetentionConfig(default_days=0, default_min_days=30)  # keep forever; erase after 30 days


class Callers(Audited):
    def __init__(self, root: Path, url: str) -> None:
        super().__init__(root, url, n=0)
        prev = GENESIS_HASH
        for rec, number, name, age in CALLS:
            caller = {"number": number, "name": name}
            started = (NOW - timedelta(days=age)).isoformat()
            ack = self.upload(
                HONEST, rec, prev_manifest_sha256=prev, started_utc=started, caller_id=caller
            )
            assert ack.status.value == "stored", ack
            record = self.index.get(rec)
            assert record is not None
            prev = manifest_hash(record.manifest)

    def request(self, subject: Subject, by: str = "cora") -> DsarRequest:
        return DsarRequest("REQ-17", subject, by, NOW)

    def blobs(self) -> set[str]:
        return {p.name.split(".")[0] for p in self.files("blobs")}

    def problems(self) -> list[str]:
        return [str(p) for p in self.report().problems]


@pytest.fixture
def callers(tmp_path: Path, index_url: str) -> Iterator[Callers]:  # noqa: F811
    o = Callers(tmp_path, index_url)
    yield o
    o.index.close()


def found(o: Callers, gate: Gate, subject: Subject) -> list[str]:
    return [r.recording_id for r in find_subject(o.index, gate, o.request(subject), "access")]


def test_find_by_number_and_name_in_scope_with_one_search_leaf(callers: Callers):
    gate = gate_for(callers.index, COMPLIANCE)
    before = len(access_leaves(callers.index, "search"))
    # oldest call first: a (400 days), e (300), f (200), b (10)
    assert found(callers, gate, Subject.parse("+41 44 555 01 01", None)) == [
        "rec-a", "rec-e", "rec-f", "rec-b",
    ]  # fmt: skip
    assert found(callers, gate, Subject.parse("+41 44 555 01 01", None, exact=True)) == [
        "rec-a", "rec-f",
    ]  # fmt: skip
    assert found(callers, gate, Subject.parse("0445550101", None, exact=True)) == ["rec-b"]
    assert found(callers, gate, Subject.parse(None, "zoë ångström")) == ["rec-a", "rec-b"]
    new = access_leaves(callers.index, "search")[before:]
    assert [leaf["detail"] for leaf in new] == ["dsar access REQ-17: by number"] * 3 + [
        "dsar access REQ-17: by name"
    ]
    assert all("555" not in leaf["detail"] for leaf in new)  # no subject data in the ledger
    # out of scope: nothing found, and the search is still a leaf
    elsewhere = Principal("eve", frozenset({Role.COMPLIANCE}), Scope(devices=frozenset({"x"})))
    gate = gate_for(callers.index, elsewhere)
    assert found(callers, gate, Subject.parse(None, "zoë")) == []
    assert access_leaves(callers.index, "search")[-1]["user"] == "eve"


def test_the_scan_pages_through_every_recording(callers: Callers, monkeypatch: pytest.MonkeyPatch):
    import headoffice.dsar

    monkeypatch.setattr(headoffice.dsar, "SCAN_PAGE", 2)  # 6 recordings: 4 pages
    gate = gate_for(callers.index, COMPLIANCE)
    assert found(callers, gate, Subject.parse(None, "zoe")) == ["rec-f", "rec-d"]
    assert found(callers, gate, Subject.parse("0445550101", None)) == [
        "rec-a", "rec-e", "rec-f", "rec-b",
    ]  # fmt: skip


def test_erasure_deletes_what_it_may_and_says_why_it_keeps_the_rest(callers: Callers):
    gate = gate_for(callers.index, COMPLIANCE)
    holds = Holds(callers.index, callers.store, gate)
    holds.set(not_none(callers.index.get("rec-e")), "CASE-9", "dispute")
    holds.set(not_none(callers.index.get("rec-e")), "CASE-11", "audit")
    callers.store.set_legal_hold(not_none(callers.index.get("rec-f")).path, True)  # the store's own
    request = callers.request(Subject.parse("+41 44 555 01 01", None))
    records = find_subject(callers.index, gate, request, "erasure")
    settings: dict[str, Any] = dict(
        index=callers.index, store=callers.store, gate=gate, retention=RULES, sites={}
    )
    dry = erase(request, records, dry_run=True, **settings)
    assert [(i.recording_id, i.fate) for i in dry.items] == [
        ("rec-a", Fate.WOULD_DELETE),
        ("rec-e", Fate.KEPT),
        ("rec-f", Fate.WOULD_DELETE),
        ("rec-b", Fate.KEPT),
    ]  # fmt: skip  (the index does not know the store's hold on f)
    assert access_leaves(callers.index, "delete") == [] and tombstone_leaves(callers.index) == []
    assert callers.blobs() == {rec for rec, *_ in CALLS}

    report = erase(request, records, **settings)
    got = {i.recording_id: (i.fate, i.reason, i.until) for i in report.items}
    b_until = (NOW - timedelta(days=10) + timedelta(days=30)).strftime("%Y-%m-%d")
    assert got["rec-a"] == (Fate.DELETED, "erased", None)
    assert got["rec-e"] == (Fate.KEPT, "on legal hold (case CASE-9, CASE-11)", None)
    assert got["rec-f"][0] is Fate.KEPT and got["rec-f"][1].startswith("the store refuses")
    assert got["rec-b"][0] is Fate.KEPT and got["rec-b"][2] == b_until
    assert got["rec-b"][1].startswith(f"under mandatory retention until {b_until} (30 days")
    # the ledger: a delete leaf for each one tried (a, f), a tombstone for the one deleted
    deletes = access_leaves(callers.index, "delete")
    assert [(x["recording_id"], x["detail"]) for x in deletes] == [
        ("rec-a", "dsar erasure REQ-17"), ("rec-f", "dsar erasure REQ-17"),
    ]  # fmt: skip
    [tomb] = tombstone_leaves(callers.index)
    assert (tomb["user"], tomb["subject"]) == ("cora", "rec-a")
    assert json.loads(tomb["detail"])["cause"] == "erasure REQ-17: data-subject request"
    # the store and the index: a is gone, everything else is still there
    assert callers.blobs() == {"rec-b", "rec-c", "rec-d", "rec-e", "rec-f"}
    assert callers.index.get("rec-a") is None
    with callers.index.transaction(False) as q:
        rows = q("SELECT recording_id, deleted_by, cause FROM tombstones", ())
    assert [tuple(r) for r in rows] == [("rec-a", "cora", "erasure REQ-17: data-subject request")]
    # the device's chain and the whole audit still verify across the gap
    assert callers.problems() == []


def test_erasure_without_the_delete_right_keeps_everything(callers: Callers):
    # An auditor + compliance scoped elsewhere sees all (auditor) and may delete nothing here.
    mixed = Principal(
        "mia", frozenset({Role.AUDITOR, Role.COMPLIANCE}), Scope(devices=frozenset({"x"}))
    )
    gate = gate_for(callers.index, mixed)
    request = callers.request(Subject.parse(None, "bob jones"), by="mia")
    records = find_subject(callers.index, gate, request, "erasure")
    assert [r.recording_id for r in records] == ["rec-c"]
    report = erase(
        request, records, index=callers.index, store=callers.store, gate=gate,
        retention=RetentionConfig(), sites={},
    )  # fmt: skip
    [item] = report.items
    assert item.fate is Fate.KEPT and item.reason.startswith("not allowed: mia may not delete")
    assert "rec-c" in callers.blobs() and tombstone_leaves(callers.index) == []
    assert access_leaves(callers.index, "delete")[-1]["detail"].startswith("refused")


# -- a real office: access ZIPs and the anonymised export -------------------------------
@dataclass
class Calls:
    """``linetap init``'s office root (no recordings yet) and the two sealed calls."""

    root: Path
    recipient: str
    entries: list[Path]
    keys: dict[str, Any]


@pytest.fixture(scope="module")
def calls(tmp_path_factory: pytest.TempPathFactory) -> Calls:
    tmp = tmp_path_factory.mktemp("dsar-calls")
    setup = enroll.init_ca(tmp / "office", "Test Office")
    sources = [
        (DEVICE, SAMPLES / "sample_call.flac", SAMPLES / "sample_call.events"),
        (SECOND_DEVICE, *synth_call(tmp)),
    ]
    entries = [replay_sealed(tmp, dev, setup.recipient, a, e) for dev, a, e in sources]
    keys = {
        dev: load_device_key(entry.parents[2] / "keys" / "device.key").public_key()
        for (dev, _a, _e), entry in zip(sources, entries, strict=True)
    }
    return Calls(setup.root, setup.recipient, entries, keys)


@dataclass
class Sealed:
    root: Path
    url: str
    cfg: OfficeConfig
    index: Index
    store: FileBlobStore
    sample: str  # the sample call (caller BRANCH 12, 02079460123)
    alice: str  # the synthesized call of ALICE SMITH 5551234567

    def samples(self, rec: str) -> np.ndarray:
        record = not_none(self.index.get(rec))
        with self.store.local_blob(record.path) as path:
            return decrypt_samples(path, "age", load_identities(self.root / "keys" / "office.key"))

    def source(self) -> AudioSource:
        return AudioSource(self.root, lambda: load_identities(CaLayout(self.root).office_key))

    def config(self, tmp: Path) -> Path:
        path = tmp / "office.toml"
        sites = "".join(f'{k} = ["{v[0]}"]\n' for k, v in SITES.items())
        path.write_text(f'root = "{self.root}"\nindex = "{self.url}"\n{CHEAP_TOML}[sites]\n{sites}')
        return path


@pytest.fixture
def sealed(calls: Calls, tmp_path: Path, index_url: str) -> Iterator[Sealed]:  # noqa: F811
    root = tmp_path / "office"
    shutil.copytree(calls.root, root)
    url = index_url if index_url.startswith("postgresql") else f"sqlite:///{root}/index.sqlite3"
    cfg = OfficeConfig(root=root, index=url, accounts=CHEAP, sites=SITES)
    index = open_index(url)
    store = FileBlobStore(root)
    receiver = Receiver(
        store, index, calls.keys.__getitem__, cfg.limits, frozenset({calls.recipient})
    )
    sample, alice = (receive(receiver, entry)["recording_id"] for entry in calls.entries)
    yield Sealed(root, url, cfg, index, store, sample, alice)
    index.close()


def cli_export(o: Sealed, rec: str, out: Path) -> np.ndarray:
    """What ``linetap-office export`` writes for ``rec``, decoded."""
    gate = gate_for(o.index, COMPLIANCE, o.cfg)
    keys = load_identities(o.root / "keys" / "office.key")
    result = export_recording(o.index, o.store, rec, keys, out, gate=gate)
    samples, _ = soundfile.read(result.path, dtype="int16")
    return np.asarray(samples, dtype=np.int16)


def spy_reads(o: Sealed, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Each blob the store hands out from now on: (its path, the export leaves in the
    ledger at that moment)."""
    reads: list[tuple[str, int]] = []
    real = o.store.local_blob

    def local_blob(path: str) -> Any:
        reads.append((path, len(access_leaves(o.index, "export"))))
        return real(path)

    monkeypatch.setattr(o.store, "local_blob", local_blob)
    return reads


def write_access(o: Sealed, gate: Gate, subject: Subject, out: Path) -> list[Any]:
    request = DsarRequest("REQ-17", subject, gate.actor.principal.name, NOW, "Test Office")
    records = find_subject(o.index, gate, request, "access")
    return write_zip_file(
        out,
        lambda z: list(
            access_zip(z, request, records, store=o.store, gate=gate, source=o.source())
        ),
    )


def test_the_access_zip_holds_the_audio_the_export_gives_and_logs_each(
    sealed: Sealed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    gate = gate_for(sealed.index, COMPLIANCE, sealed.cfg)
    out = tmp_path / "out" / "subject.zip"
    out.parent.mkdir()
    before = len(leaves(sealed.index))
    reads = spy_reads(sealed, monkeypatch)
    items = write_access(sealed, gate, Subject.parse("+1 (555) 123-4567", None), out)
    new = leaves(sealed.index)[before:]
    alice_path = not_none(sealed.index.get(sealed.alice)).path
    assert reads == [(alice_path, 1)]  # read once, its export leaf already in the ledger
    monkeypatch.undo()
    assert [(i.recording_id, i.status) for i in items] == [(sealed.alice, "exported")]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert sorted(p.name for p in out.parent.iterdir()) == ["subject.zip"]  # no temp file left
    record = not_none(sealed.index.get(sealed.alice))
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None
        wav = items[0].file
        assert zf.namelist() == [wav, "README.txt", "recordings.csv", "recordings.json"]
        got, rate = soundfile.read(io.BytesIO(zf.read(wav)), dtype="int16")
        readme = zf.read("README.txt").decode()
        rows = list(csv.DictReader(io.StringIO(zf.read("recordings.csv").decode())))
        doc = json.loads(zf.read("recordings.json"))
    assert rate == 8000
    np.testing.assert_array_equal(got, cli_export(sealed, sealed.alice, tmp_path / "cli.wav"))
    assert "REQ-17" in readme and "cora" in readme and "+1 (555) 123-4567" in readme
    [row] = rows
    assert (row["file"], row["status"], row["recording_id"]) == (wav, "exported", sealed.alice)
    assert (row["caller_number"], row["caller_name"]) == SYNTH_CALLER
    assert (row["device_id"], row["line"], row["duration_ms"]) == (SECOND_DEVICE, "line1", "12000")
    assert row["started_utc"] == record.started_utc and row["blob_sha256"] == record.blob_sha256
    assert row["blob_sha256_ok"] == "True"
    assert doc["request"] == "REQ-17" and doc["count"] == 1
    # the ledger: the request's search, then the export of the one recording handed out
    assert [(x["action"], x["recording_id"], x["detail"]) for x in new] == [
        ("search", None, "dsar access REQ-17: by number"),
        ("export", sealed.alice, "dsar access REQ-17"),
    ]


def test_a_recording_whose_leaf_cannot_be_written_is_left_out(
    sealed: Sealed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The export leaf comes before the bytes: no leaf, no audio."""
    gate = gate_for(sealed.index, COMPLIANCE, sealed.cfg)
    real = headoffice.ledger.store.Ledger.append

    def no_exports(self: Any, leaf: Any) -> Any:
        if getattr(leaf, "action", None) == "export":
            raise LedgerError("the ledger's disk is full")
        return real(self, leaf)

    monkeypatch.setattr(headoffice.ledger.store.Ledger, "append", no_exports)
    reads = spy_reads(sealed, monkeypatch)
    items = write_access(sealed, gate, Subject.parse(None, "alice"), tmp_path / "a.zip")
    assert reads == []  # not even decrypted in RAM
    [item] = items
    assert (item.status, item.file) == ("refused", "")
    assert "could not be logged" in item.detail
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        assert not [n for n in zf.namelist() if n.endswith(".wav")]
    assert access_leaves(sealed.index, "export") == []


def test_a_full_disk_leaves_no_partial_zip(sealed: Sealed, tmp_path: Path):
    gate = gate_for(sealed.index, COMPLIANCE, sealed.cfg)
    with mounted_tmpfs(tmp_path / "small", "64k") as small:
        with pytest.raises(OutputError, match="the disk is full; the partial ZIP was removed"):
            write_access(sealed, gate, Subject.parse(None, "alice"), small / "subject.zip")
        assert list(small.iterdir()) == []


def test_the_command_line_access_and_erase(
    sealed: Sealed,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    config = sealed.config(tmp_path)
    clock = use_clock(monkeypatch, SteppingClock())
    cora = add_account(sealed.index, "cora", [Role.COMPLIANCE], settings=CHEAP, clock=clock)
    where = ["--config", str(config)]
    out = tmp_path / "subject.zip"
    monkeypatch.delenv("LINETAP_OFFICE_USER", raising=False)
    ask = ["dsar", "access", "--name", "Alice", "--ref", "REQ-9", "-o", str(out), *where]
    assert office_main(ask) == 1  # no account
    assert "acts as a named account" in capsys.readouterr().err and not out.exists()
    cora.apply(monkeypatch)
    assert office_main(ask) == 0
    captured = capsys.readouterr()
    assert f"wrote {out}: 1 of 1 recordings for REQ-9" in captured.out
    assert f"[1/1] {sealed.alice} exported" in captured.err
    with zipfile.ZipFile(out) as zf:
        wav = next(n for n in zf.namelist() if n.endswith(".wav"))
        got, _ = soundfile.read(io.BytesIO(zf.read(wav)), dtype="int16")
    np.testing.assert_array_equal(got, cli_export(sealed, sealed.alice, tmp_path / "cli.wav"))
    cora.apply(monkeypatch)
    assert office_main(ask) == 1  # the output exists
    assert "exists: give another name, or --force" in capsys.readouterr().err
    cora.apply(monkeypatch)
    assert office_main([*ask, "--force"]) == 0
    capsys.readouterr()
    cora.apply(monkeypatch)
    nobody = ["dsar", "erase", "--number", "0800 000 000", "--ref", "REQ-9", *where]
    assert office_main(nobody) == 1
    assert "no recording in your scope matches the caller number 0800 000 000" in (
        capsys.readouterr().err
    )
    # erase: a dry run, then for real (the sample call is the other caller: untouched)
    cora.apply(monkeypatch)
    erase_args = ["dsar", "erase", "--number", "555 123 4567", "--ref", "REQ-9", *where]
    assert office_main([*erase_args, "--dry-run", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["dry_run"], doc["would_delete"], doc["deleted"]) == (True, 1, 0)
    assert [r["recording_id"] for r in doc["recordings"]] == [sealed.alice]
    assert sealed.index.get(sealed.alice) is not None
    cora.apply(monkeypatch)
    assert office_main(erase_args) == 0
    text = capsys.readouterr().out
    assert f"deleted       {sealed.alice}" in text and "REQ-9: 1 deleted, 0 kept" in text
    assert sealed.index.get(sealed.alice) is None and sealed.index.get(sealed.sample) is not None
    record_files = {p.name.split(".")[0] for p in (sealed.root / "blobs").rglob("*") if p.is_file()}
    assert sealed.alice not in record_files and sealed.sample in record_files
    [tomb] = tombstone_leaves(sealed.index)
    assert (tomb["user"], tomb["subject"]) == ("cora", sealed.alice)


# -- sensitive spans, the schema they need, and the anonymised export ------------------
def test_sensitive_spans_are_checked_and_kept_apart_from_notes(sealed: Sealed):
    notes = NoteStore(sealed.index)
    record = not_none(sealed.index.get(sealed.sample))
    notes.add_note(record, "rita", 1000, "a note")
    span = notes.add_sensitive(record, "rita", 3000, 4500, "says her address")
    assert (span.start_ms, span.end_ms, span.span) == (3000, 4500, "00:03–00:04")
    assert [n.kind for n in notes.notes_for(sealed.sample)] == ["note"]
    assert notes.sensitive_spans(sealed.sample) == [span]
    for start, end, message in ((5000, 5000, "must end after"), (0, 10**9, "after the call")):
        with pytest.raises(NoteError, match=message):
            notes.add_sensitive(record, "rita", start, end)


OLD_NOTES = """CREATE TABLE notes (
            id {serial},
            recording_id TEXT NOT NULL,
            author TEXT NOT NULL,
            at_ms BIGINT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('note', 'bookmark')),
            text TEXT NOT NULL CHECK (length(text) <= 2000),
            created_at TEXT NOT NULL)"""


def test_an_index_from_before_sensitive_spans_is_migrated(
    tmp_path: Path,
    index_url: str,  # noqa: F811
):
    """An index whose notes table has the old CHECK and no end_ms: opening it migrates
    it, keeping its notes and their ids (and never handing out a used id again)."""
    rows = [(1, "r1", "rita", 500, "note", "kept", "2026-01-01T00:00:00Z"),
            (7, "r1", "rita", 900, "bookmark", "", "2026-01-01T00:00:00Z")]  # fmt: skip
    insert = "INSERT INTO notes (id, recording_id, author, at_ms, kind, text, created_at) VALUES "
    if index_url.startswith("sqlite"):
        lite = sqlite3.connect(index_url.removeprefix("sqlite:///"))
        with lite:
            lite.execute(OLD_NOTES.format(serial="INTEGER PRIMARY KEY AUTOINCREMENT"))
            lite.executemany(insert + "(?, ?, ?, ?, ?, ?, ?)", rows)
            lite.execute("DELETE FROM notes WHERE id = 7")  # the high-water mark stays 7
        lite.close()
    else:
        with psycopg.connect(index_url, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(OLD_NOTES.format(serial="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"))
            cur.executemany(
                insert.replace(" VALUES ", " OVERRIDING SYSTEM VALUE VALUES ")
                + "(%s, %s, %s, %s, %s, %s, %s)",
                rows,
            )
            cur.execute("DELETE FROM notes WHERE id = 7")
            cur.execute("SELECT setval(pg_get_serial_sequence('notes', 'id'), 7)")
    for _ in range(2):  # the second open finds nothing to do
        index = open_index(index_url)
        index.close()
    index = open_index(index_url)
    try:
        span = NoteStore(index).add_sensitive(_note_target(), "rita", 100, 200, "x")
        assert span.id > 7
        with index.transaction(False) as q:
            got = [
                tuple(r)
                for r in q("SELECT id, kind, at_ms, end_ms, text FROM notes ORDER BY id", ())
            ]
        assert got == [(1, "note", 500, None, "kept"), (span.id, "sensitive", 100, 200, "x")]
    finally:
        index.close()


def _note_target() -> StoredRecord:
    """A recording for the note store's checks (the notes table refers to none)."""
    return StoredRecord("r1", "dev", "line1", 1, "2026-01-01T00:00:00Z", None, 60_000, None,
                        None, "", None, False, False, None, None, None, 0, "x", {}, "now")  # fmt: skip


def test_silence_zeroes_whole_frames_and_counts_overlaps_once():
    x = np.arange(1, 17, dtype=np.int16)  # 16 frames at 8 kHz: 2 ms
    out, ms = silence(x, 8000, [(1, 2), (1, 2), (0, 0)])
    assert out.tolist() == [*range(1, 9), *([0] * 8)] and ms == 1
    assert x.tolist() == list(range(1, 17))  # a copy
    out, ms = silence(x, 8000, [(1, 99)])  # past the end: up to the end
    assert out.tolist()[8:] == [0] * 8 and ms == 1


def test_the_anonymised_export_strips_shifts_and_silences(
    sealed: Sealed,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    config = sealed.config(tmp_path)
    clock = use_clock(monkeypatch, SteppingClock())
    sup = add_account(sealed.index, "sam", [Role.SUPERVISOR], settings=CHEAP, clock=clock)
    sample = not_none(sealed.index.get(sealed.sample))
    NoteStore(sealed.index).add_sensitive(sample, "rita", 3000, 4500, "her address")
    out = tmp_path / "train.zip"
    before = len(leaves(sealed.index))
    sup.apply(monkeypatch)
    assert office_main(["anonymise", "-o", str(out), "--config", str(config)]) == 0
    assert f"wrote {out}: 2 anonymised recordings" in capsys.readouterr().out
    data = out.read_bytes()
    records = [sample, not_none(sealed.index.get(sealed.alice))]
    secrets_ = {DEVICE, SECOND_DEVICE, "line1", sealed.sample, sealed.alice, "2026-11-25"}
    for r in records:
        secrets_ |= {r.caller_number or "", r.caller_name or "", r.dialled_digits}
    secrets_ |= {s.lower() for s in secrets_} | {s.upper() for s in secrets_}
    for text in sorted(s for s in secrets_ if s):
        for form in (text.encode(), text.encode("utf-16-le")):
            assert form not in data, text  # anywhere: member names, CSV, JSON, WAV headers
    with zipfile.ZipFile(out) as zf:
        assert zf.namelist() == ["clip-0001.wav", "clip-0002.wav", "clips.csv", "clips.json"]
        rows = list(csv.DictReader(io.StringIO(zf.read("clips.csv").decode())))
        clips = {
            n: soundfile.read(io.BytesIO(zf.read(n)), dtype="int16")[0]
            for n in ("clip-0001.wav", "clip-0002.wav")
        }
    # times: both calls started at the same instant; shifted together, to the minute
    assert {r["started"] for r in rows} == {rows[0]["started"]}
    shifted = datetime.strptime(rows[0]["started"], "%Y-%m-%dT%H:%MZ").replace(tzinfo=UTC)
    offset = datetime.fromisoformat(sample.started_utc) - shifted
    assert timedelta(days=365) <= offset <= timedelta(days=3650, minutes=1)
    assert sorted(r["duration_ms"] for r in rows) == ["12000", "16500"]  # exact, as they were
    assert {r["device"] for r in rows} == {"device-01", "device-02"}
    assert {r["line"] for r in rows} == {"line-01", "line-02"}
    # audio: silenced where it must be, equal to the original everywhere else
    for record in records:
        row = rows_of(rows, str(record.duration_ms))
        got, original = clips[row["file"]], sealed.samples(record.recording_id)
        assert got.shape == original.shape
        spans = [(0, record.manifest["preroll_ms"])]
        spans += [(s["start_ms"], s["end_ms"]) for s in record.manifest["masked_spans"]]
        if record is sample:
            spans.append((3000, 4500))
        quiet = np.zeros(got.shape[0], dtype=bool)
        for a, b in spans:
            quiet[a * 8 : b * 8] = True  # 8 frames a ms
        assert not got[quiet].any()
        np.testing.assert_array_equal(got[~quiet], original[~quiet])
        assert int(row["silenced_ms"]) == int(quiet.sum()) // 8
        assert original[quiet].any()  # there was something to silence
    # the caller-ID burst in ALICE's pre-roll decodes from the original, not from the clip
    alice_row = rows_of(rows, "12000")
    heard = analyze_channel(sealed.samples(sealed.alice), 8000)["caller_id"]
    assert [(m["number"], m["name"]) for m in heard] == [SYNTH_CALLER]
    assert analyze_channel(clips[alice_row["file"]], 8000)["caller_id"] == []
    # the ledger: the search with its filters, then one export leaf per recording
    new = leaves(sealed.index)[before:]
    assert [(x["action"], x["detail"]) for x in new] == [
        ("search", "anonymised export"),
        ("export", "anonymised export"),
        ("export", "anonymised export"),
    ]
    assert {x["recording_id"] for x in new[1:]} == {sealed.sample, sealed.alice}


def rows_of(rows: list[dict[str, str]], duration: str) -> dict[str, str]:
    [row] = [r for r in rows if r["duration_ms"] == duration]
    return row


def test_two_exports_cannot_be_joined(sealed: Sealed):
    records = [not_none(sealed.index.get(r)) for r in (sealed.sample, sealed.alice)]
    seen = set()
    for _ in range(20):
        anon = Anonymiser.fresh()
        anon.assign(records)
        seen.add((anon.devices[DEVICE], anon.started(records[0])))
    # 20 exports: the device's pseudonym is drawn (device-01 or -02), the offset too
    assert {d for d, _ in seen} == {"device-01", "device-02"}
    assert len({t for _, t in seen}) == 20


def test_the_training_export_needs_the_export_right(sealed: Sealed):
    reviewer = Principal("rita", frozenset({Role.REVIEWER}), Scope.all())
    gate = gate_for(sealed.index, reviewer, sealed.cfg)
    records = find_for_training(sealed.index, gate, SearchFilters())
    assert len(records) == 2  # a reviewer may search...
    buf = io.BytesIO()
    with RecordingsZip(buf) as out:
        items = list(
            Anonymiser.fresh().zip(out, records, store=sealed.store, gate=gate,
                                   source=sealed.source(), notes=NoteStore(sealed.index))
        )  # fmt: skip
    assert [i.status for i in items] == ["refused", "refused"]  # ...but not take them out
    with zipfile.ZipFile(buf) as zf:
        assert zf.namelist() == ["clips.csv", "clips.json"]
        assert zf.read("clips.csv").decode().strip().count("\n") == 0  # the header only
    assert all(x["detail"].startswith("refused") for x in access_leaves(sealed.index, "export"))
