"""The compliance pages (issue 17): legal holds and data-subject requests in the web
review, and the sensitive spans of the notes panel, over the real sealed office of
tests/test_web_playback.py with its second site (the call of ALICE SMITH 5551234567 on
``branch-2``, site "south"; the sample call of BRANCH 12 on ``test-device``, "north").
Every POST needs its CSRF token; every view and change is a ledger leaf; a recording
out of scope is 404, a right the role lacks 403."""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from fastapi.testclient import TestClient

from headoffice.accounts import Accounts
from headoffice.authz import Principal, Role, Scope
from headoffice.export import export_recording
from headoffice.holds import holds_of
from headoffice.web.app import create_app
from headoffice.web.notes import NoteStore
from sealedrec.age import load_identities
from tests.office_accounts import CHEAP, Login, SteppingClock, add_account, gate_for, leaves
from tests.test_web import csrf_of, sign_in
from tests.test_web_playback import SECOND_DEVICE, SYNTH_CALLER, SealedOffice, build_sealed_office

HX = {"HX-Request": "true"}


class Office:
    """The sealed office with a compliance officer for all (cora), one for the north
    site only (nora), and a supervisor (sam); the clock steps for their one-time codes."""

    def __init__(self, tmp: Path) -> None:
        self.o: SealedOffice = build_sealed_office(tmp, second_site=True)
        self.clock = SteppingClock()
        idx = self.o.index
        self.cora = add_account(idx, "cora", [Role.COMPLIANCE], settings=CHEAP, clock=self.clock)
        self.nora = add_account(
            idx, "nora", [Role.COMPLIANCE], Scope(sites=frozenset({"north"})),
            settings=CHEAP, clock=self.clock, sites=self.o.cfg.sites,
        )  # fmt: skip
        self.sam = add_account(idx, "sam", [Role.SUPERVISOR], settings=CHEAP, clock=self.clock)
        [other] = self.o.others
        self.alice = str(other["recording_id"])

    def client(self, login: Login | None = None) -> TestClient:
        accounts = Accounts(self.o.index, self.o.cfg.accounts, clock=self.clock.now)
        app = create_app(self.o.cfg, self.o.index, self.o.store, accounts=accounts)
        client = TestClient(app, follow_redirects=False)
        if login is not None:
            sign_in(client, login)
        return client

    def access(self, action: str) -> list[dict[str, Any]]:
        return [x for x in leaves(self.o.index, "access") if x["action"] == action]


@pytest.fixture(scope="module")
def office(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Office]:
    o = Office(tmp_path_factory.mktemp("compliance"))
    yield o
    o.o.index.close()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Office]:
    """An office of its own, for a test that deletes."""
    o = Office(tmp_path)
    yield o
    o.o.index.close()


def no_inline_style(html: str) -> None:
    assert " style=" not in html and "<style" not in html
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)


# -- the nav and who may use the pages -------------------------------------------------
def test_the_compliance_link_and_pages_are_for_the_hold_right_only(office: Office):
    cora = office.client(office.cora)
    page = cora.get("/")
    assert '<a href="/compliance"' in page.text
    for url in ("/compliance", "/compliance/dsar"):
        r = cora.get(url)
        assert r.status_code == 200, url
        no_inline_style(r.text)
        assert 'aria-current="page">Compliance</a>' in r.text
    reviewer = office.client(office.o.reviewer)
    assert '<a href="/compliance"' not in reviewer.get("/").text
    before = len(office.access("search"))
    for url in ("/compliance", "/compliance/dsar?number=5551234567&ref=R-1"):
        assert reviewer.get(url).status_code == 403
    new = office.access("search")[before:]
    assert [(x["user"], x["detail"]) for x in new] == [
        ("rita", "web: holds in force refused: no hold right"),
        ("rita", "web: data-subject requests refused: no hold right"),
    ]


# -- legal holds -------------------------------------------------------------------------
def set_hold(client: TestClient, rec: str, case: str, reason: str = "dispute") -> Any:
    page = client.get(f"/recordings/{rec}")
    data = {"csrf": csrf_of(page.text), "case_ref": case, "reason": reason}
    return client.post(f"/recordings/{rec}/holds", data=data)


def test_a_hold_set_on_the_recording_page_is_listed_and_released(office: Office):
    cora = office.client(office.cora)
    rec = office.o.rec
    page = cora.get(f"/recordings/{rec}")
    assert 'data-role="hold-form"' in page.text and "Not on legal hold." in page.text
    no_inline_style(page.text)
    # without the CSRF token: refused, nothing held
    r = cora.post(f"/recordings/{rec}/holds", data={"case_ref": "CASE-1", "reason": "x"})
    assert r.status_code == 403 and holds_of(office.o.index, rec) == []
    before = len(office.access("hold"))
    r = set_hold(cora, rec, "CASE-1", "customer dispute")
    assert r.status_code == 303 and r.headers["location"] == f"/recordings/{rec}#holds-heading"
    [hold] = holds_of(office.o.index, rec)
    assert (hold.case_ref, hold.reason, hold.set_by, hold.active) == (
        "CASE-1", "customer dispute", "cora", True,
    )  # fmt: skip
    record = office.o.index.get(rec)
    assert record is not None and office.o.store.lifecycle(record.path).legal_hold
    [leaf] = office.access("hold")[before:]
    assert (leaf["user"], leaf["recording_id"]) == ("cora", rec)
    assert leaf["detail"] == "hold for case CASE-1: customer dispute"
    page = cora.get(f"/recordings/{rec}").text
    assert '<tr data-case="CASE-1">' in page and "in force" in page
    # the same case again: a clear error, nothing changed
    again = set_hold(cora, rec, "CASE-1")
    assert again.status_code == 400 and "already on hold for case CASE-1" in again.text
    # the holds page lists it; the filter by case finds it or not
    listed = cora.get("/compliance").text
    assert f'data-recording="{rec}" data-case="CASE-1"' in listed
    assert "CASE-1" not in cora.get("/compliance?case=OTHER").text.split("<tbody>")[-1]
    assert f'data-recording="{rec}"' in cora.get("/compliance?case=case-").text
    assert office.access("search")[-1]["detail"] == "web: holds in force; case=case-"
    # released from the holds page: back there, with the store's hold gone too
    data = {"csrf": csrf_of(listed), "case_ref": "CASE-1", "reason": "settled",
            "next": "compliance"}  # fmt: skip
    r = cora.post(f"/recordings/{rec}/holds/release", data=data)
    assert r.status_code == 303 and r.headers["location"] == "/compliance?done=released"
    assert "The hold was released." in cora.get(r.headers["location"]).text
    [hold] = holds_of(office.o.index, rec)
    assert (hold.active, hold.released_by, hold.release_reason) == (False, "cora", "settled")
    assert not office.o.store.lifecycle(record.path).legal_hold
    assert office.access("release")[-1]["detail"] == "release case CASE-1: settled"


def test_holds_out_of_scope_are_404_and_without_the_right_403(office: Office):
    nora = office.client(office.nora)  # compliance for the north site only
    page = nora.get("/compliance")
    before = len(office.access("hold"))
    r = nora.post(
        f"/recordings/{office.alice}/holds",
        data={"csrf": csrf_of(page.text), "case_ref": "C-2", "reason": "x"},
    )
    assert r.status_code == 404
    missing = nora.post(
        "/recordings/no-such-recording/holds",
        data={"csrf": csrf_of(page.text), "case_ref": "C-2", "reason": "x"},
    )
    assert missing.status_code == 404
    sam = office.client(office.sam)  # sees it, may not hold
    r = set_hold(sam, office.o.rec, "C-3")
    assert r.status_code == 403
    assert 'data-role="hold-form"' not in sam.get(f"/recordings/{office.o.rec}").text
    assert holds_of(office.o.index, office.alice) == []
    new = office.access("hold")[before:]
    assert [(x["user"], x["recording_id"]) for x in new] == [
        ("nora", office.alice), ("nora", None), ("sam", office.o.rec),
    ]  # fmt: skip
    assert all(str(x["detail"]).startswith("refused") for x in new)


# -- data-subject requests ---------------------------------------------------------------
def test_a_request_finds_the_subjects_recordings_in_scope(office: Office):
    cora = office.client(office.cora)
    before = len(office.access("search"))
    r = cora.get("/compliance/dsar?number=%2B1+555+123+4567&ref=REQ-7")
    assert r.status_code == 200
    no_inline_style(r.text)
    assert f'data-recording="{office.alice}"' in r.text
    assert f'data-recording="{office.o.rec}"' not in r.text
    assert "1 recording about the caller number +1 555 123 4567" in r.text
    by_name = cora.get("/compliance/dsar?name=alice+smith&ref=REQ-7").text
    assert f'data-recording="{office.alice}"' in by_name
    assert [x["detail"] for x in office.access("search")[before:]] == [
        "dsar lookup REQ-7: by number",
        "dsar lookup REQ-7: by name",
    ]
    # the north officer does not find the south's call (and learns nothing of it)
    nora = office.client(office.nora).get("/compliance/dsar?name=alice&ref=REQ-7").text
    assert office.alice not in nora and 'data-role="no-match"' in nora
    # a request that is not one: shown on the form, nothing searched
    bad = cora.get("/compliance/dsar?number=12&ref=REQ-7")
    assert bad.status_code == 400 and "fewer than 3 digits" in bad.text
    no_ref = cora.get("/compliance/dsar?name=alice&ref=")
    assert no_ref.status_code == 400 and "The request reference is required" in no_ref.text


def test_the_access_zip_is_streamed_and_equals_the_cli_export(office: Office, tmp_path: Path):
    cora = office.client(office.cora)
    page = cora.get("/compliance/dsar?number=5551234567&ref=REQ-8")
    form = re.search(
        r'<form method="post" action="/compliance/dsar/access".*?</form>', page.text, re.S
    )
    assert form
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form.group(0)))
    assert fields == {"csrf": csrf_of(page.text), "ref": "REQ-8", "number": "5551234567"}
    before = len(office.access("export"))
    assert (
        cora.post("/compliance/dsar/access", data={**fields, "csrf": "0" * 64}).status_code == 403
    )
    assert len(office.access("export")) == before  # no token: nothing handed out
    r = cora.post("/compliance/dsar/access", data=fields)
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    assert "content-length" not in r.headers  # streamed
    assert re.fullmatch(
        r'attachment; filename="dsar_REQ-8_\d{8}-\d{6}\.zip"', r.headers["content-disposition"]
    )
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        names = zf.namelist()
        [wav] = [n for n in names if n.endswith(".wav")]
        assert names == [wav, "README.txt", "recordings.csv", "recordings.json"]
        got, _ = soundfile.read(io.BytesIO(zf.read(wav)), dtype="int16")
        [row] = csv.DictReader(io.StringIO(zf.read("recordings.csv").decode()))
        readme = zf.read("README.txt").decode()
    gate = gate_for(office.o.index, Principal("x", frozenset({Role.COMPLIANCE}), Scope.all()))
    keys = load_identities(office.o.root / "keys" / "office.key")
    cli = export_recording(
        office.o.index, office.o.store, office.alice, keys, tmp_path / "c.wav", gate=gate
    )
    want, _ = soundfile.read(cli.path, dtype="int16")
    np.testing.assert_array_equal(got, want)
    assert (row["recording_id"], row["caller_number"], row["caller_name"]) == (
        office.alice,
        *SYNTH_CALLER,
    )
    assert "REQ-8" in readme and "by cora" in readme
    new = [x for x in office.access("export")[before:] if x["user"] == "cora"]
    assert [(x["recording_id"], x["detail"]) for x in new] == [(office.alice, "dsar access REQ-8")]


def test_erasure_is_confirmed_then_reported(fresh: Office):
    cora = fresh.client(fresh.cora)
    o = fresh.o
    query = "number=5551234567&ref=REQ-9"
    assert set_hold(cora, fresh.alice, "CASE-5").status_code == 303
    held = cora.get(f"/compliance/dsar/erase?{query}")
    assert held.status_code == 200
    no_inline_style(held.text)
    assert f'data-recording="{fresh.alice}" data-fate="kept"' in held.text
    assert "on legal hold (case CASE-5)" in held.text and 'data-role="erase-form"' not in held.text
    page = cora.get(f"/recordings/{fresh.alice}").text
    data = {"csrf": csrf_of(page), "case_ref": "CASE-5", "reason": "settled"}
    assert cora.post(f"/recordings/{fresh.alice}/holds/release", data=data).status_code == 303
    confirm = cora.get(f"/compliance/dsar/erase?{query}")
    assert f'data-recording="{fresh.alice}" data-fate="would delete"' in confirm.text
    form = re.search(
        r'<form method="post" action="/compliance/dsar/erase".*?</form>', confirm.text, re.S
    )
    assert form
    pairs = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form.group(0))
    fields: dict[str, Any] = {k: v for k, v in pairs if k != "rid"}
    fields["rid"] = [v for k, v in pairs if k == "rid"]
    assert fields["rid"] == [fresh.alice] and fields["ref"] == "REQ-9"
    # not ticked: nothing deleted; no token: refused
    r = cora.post("/compliance/dsar/erase", data=fields)
    assert r.status_code == 400 and "nothing was deleted" in r.text
    no_token = {k: v for k, v in fields.items() if k != "csrf"}
    assert (
        cora.post("/compliance/dsar/erase", data={**no_token, "confirm": "yes"}).status_code == 403
    )
    assert o.index.get(fresh.alice) is not None and fresh.access("delete") == []
    r = cora.post("/compliance/dsar/erase", data={**fields, "confirm": "yes"})
    assert r.status_code == 200, r.text
    no_inline_style(r.text)
    assert f'data-recording="{fresh.alice}" data-fate="deleted"' in r.text
    assert "1 deleted, 0 kept" in r.text
    # the index, the store and the ledger agree; the sample call is untouched
    assert o.index.get(fresh.alice) is None and o.index.get(o.rec) is not None
    blobs = {p.name.split(".")[0] for p in (o.root / "blobs").rglob("*") if p.is_file()}
    assert fresh.alice not in blobs and o.rec in blobs
    [delete] = fresh.access("delete")
    assert (delete["user"], delete["recording_id"], delete["detail"]) == (
        "cora", fresh.alice, "dsar erasure REQ-9",
    )  # fmt: skip
    [tomb] = [x for x in leaves(o.index, "admin") if x["action"] == "tombstone"]
    assert (tomb["user"], tomb["subject"]) == ("cora", fresh.alice)
    assert '"cause":"erasure REQ-9: data-subject request"' in tomb["detail"]
    # the recording page of the erased call is now a 404
    assert cora.get(f"/recordings/{fresh.alice}").status_code == 404


def test_a_recording_found_after_the_confirmation_is_not_erased(fresh: Office):
    cora = fresh.client(fresh.cora)
    page = cora.get("/compliance/dsar")
    fields = {
        "csrf": csrf_of(page.text),
        "number": "5551234567",
        "ref": "REQ-10",
        "confirm": "yes",
    }  # fmt: skip  (no rid: it was not on the confirmation page)
    r = cora.post("/compliance/dsar/erase", data=fields)
    assert r.status_code == 200
    assert f'data-recording="{fresh.alice}" data-fate="kept"' in r.text
    assert "found since the confirmation page" in r.text
    assert fresh.o.index.get(fresh.alice) is not None and fresh.access("delete") == []


# -- sensitive spans in the notes panel --------------------------------------------------
def test_a_reviewer_marks_a_sensitive_span(office: Office):
    rita = office.client(office.o.reviewer)
    rec = office.o.rec
    page = rita.get(f"/recordings/{rec}")
    assert 'data-role="sensitive-form"' in page.text and "/static/sensitive.js" in page.text
    csrf = csrf_of(page.text)
    before = len(office.access("note"))
    r = rita.post(f"/recordings/{rec}/sensitive",
                  data={"csrf": csrf, "start": "00:03", "end": "0:04.5", "text": "her address"},
                  headers=HX)  # fmt: skip
    assert r.status_code == 200 and "<html" not in r.text
    assert re.search(r'data-start-ms="3000" data-end-ms="4500"', r.text), r.text
    assert "her address" in r.text and "00:03–00:04" in r.text
    [span] = NoteStore(office.o.index).sensitive_spans(rec)
    assert (span.author, span.start_ms, span.end_ms) == ("rita", 3000, 4500)
    assert [n for n in NoteStore(office.o.index).notes_for(rec) if n.at_ms == 3000] == []
    [leaf] = office.access("note")[before:]
    assert (leaf["user"], leaf["detail"]) == ("rita", "web: sensitive 00:03-00:04")
    for start, end, message in (("0:05", "0:04", "must end after"), ("soon", "0:04", "not a position"),
                                ("0:01", "9:00", "after the call")):  # fmt: skip
        bad = rita.post(f"/recordings/{rec}/sensitive",
                        data={"csrf": csrf, "start": start, "end": end}, headers=HX)  # fmt: skip
        assert bad.status_code == 400 and message in bad.text, (start, end, bad.text)
    assert len(NoteStore(office.o.index).sensitive_spans(rec)) == 1
    # out of scope: 404; the auditor sees the recording but may not mark: 403
    olga = office.client(office.o.outsider)
    r = olga.post(f"/recordings/{rec}/sensitive",
                  data={"csrf": csrf_of(olga.get("/").text), "start": "0:01", "end": "0:02"})  # fmt: skip
    assert r.status_code == 404
    aud = office.client(office.o.auditor)
    r = aud.post(f"/recordings/{rec}/sensitive",
                 data={"csrf": csrf_of(aud.get("/").text), "start": "0:01", "end": "0:02"})  # fmt: skip
    assert r.status_code == 403
    assert len(NoteStore(office.o.index).sensitive_spans(rec)) == 1
    assert SECOND_DEVICE not in r.text
