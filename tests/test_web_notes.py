"""Notes, the reviewed mark and the history of a recording page (issue 16), over the real
sealed office of tests/test_web_playback.py: ``POST /recordings/{id}/notes``,
``POST /recordings/{id}/reviewed`` and ``GET /recordings/{id}/history``, each behind the
gate and its ledger leaf, with CSRF on the POSTs."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from headoffice.index import open_index
from headoffice.index.records import StoredRecord
from headoffice.web.notes import MAX_NOTE_CHARS, NoteError, NoteStore, ledger_history, mmss
from tests.office_accounts import leaves
from tests.test_office_index import pg_dsn  # noqa: F401 - fixture
from tests.test_web import csrf_of
from tests.test_web_playback import SealedOffice, build_sealed_office, signed_in

HX = {"HX-Request": "true"}


@pytest.fixture(scope="module")
def office(tmp_path_factory: pytest.TempPathFactory):
    o = build_sealed_office(tmp_path_factory.mktemp("notes"))
    yield o
    o.index.close()


def record_of(o: SealedOffice) -> StoredRecord:
    record = o.index.get(o.rec)
    assert record is not None
    return record


def note_leaves(o: SealedOffice) -> list[dict[str, Any]]:
    return [leaf for leaf in leaves(o.index, "access") if leaf["action"] == "note"]


def post_note(
    client: TestClient, o: SealedOffice, text: str, at_ms: int = 7000, **extra: str
) -> Any:
    page = client.get(f"/recordings/{o.rec}")
    assert page.status_code == 200
    data = {"csrf": csrf_of(page.text), "at_ms": str(at_ms), "text": text, **extra}
    return client.post(f"/recordings/{o.rec}/notes", data=data, headers=HX)


def test_mmss():
    assert [mmss(ms) for ms in (0, 999, 7000, 65_432, 3_600_000)] == [
        "00:00",
        "00:00",
        "00:07",
        "01:05",
        "1:00:00",
    ]


def test_a_note_at_7_s_is_listed_at_00_07_and_persists(office: SealedOffice):
    client = signed_in(office, office.reviewer)
    r = post_note(client, office, "customer asks for a refund")
    assert r.status_code == 200, r.text
    assert "<html" not in r.text  # the htmx fragment, not a page
    assert re.search(r'data-seek-ms="7000"[^>]*>00:07</button>', r.text), r.text
    assert "customer asks for a refund" in r.text
    # A new session (another client) sees it on the page, with the seek button.
    again = signed_in(office, office.reviewer)
    page = again.get(f"/recordings/{office.rec}").text
    assert re.search(r'data-seek-ms="7000"[^>]*>00:07</button>', page)
    assert "customer asks for a refund" in page and "— rita" in page
    [note] = [n for n in NoteStore(office.index).notes_for(office.rec) if "refund" in n.text]
    assert (note.author, note.at_ms, note.kind, note.at) == ("rita", 7000, "note", "00:07")
    # The note is an access leaf: "note at 00:07" on this recording, by rita.
    leaf = note_leaves(office)[-1]
    assert (leaf["user"], leaf["recording_id"]) == ("rita", office.rec)
    assert leaf["detail"] == "web: note at 00:07"


def test_a_form_post_without_htmx_returns_to_the_page(office: SealedOffice):
    client = signed_in(office, office.reviewer)
    page = client.get(f"/recordings/{office.rec}")
    data = {"csrf": csrf_of(page.text), "at_ms": "1500", "text": "", "kind": "bookmark"}
    r = client.post(f"/recordings/{office.rec}/notes", data=data)
    assert r.status_code == 303
    assert r.headers["location"].startswith(f"/recordings/{office.rec}")
    assert 'data-seek-ms="1500"' in client.get(f"/recordings/{office.rec}").text


def test_a_note_without_the_csrf_token_is_refused(office: SealedOffice):
    client = signed_in(office, office.reviewer)
    before = len(NoteStore(office.index).notes_for(office.rec))
    for data in (
        {"at_ms": "7000", "text": "no token"},
        {"at_ms": "7000", "text": "bad token", "csrf": "0" * 64},
    ):
        r = client.post(f"/recordings/{office.rec}/notes", data=data, headers=HX)
        assert r.status_code == 403
    r = client.post(f"/recordings/{office.rec}/reviewed", data={"reviewed": "1"})
    assert r.status_code == 403
    assert len(NoteStore(office.index).notes_for(office.rec)) == before


def test_who_may_write_notes(office: SealedOffice):
    store = NoteStore(office.index)
    before = len(store.notes_for(office.rec))
    # An auditor sees the page and the notes, without the form, and may not note.
    auditor = signed_in(office, office.auditor)
    page = auditor.get(f"/recordings/{office.rec}")
    assert page.status_code == 200 and 'id="notes-heading"' in page.text
    assert 'data-role="note-form"' not in page.text
    r = auditor.post(
        f"/recordings/{office.rec}/notes",
        data={"csrf": csrf_of(page.text), "at_ms": "7000", "text": "auditor"},
        headers=HX,
    )
    assert r.status_code == 403
    # A reviewer out of scope: 404, as for no recording at all; both leave a refusal.
    outsider = signed_in(office, office.outsider)
    token = csrf_of(outsider.get("/").text)
    for rec in (office.rec, "no-such-recording"):
        r = outsider.post(
            f"/recordings/{rec}/notes",
            data={"csrf": token, "at_ms": "7000", "text": "guess"},
            headers=HX,
        )
        assert r.status_code == 404, rec
        assert "guess" not in r.text and office.rec not in r.text
    r = outsider.post(f"/recordings/{office.rec}/reviewed", data={"csrf": token})
    assert r.status_code == 404
    assert len(store.notes_for(office.rec)) == before
    refused = [leaf for leaf in note_leaves(office) if leaf["user"] in {"aud", "olga"}]
    assert [(leaf["user"], leaf["recording_id"]) for leaf in refused] == [
        ("aud", office.rec),
        ("olga", office.rec),
        ("olga", None),
        ("olga", office.rec),
    ]
    assert all(str(leaf["detail"]).startswith("refused") for leaf in refused)
    assert all(rv.reviewer != "olga" for rv in store.reviewed_by(office.rec))


def test_invalid_notes_get_a_400_with_a_clear_message(office: SealedOffice):
    client = signed_in(office, office.reviewer)
    store = NoteStore(office.index)
    before = len(store.notes_for(office.rec))
    leaves_before = len(note_leaves(office))
    duration = int(office.manifest["duration_ms"])
    cases = {
        "x" * (MAX_NOTE_CHARS + 1): (7000, "too long: 2,001 characters, at most 2,000"),
        "late": (duration + 1, "outside the call"),
        "early": (-1, "outside the call"),
        "   ": (7000, "the note is empty"),
    }
    for text, (at_ms, message) in cases.items():
        r = post_note(client, office, text, at_ms)
        assert r.status_code == 400, text[:10]
        assert message in r.text, r.text
        assert 'role="alert"' in r.text
    r = post_note(client, office, "ok", 7000, kind="scribble")
    assert r.status_code == 400 and "a note or a bookmark" in r.text
    # Without htmx: the error page, same status and message.
    page = client.get(f"/recordings/{office.rec}")
    r = client.post(
        f"/recordings/{office.rec}/notes",
        data={"csrf": csrf_of(page.text), "at_ms": "soon", "text": "x"},
    )
    assert r.status_code == 400 and "whole number of milliseconds" in r.text
    assert len(store.notes_for(office.rec)) == before
    assert len(note_leaves(office)) == leaves_before  # nothing was done, nothing logged
    # The store checks the same without the web.
    with pytest.raises(NoteError, match="too long"):
        store.add_note(record_of(office), "rita", 0, "y" * (MAX_NOTE_CHARS + 1))


def test_the_reviewed_mark_records_who_and_when(office: SealedOffice):
    client = signed_in(office, office.reviewer)
    page = client.get(f"/recordings/{office.rec}").text
    assert "Mark as reviewed" in page
    start = datetime.now(UTC) - timedelta(seconds=1)
    r = client.post(
        f"/recordings/{office.rec}/reviewed",
        data={"csrf": csrf_of(page), "reviewed": "1"},
        headers=HX,
    )
    assert r.status_code == 200
    assert "Reviewed by <strong>rita</strong>" in r.text and "Remove my reviewed mark" in r.text
    [mark] = [rv for rv in NoteStore(office.index).reviewed_by(office.rec) if rv.reviewer == "rita"]
    when = datetime.fromisoformat(mark.reviewed_at)
    assert start <= when <= datetime.now(UTC) + timedelta(seconds=1)
    assert leaves(office.index, "access")[-1]["detail"] == "web: reviewed"
    # Shown on the page of another session, with the time.
    other = signed_in(office, office.auditor).get(f"/recordings/{office.rec}").text
    assert "Reviewed by <strong>rita</strong> at " + mark.reviewed_at[:10] in other
    # Unmark, then mark again (a form post without htmx returns to the page).
    token = csrf_of(page)
    r = client.post(f"/recordings/{office.rec}/reviewed", data={"csrf": token, "reviewed": "0"})
    assert r.status_code == 303
    assert NoteStore(office.index).reviewed_by(office.rec) == []
    assert "Not reviewed yet." in client.get(f"/recordings/{office.rec}").text
    r = client.post(f"/recordings/{office.rec}/reviewed", data={"csrf": token, "reviewed": "1"})
    assert r.status_code == 303
    assert [rv.reviewer for rv in NoteStore(office.index).reviewed_by(office.rec)] == ["rita"]


def test_the_history_lists_this_recordings_ledger_entries(office: SealedOffice):
    client = signed_in(office, office.reviewer)
    page = client.get(f"/recordings/{office.rec}").text
    assert f'hx-get="/recordings/{office.rec}/history"' in page
    post_note(client, office, "history check", 12_000)
    client.get(f"/recordings/{office.rec}/audio", headers={"Range": "bytes=0-99"})
    size = len(leaves(office.index))
    r = client.get(f"/recordings/{office.rec}/history", headers=HX)
    assert r.status_code == 200 and "<html" not in r.text
    assert len(leaves(office.index)) == size + 1  # viewing it is a leaf
    viewed = leaves(office.index, "access")[-1]
    assert (viewed["user"], viewed["action"], viewed["recording_id"], viewed["detail"]) == (
        "rita",
        "view_metadata",
        office.rec,
        "web: history",
    )
    rows = ledger_history(office.index, office.rec)
    assert rows[0]["kind"] == "ingest" and rows[0]["recording_id"] == office.rec
    assert all(row["recording_id"] == office.rec for row in rows)
    details = [str(row.get("detail")) for row in rows]
    for expected in (
        "web: recording page",
        "web: note at 00:12",
        "web: play audio",
        "web: history",
    ):
        assert expected in details, expected
        assert expected in r.text, expected
    assert r.text.count('data-kind="ingest"') == 1
    assert r.text.count("<tr data-kind=") == len(rows)
    # Exactly the leaves naming this recording (a search or audit read names none).
    every = [leaf for leaf in leaves(office.index) if leaf.get("recording_id") == office.rec]
    assert len(rows) == len(every)


def test_history_needs_scope(office: SealedOffice):
    outsider = signed_in(office, office.outsider)
    r = outsider.get(f"/recordings/{office.rec}/history", headers=HX)
    assert r.status_code == 404 and "web: history" not in r.text
    leaf = leaves(office.index, "access")[-1]
    assert leaf["user"] == "olga" and str(leaf["detail"]).startswith("refused")
    # The auditor (metadata everywhere) may read it.
    auditor = signed_in(office, office.auditor)
    assert auditor.get(f"/recordings/{office.rec}/history", headers=HX).status_code == 200


def test_notes_of_a_recording_stay_with_it(office: SealedOffice):
    store = NoteStore(office.index)
    assert all(n.recording_id == office.rec for n in store.notes_for(office.rec))
    assert store.notes_for("other-recording") == []
    assert ledger_history(office.index, "other-recording") == []
    assert ledger_history(office.index, office.rec[:-1] + "%") == []


def test_the_store_on_postgresql(office: SealedOffice, pg_dsn: str):  # noqa: F811
    record = record_of(office)  # a record's values: the store needs its id and duration
    with open_index(pg_dsn) as index:
        store = NoteStore(index)
        first = store.add_note(record, "rita", 7000, "on postgres")
        second = store.add_note(record, "rita", 1000, "", "bookmark")
        assert second.id > first.id
        assert [(n.at, n.kind, n.text) for n in store.notes_for(record.recording_id)] == [
            ("00:01", "bookmark", ""),
            ("00:07", "note", "on postgres"),
        ]
        store.mark_reviewed(record.recording_id, "rita")
        store.mark_reviewed(record.recording_id, "rita")  # again: the first time stays
        assert [rv.reviewer for rv in store.reviewed_by(record.recording_id)] == ["rita"]
        store.mark_reviewed(record.recording_id, "rita", reviewed=False)
        assert store.reviewed_by(record.recording_id) == []
        assert ledger_history(index, record.recording_id) == []
