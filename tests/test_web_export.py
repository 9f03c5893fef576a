"""Export from the web review (issue 16): ``GET /recordings/{id}/export`` and
``POST /export.zip``, behind the gate and the ledger, plain audio in RAM only.

The office is tests/test_web_playback.py's: the real sample call, sealed by
``linetap replay`` and received by the real receiver. The device's signing key is
enrolled in the office root here, so the ZIP's metadata can report the signature.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient

from headoffice.accounts import Accounts
from headoffice.authz import Principal, Role, Scope
from headoffice.export import export_recording
from headoffice.officeroot import CaLayout
from headoffice.web.app import create_app
from headoffice.web.routes_export import export_name
from sealedrec.age import load_identities
from sealedrec.keys import load_device_key
from tests.office_accounts import CHEAP, Login, SteppingClock, add_account, gate_for, leaves
from tests.test_web import csrf_of, sign_in
from tests.test_web_playback import DEVICE, SealedOffice, build_sealed_office


class ExportOffice:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.o: SealedOffice = build_sealed_office(tmp)
        self.clock = SteppingClock()
        # The device's manifest-signing key, as enrolment records it.
        raw = (
            load_device_key(tmp / f"{DEVICE}-out" / "keys" / "device.key")
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
        record = CaLayout(self.o.root).device_record(DEVICE)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(
            json.dumps({"device_id": DEVICE, "signing_key": base64.b64encode(raw).decode()})
        )
        idx = self.o.index
        self.supervisor = add_account(
            idx, "sam", [Role.SUPERVISOR], Scope(devices=frozenset({DEVICE})), settings=CHEAP
        )
        self.compliance = add_account(idx, "cora", [Role.COMPLIANCE], settings=CHEAP)
        # Sees every recording's metadata (auditor) but may export only elsewhere's.
        self.mixed = add_account(
            idx,
            "mia",
            [Role.AUDITOR, Role.COMPLIANCE],
            Scope(devices=frozenset({"elsewhere"})),
            settings=CHEAP,
        )
        for login in (self.supervisor, self.compliance, self.mixed):
            login.clock = self.clock

    @property
    def rec(self) -> str:
        return self.o.rec

    def client(self, login: Login | None = None) -> TestClient:
        accounts = Accounts(self.o.index, self.o.cfg.accounts, clock=self.clock.now)
        app = create_app(self.o.cfg, self.o.index, self.o.store, accounts=accounts)
        client = TestClient(app, follow_redirects=False)
        if login is not None:
            sign_in(client, login)
        return client


@pytest.fixture(scope="module")
def office(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExportOffice]:
    o = ExportOffice(tmp_path_factory.mktemp("export"))
    yield o
    o.o.index.close()


def export_leaves(o: ExportOffice) -> list[dict[str, Any]]:
    return [leaf for leaf in leaves(o.o.index, "access") if leaf["action"] == "export"]


def files_under(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_size for p in root.rglob("*") if p.is_file()}


def disposition_name(r: Any) -> str:
    match = re.fullmatch(
        r'attachment; filename="([A-Za-z0-9._+-]+)"', r.headers["content-disposition"]
    )
    assert match, r.headers["content-disposition"]
    return match.group(1)


def cli_export_samples(o: ExportOffice, out: Path) -> np.ndarray:
    """What ``linetap-office export`` writes for the recording, decoded."""
    gate = gate_for(o.o.index, Principal("cli", frozenset({Role.SUPERVISOR}), Scope.all()), o.o.cfg)
    keys = load_identities(o.o.root / "keys" / "office.key")
    result = export_recording(o.o.index, o.o.store, o.rec, keys, out, gate=gate)
    samples, _ = soundfile.read(result.path, dtype="int16")
    return np.asarray(samples, dtype=np.int16)


# -- one recording -----------------------------------------------------------------------
def test_wav_export_equals_the_cli_export_and_has_a_meaningful_name(
    office: ExportOffice, tmp_path: Path
):
    client = office.client(office.supervisor)
    before = len(export_leaves(office))
    r = client.get(f"/recordings/{office.rec}/export?format=wav")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav"
    assert r.headers["cache-control"] == "no-store"
    name = disposition_name(r)
    record = office.o.index.get(office.rec)
    assert record is not None
    assert name == export_name(record, "wav")
    number = re.sub(r"[^A-Za-z0-9._+-]+", "_", record.caller_number or "unknown")
    assert re.fullmatch(
        rf"\d{{8}}-\d{{6}}_{re.escape(record.line)}_{re.escape(number)}_"
        rf"{office.rec[:8]}\.wav",
        name,
    ), name
    got, rate = soundfile.read(io.BytesIO(r.content), dtype="int16")
    assert rate == 8000
    np.testing.assert_array_equal(got, office.o.samples())
    np.testing.assert_array_equal(got, cli_export_samples(office, tmp_path / "cli.wav"))
    new = export_leaves(office)[before:]
    assert [(x["user"], x["recording_id"], x["detail"]) for x in new[:1]] == [
        ("sam", office.rec, "web: export wav")
    ]


def test_flac_is_the_sealed_stream_and_opus_is_reencoded_or_refused(office: ExportOffice):
    client = office.client(office.compliance)  # compliance: export without listen
    flac = client.get(f"/recordings/{office.rec}/export?format=flac")
    assert flac.status_code == 200 and flac.content.startswith(b"fLaC")
    assert disposition_name(flac).endswith(f"_{office.rec[:8]}.flac")
    got, _ = soundfile.read(io.BytesIO(flac.content), dtype="int16")
    np.testing.assert_array_equal(got, office.o.samples())
    opus = client.get(f"/recordings/{office.rec}/export?format=opus")
    if "OPUS" in soundfile.available_subtypes("OGG"):
        assert opus.status_code == 200 and opus.content.startswith(b"OggS")
        assert b"OpusHead" in opus.content[:200]
        assert disposition_name(opus).endswith(".opus")
        decoded, _ = soundfile.read(io.BytesIO(opus.content), dtype="int16")
        assert abs(decoded.shape[0] - office.o.samples().shape[0]) < 8000  # lossy, ~same length
    else:
        assert opus.status_code == 400 and "Opus" in opus.text
    bad = client.get(f"/recordings/{office.rec}/export?format=mp3")
    assert bad.status_code == 400


def test_a_reviewer_gets_403_and_an_outsider_404_and_nothing(office: ExportOffice):
    before = len(export_leaves(office))
    reviewer = office.client()
    sign_in(reviewer, office.o.reviewer)  # may listen, may not export
    r = reviewer.get(f"/recordings/{office.rec}/export?format=wav")
    assert r.status_code == 403 and b"RIFF" not in r.content
    outsider = office.client()
    sign_in(outsider, office.o.outsider)
    r = outsider.get(f"/recordings/{office.rec}/export?format=wav")
    assert r.status_code == 404 and b"RIFF" not in r.content
    missing = outsider.get("/recordings/no-such-recording/export?format=wav")
    assert missing.status_code == 404 and missing.text == r.text
    new = export_leaves(office)[before:]
    assert [(x["user"], x["recording_id"]) for x in new] == [
        ("rita", office.rec),
        ("olga", office.rec),
        ("olga", None),
    ]
    assert all(str(x["detail"]).startswith("refused") for x in new)
    # No session: the login page, no bytes.
    anonymous = office.client().get(f"/recordings/{office.rec}/export")
    assert anonymous.status_code == 303 and anonymous.content == b""


# -- the ZIP -----------------------------------------------------------------------------
def search_form(client: TestClient, query: str) -> dict[str, str]:
    page = client.get(f"/?{query}")
    assert page.status_code == 200
    form = re.search(r'<form method="post" action="/export.zip".*?</form>', page.text, re.S)
    assert form, "no export form"
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form.group(0)))


def test_the_zip_holds_the_wav_and_metadata_and_logs_each_export(office: ExportOffice):
    client = office.client(office.supervisor)
    fields = search_form(client, f"device={DEVICE}&page_size=25")
    assert fields["device"] == DEVICE and "page_size" not in fields and fields["csrf"]
    single = client.get(f"/recordings/{office.rec}/export?format=wav").content
    before = len(export_leaves(office))
    r = client.post("/export.zip", data=fields)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    assert "content-length" not in r.headers  # streamed
    assert re.fullmatch(
        r'attachment; filename="recordings_[0-9-]+\.zip"', r.headers["content-disposition"]
    )
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
        record = office.o.index.get(office.rec)
        assert record is not None
        wav = export_name(record, "wav")
        assert names == [wav, "metadata.csv", "metadata.json"]
        got, _ = soundfile.read(io.BytesIO(zf.read(wav)), dtype="int16")
        want, _ = soundfile.read(io.BytesIO(single), dtype="int16")
        np.testing.assert_array_equal(got, want)
        rows = list(csv.DictReader(io.StringIO(zf.read("metadata.csv").decode())))
        doc = json.loads(zf.read("metadata.json"))
    assert len(rows) == 1
    row = rows[0]
    assert row["file"] == wav and row["status"] == "exported"
    assert row["recording_id"] == office.rec and row["line"] == record.line
    assert row["blob_sha256"] == record.blob_sha256
    assert (row["signature_ok"], row["blob_sha256_ok"]) == ("True", "True")
    assert doc["query"] == f"device={DEVICE}" and doc["count"] == 1
    [entry] = doc["recordings"]
    assert entry["signature_ok"] is True and entry["blob_sha256_ok"] is True
    assert entry["caller_number"] == record.caller_number
    new = export_leaves(office)[before:]
    assert [(x["user"], x["recording_id"], x["detail"]) for x in new] == [
        ("sam", office.rec, "web: export wav (zip)")
    ]


def test_a_recording_that_may_not_be_exported_is_listed_as_refused(office: ExportOffice):
    client = office.client(office.mixed)  # sees all (auditor), exports only "elsewhere"
    fields = search_form(client, "")
    before = len(export_leaves(office))
    r = client.post("/export.zip", data=fields)
    assert r.status_code == 200
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert zf.namelist() == ["metadata.csv", "metadata.json"]
        [row] = list(csv.DictReader(io.StringIO(zf.read("metadata.csv").decode())))
    assert row["status"] == "refused" and row["file"] == "" and row["recording_id"] == office.rec
    [leaf] = export_leaves(office)[before:]
    assert leaf["user"] == "mia" and str(leaf["detail"]).startswith("refused")


def test_no_export_right_no_form_and_403(office: ExportOffice):
    client = office.client()
    sign_in(client, office.o.reviewer)
    page = client.get("/")
    assert page.status_code == 200 and "/export.zip" not in page.text
    rec_page = client.get(f"/recordings/{office.rec}")
    assert "/export?format=wav" not in rec_page.text
    r = client.post("/export.zip", data={"csrf": csrf_of(page.text)})
    assert r.status_code == 403 and r.headers["content-type"].startswith("text/plain")
    sup = office.client(office.supervisor)
    assert (
        f"/recordings/{office.rec}/export?format=wav" in sup.get(f"/recordings/{office.rec}").text
    )


def test_zip_without_csrf_is_refused(office: ExportOffice):
    client = office.client(office.supervisor)
    before = len(export_leaves(office))
    r = client.post("/export.zip", data={"device": DEVICE})
    assert r.status_code == 403 and b"PK" not in r.content[:2]
    r = client.post("/export.zip", data={"device": DEVICE, "csrf": "0" * 64})
    assert r.status_code == 403
    assert len(export_leaves(office)) == before


def test_zip_too_many_and_bad_filters_are_clear_errors(
    office: ExportOffice, monkeypatch: pytest.MonkeyPatch
):
    import headoffice.web.routes_export as routes

    client = office.client(office.supervisor)
    fields = search_form(client, "")
    monkeypatch.setattr(routes, "MAX_ZIP_RECORDINGS", 0)
    r = client.post("/export.zip", data=fields)
    assert r.status_code == 400 and "more than 0 recordings" in r.text
    monkeypatch.undo()
    r = client.post("/export.zip", data={**fields, "min_duration": "-3"})
    assert r.status_code == 400 and "min_duration" in r.text


def test_plain_audio_never_touches_the_disk(office: ExportOffice):
    before = files_under(office.tmp)
    client = office.client(office.supervisor)
    wav = client.get(f"/recordings/{office.rec}/export?format=wav").content
    flac = client.get(f"/recordings/{office.rec}/export?format=flac").content
    fields = search_form(client, "")
    assert client.post("/export.zip", data=fields).status_code == 200
    after = files_under(office.tmp)
    new = set(after) - set(before)
    assert not [p for p in new if not p.name.endswith(("-journal", "-wal", "-shm"))], new
    pcm = wav[44 : 44 + 4096]  # past the RIFF header: plain samples
    for path in after:
        data = path.read_bytes()
        if path.suffix in (".wav", ".flac") and path.parent.name in ("wav", f"{DEVICE}-out"):
            continue  # the device side's own recordings (the replayed input)
        assert pcm not in data, path
        assert flac[:4096] not in data, path
