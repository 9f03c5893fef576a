"""The web review's JSON API (issue 16): ``/api/v1``, personal API tokens, and its OpenAPI
document checked by schemathesis against the app itself.

The office is tests/test_web_playback.py's (the real sample call, sealed by ``linetap
replay`` and received by the real receiver), with its device's signing key enrolled (so
the API can report the signature) and two sites: ``hq`` (the sample call's device) and
``branch`` (another device), with a reviewer scoped to each.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import re
import secrets
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
import soundfile
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from headoffice.access import PASSWORD_ENV, TOTP_ENV, USER_ENV, session_name
from headoffice.accounts import Accounts
from headoffice.apitokens import MAX_DAYS, TokenError, TokenStore, token_digest
from headoffice.authz import Role, Scope
from headoffice.cli import main as office_main
from headoffice.index import open_index
from headoffice.index.records import StoredRecord
from headoffice.ledger.store import Ledger, LedgerError
from headoffice.officeroot import CaLayout
from headoffice.web.api_models import RecordingQuery
from headoffice.web.app import create_app
from headoffice.web.notes import NoteStore
from headoffice.web.routes_export import export_name, opus_supported
from headoffice.web.search import SearchFilters
from sealedrec.keys import load_device_key
from tests.office_accounts import (
    CHEAP,
    CHEAP_TOML,
    Login,
    SteppingClock,
    add_account,
    leaves,
    use_clock,
)
from tests.test_office_index import index_url, pg_dsn  # noqa: F401 - fixtures
from tests.test_web import csrf_of, sign_in
from tests.test_web_browser import running_web
from tests.test_web_playback import DEVICE, SealedOffice, build_sealed_office

SITES = {"hq": (DEVICE,), "branch": ("branch-device",)}
API = "/api/v1"
TOKEN_RE = re.compile(r"^lt_[A-Za-z0-9_-]{43}$")
OPUS = opus_supported()  # else an Opus export is a 400
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


class ApiOffice:
    def __init__(self, tmp: Path) -> None:
        self.o: SealedOffice = build_sealed_office(tmp)
        self.cfg = self.o.cfg.model_copy(update={"sites": SITES})
        self.device_key = self.device_public_key(tmp)
        self.enroll_key(self.device_key)
        idx = self.o.index
        self.sam = add_account(  # may export: a supervisor of the sample call's device
            idx, "sam", [Role.SUPERVISOR], Scope(devices=frozenset({DEVICE})), settings=CHEAP
        )
        self.nora = add_account(
            idx,
            "nora",
            [Role.REVIEWER],
            Scope(sites=frozenset({"hq"})),
            settings=CHEAP,
            sites=SITES,
        )
        self.bert = add_account(
            idx,
            "bert",
            [Role.REVIEWER],
            Scope(sites=frozenset({"branch"})),
            settings=CHEAP,
            sites=SITES,
        )
        self.accounts = Accounts(idx, CHEAP, sites=SITES)
        self.tokens = TokenStore(self.accounts)

    @staticmethod
    def device_public_key(tmp: Path) -> bytes:
        [key] = sorted(tmp.glob("*out/keys/device.key"))  # linetap replay's device keys
        return (
            load_device_key(key)
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )

    def enroll_key(self, raw: bytes) -> None:
        """The device's manifest-signing key, as enrolment records it."""
        record = CaLayout(self.o.root).device_record(DEVICE)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(
            json.dumps({"device_id": DEVICE, "signing_key": base64.b64encode(raw).decode()})
        )

    @property
    def rec(self) -> str:
        return self.o.rec

    def record(self) -> StoredRecord:
        record = self.o.index.get(self.rec)
        assert record is not None
        return record

    def app(self) -> FastAPI:
        accounts = Accounts(self.o.index, self.cfg.accounts, sites=SITES)
        return create_app(self.cfg, self.o.index, self.o.store, accounts=accounts)

    def client(self, token: str | None = None) -> TestClient:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        return TestClient(self.app(), headers=headers, follow_redirects=False)

    def token(self, name: str, label: str = "test") -> str:
        return self.tokens.create(name, label).token

    def access(self) -> list[dict[str, Any]]:
        return leaves(self.o.index, "access")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiOffice]:
    o = ApiOffice(tmp_path_factory.mktemp("api"))
    yield o
    o.o.index.close()


def error_of(r: Any, status: int) -> dict[str, Any]:
    """The JSON error body of ``r``, which must have ``status``."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/json"
    body: dict[str, Any] = r.json()
    assert set(body) == {"error", "detail"} and body["error"], body
    assert "Traceback" not in r.text
    return body


# -- tokens -----------------------------------------------------------------------------------
def test_a_token_acts_as_its_account_and_only_its_hash_is_kept(api: ApiOffice):
    before = datetime.now(UTC)
    new = api.tokens.create("rita", "nightly export")
    assert TOKEN_RE.fullmatch(new.token), new.token
    assert len(base64.urlsafe_b64decode(new.token[3:] + "=")) == 32
    digest = hashlib.sha256(new.token.encode()).hexdigest()
    with api.o.index.transaction(False) as q:
        rows = q("SELECT * FROM api_tokens", ())
    assert digest in {row[0] for row in rows}
    assert all(new.token not in str(cell) for row in rows for cell in row)
    created = datetime.fromisoformat(new.info.created_at)
    assert datetime.fromisoformat(new.info.expires_at) - created == timedelta(days=90)
    assert new.info.last_used_at is None

    r = api.client(new.token).get(f"{API}/me")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "name": "rita",
        "roles": ["reviewer"],
        "scope": {"everything": False, "sites": [], "devices": [DEVICE], "lines": []},
        "auth": "token",
        "token": {
            "id": digest[:16],
            "label": "nightly export",
            "created_at": new.info.created_at,
            "expires_at": new.info.expires_at,
        },
    }
    leaf = api.access()[-1]
    assert (leaf["user"], leaf["action"], leaf["detail"]) == ("rita", "whoami", "api: me")
    assert leaf["session"] == digest[:16] == session_name(new.token)
    [info] = [t for t in api.tokens.tokens_of("rita") if t.token_sha256 == digest]
    assert info.last_used_at is not None
    assert before <= datetime.fromisoformat(info.last_used_at) <= datetime.now(UTC)


def test_a_revoked_or_expired_token_gets_401(api: ApiOffice):
    new = api.tokens.create("rita", "to revoke")
    client = api.client(new.token)
    assert client.get(f"{API}/me").status_code == 200
    api.tokens.revoke(api.tokens.find(new.info.id[:10]))
    size = len(api.access())
    r = client.get(f"{API}/recordings/{api.rec}")
    body = error_of(r, 401)
    assert "revoked or expired" in body["error"] and "token create" in body["detail"]
    assert r.headers["www-authenticate"] == "Bearer"
    assert api.rec not in r.text
    with pytest.raises(TokenError, match="revoked already"):
        api.tokens.revoke(new.info)
    # Made two days ago for one day: expired.
    past = TokenStore(api.accounts, clock=lambda: datetime.now(UTC) - timedelta(days=2))
    old = past.create("rita", "expired", days=1)
    error_of(api.client(old.token).get(f"{API}/me"), 401)
    # Not a token at all, a wrong scheme, nothing: 401 too.
    for headers in (
        {"Authorization": "Bearer lt_" + "A" * 43},
        {"Authorization": "Bearer " + "x" * 5000},
        {"Authorization": f"Basic {new.token}"},
        {},
    ):
        r = TestClient(api.app()).get(f"{API}/recordings", headers=headers)
        error_of(r, 401)
    assert len(api.access()) == size  # nobody was authenticated: nothing was accessed


def test_a_disabled_account_s_tokens_stop_and_roles_apply_at_once(api: ApiOffice):
    add_account(api.o.index, "dora", [Role.REVIEWER], settings=CHEAP)
    client = api.client(api.token("dora"))
    assert client.get(f"{API}/me").json()["roles"] == ["reviewer"]
    api.accounts.set_roles("dora", [Role.AUDITOR])
    assert client.get(f"{API}/me").json()["roles"] == ["auditor"]
    api.accounts.disable("dora")
    error_of(client.get(f"{API}/me"), 401)
    with pytest.raises(TokenError, match="disabled"):
        api.tokens.create("dora", "again")


def test_token_limits(api: ApiOffice):
    for label, days, message in (
        ("", 30, "label"),
        ("x" * 101, 30, "label"),
        ("tab\there", 30, "label"),
        ("ok", 0, "1 to 365 days"),
        ("ok", MAX_DAYS + 1, "1 to 365 days"),
    ):
        with pytest.raises(TokenError, match=message):
            api.tokens.create("rita", label, days)
    with pytest.raises(TokenError, match="no user 'nobody'"):
        api.tokens.create("nobody", "x")
    year = api.tokens.create("rita", "a year", MAX_DAYS).info
    span = datetime.fromisoformat(year.expires_at) - datetime.fromisoformat(year.created_at)
    assert span == timedelta(days=365)
    for ref in ("abc", "zzzzzzzzzz", "0" * 64):
        with pytest.raises(TokenError):
            api.tokens.find(ref)


# -- scope and the ledger ---------------------------------------------------------------------
def test_a_reviewer_of_another_site_gets_404_and_a_leaf(api: ApiOffice):
    bert = api.client(api.token("bert"))
    size = len(api.access())
    for path in ("", "/notes"):
        body = error_of(bert.get(f"{API}/recordings/{api.rec}{path}"), 404)
        assert body["error"] == "There is no such recording."
    missing = error_of(bert.get(f"{API}/recordings/no-such-recording"), 404)
    assert missing == body  # out of scope and missing answer alike
    refused = api.access()[size:]
    assert [(x["user"], x["action"], x["recording_id"]) for x in refused] == [
        ("bert", "view_metadata", api.rec),
        ("bert", "view_metadata", api.rec),
        ("bert", "view_metadata", None),
    ]
    assert all(str(x["detail"]).startswith("refused: out of scope") for x in refused[:2])
    r = bert.get(f"{API}/recordings")
    assert r.status_code == 200 and r.json()["total"] == 0 and r.json()["items"] == []
    # The reviewer of the recording's own site sees it.
    nora = api.client(api.token("nora"))
    assert nora.get(f"{API}/recordings/{api.rec}").status_code == 200
    assert nora.get(f"{API}/recordings").json()["total"] == 1


def test_every_read_appends_its_leaf_before_its_answer(
    api: ApiOffice, monkeypatch: pytest.MonkeyPatch
):
    token = api.token("sam")
    client = api.client(token)
    rec = api.rec
    reads = {
        f"{API}/recordings?device={DEVICE}&per_page=25": (
            "search",
            None,
            f"device={DEVICE}&page_size=25",
        ),
        f"{API}/recordings/{rec}": ("view_metadata", rec, "api: recording"),
        f"{API}/recordings/{rec}/notes": ("view_metadata", rec, "api: notes"),
        f"{API}/recordings/{rec}/audio?format=flac": ("export", rec, "api: export flac"),
        f"{API}/me": ("whoami", None, "api: me"),
    }
    for url, (action, rid, detail) in reads.items():
        size = len(api.access())
        r = client.get(url)
        assert r.status_code == 200, (url, r.text)
        new = api.access()[size:]
        assert len(new) == 1, url
        [leaf] = new
        assert (leaf["user"], leaf["action"], leaf["recording_id"], leaf["detail"]) == (
            "sam",
            action,
            rid,
            detail,
        )
        assert leaf["session"] == session_name(token)

    def refuse(self: Ledger, leaf: Any) -> int:
        raise LedgerError("the ledger's disk is full")

    # A ledger that cannot take the leaf: nothing of the recording is sent.
    monkeypatch.setattr(Ledger, "append", refuse)
    for url in reads:
        r = client.get(url)
        body = error_of(r, 403)
        assert "could not be logged" in body["error"] + str(body["detail"]), body
        assert "blob_sha256" not in r.text and DEVICE not in r.text


# -- the endpoints ----------------------------------------------------------------------------
SUMMARY_FIELDS = (
    "recording_id",
    "device_id",
    "line",
    "seq",
    "started_utc",
    "ended_utc",
    "duration_ms",
    "caller_number",
    "caller_name",
    "dialled_digits",
    "direction",
    "recovered",
    "discarded",
    "codec",
    "blob_bytes",
)


def marks_of(api: ApiOffice) -> dict[str, Any]:
    """The recording's review marks, from the stores (no hold or evaluation here)."""
    store = NoteStore(api.o.index)
    return {
        "notes": len(store.notes_for(api.rec)),
        "reviewed": bool(store.reviewed_by(api.rec)),
        "on_hold": False,
        "score_bp": None,
        "failed": False,
    }


def test_the_api_search_has_every_filter_of_the_search_page():
    mine = set(RecordingQuery.model_fields) - {"per_page"}
    assert mine == set(SearchFilters.model_fields) - {"page_size"}


def test_search_filters_and_pages(api: ApiOffice):
    client = api.client(api.token("rita"))
    record = api.record().as_dict()
    NoteStore(api.o.index).add_note(api.record(), "rita", 500, "a note to count")
    r = client.get(f"{API}/recordings")
    assert r.status_code == 200
    marks = marks_of(api)
    assert marks["notes"] >= 1
    assert r.json() == {
        "items": [{**{k: record[k] for k in SUMMARY_FIELDS}, "marks": marks}],
        "total": 1,
        "page": 1,
        "pages": 1,
        "per_page": 50,
    }
    assert r.json()["items"][0]["caller_number"] == api.o.manifest["caller_id"]["number"]
    for query, total in (
        (f"device={DEVICE}", 1),
        ("device=elsewhere", 0),
        ("site=hq", 1),
        ("site=branch", 0),
        (f"caller={api.o.manifest['caller_id']['number'][-4:]}", 1),
        ("since=2099-01-01", 0),
        ("min_duration=100000", 0),
        ("has_notes=true", 1),
        ("has_notes=false", 0),
        ("on_hold=true", 0),
        ("min_score=0", 0),
    ):
        assert client.get(f"{API}/recordings?{query}").json()["total"] == total, query
    r = client.get(f"{API}/recordings?page=2&per_page=100")
    assert r.json() | {"items": None} == {
        "items": None,
        "total": 1,
        "page": 2,
        "pages": 1,
        "per_page": 100,
    }
    assert r.json()["items"] == []
    body = error_of(client.get(f"{API}/recordings?per_page=30"), 422)
    assert body["detail"][0]["loc"] == ["query", "per_page"]
    body = error_of(client.get(f"{API}/recordings?devise=x"), 422)  # a misspelt filter
    assert body["detail"][0]["loc"] == ["query", "devise"]
    body = error_of(client.get(f"{API}/recordings?since=2026-12-01&until=2026-11-01"), 400)
    assert body["detail"] == "until" and "later than since" in body["error"]
    body = error_of(client.get(f"{API}/recordings?since=yesterday"), 400)
    assert body["detail"] == "since"
    error_of(client.get(f"{API}/recordings?caller=a%01b"), 400)
    error_of(client.get(f"{API}/recordings?caller=" + "x" * 201), 422)
    # An admin alone may not search at all.
    add_account(api.o.index, "ada", [Role.ADMIN], settings=CHEAP)
    body = error_of(api.client(api.token("ada")).get(f"{API}/recordings"), 403)
    assert "may not search" in body["error"]


def test_one_recording_with_its_verification(api: ApiOffice):
    client = api.client(api.token("rita"))
    r = client.get(f"{API}/recordings/{api.rec}?check_blob=true")
    assert r.status_code == 200, r.text
    doc = r.json()
    record = api.record()
    assert {k: doc[k] for k in SUMMARY_FIELDS} == {k: getattr(record, k) for k in SUMMARY_FIELDS}
    assert (doc["container"], doc["blob_sha256"], doc["stored_at"]) == (
        record.container,
        record.blob_sha256,
        record.stored_at,
    )
    assert doc["manifest"] == api.o.manifest
    assert doc["marks"] == marks_of(api)
    assert doc["masked_spans"] == api.o.manifest["masked_spans"] and len(doc["masked_spans"]) > 1
    assert doc["verification"] == {
        "signature": "valid",
        "index_matches_manifest": True,
        "blob": "ok",
        "problems": [],
    }
    assert doc["may"] == {"listen": True, "export": False, "note": True}
    assert client.get(f"{API}/recordings/{api.rec}").json()["verification"]["blob"] == "not_checked"
    aud = api.client(api.token("aud")).get(f"{API}/recordings/{api.rec}").json()
    assert aud["may"] == {"listen": False, "export": False, "note": False}
    # Another key enrolled for the device: the signature no longer holds.
    other = Ed25519PrivateKey.generate().public_key()
    api.enroll_key(other.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    try:
        bad = client.get(f"{API}/recordings/{api.rec}").json()["verification"]
    finally:
        api.enroll_key(api.device_key)
    assert bad["signature"] == "invalid" and bad["problems"], bad
    error_of(client.get(f"{API}/recordings/-not-an-id"), 422)
    error_of(client.get(f"{API}/recordings/{'a' * 129}"), 422)


def decoded(content: bytes) -> np.ndarray:
    samples, rate = soundfile.read(io.BytesIO(content), dtype="int16")
    assert rate == 8000
    return np.asarray(samples)


def test_audio_needs_the_export_right_and_is_the_recording(api: ApiOffice):
    sam = api.client(api.token("sam"))
    record = api.record()
    expected = api.o.samples()
    for fmt, mime in (("flac", "audio/flac"), ("wav", "audio/wav")):
        r = sam.get(f"{API}/recordings/{api.rec}/audio?format={fmt}")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == mime
        assert r.headers["content-disposition"] == (
            f'attachment; filename="{export_name(record, fmt)}"'
        )
        np.testing.assert_array_equal(decoded(r.content), expected)
    assert sam.get(f"{API}/recordings/{api.rec}/audio").headers["content-type"] == "audio/flac"
    error_of(sam.get(f"{API}/recordings/{api.rec}/audio?format=mp3"), 422)
    # A reviewer may listen in the page but not take the file: 403, logged.
    size = len(api.access())
    body = error_of(api.client(api.token("rita")).get(f"{API}/recordings/{api.rec}/audio"), 403)
    assert "may not export" in body["error"]
    [leaf] = api.access()[size:]
    assert (leaf["user"], leaf["action"], leaf["recording_id"]) == ("rita", "export", api.rec)
    assert str(leaf["detail"]).startswith("refused")


def test_notes_read_and_write(api: ApiOffice):
    client = api.client(api.token("rita"))
    url = f"{API}/recordings/{api.rec}/notes"
    r = client.post(url, json={"at_ms": 7000, "text": "  asks for a refund  "})
    assert r.status_code == 201, r.text
    note = r.json()
    assert {k: note[k] for k in ("recording_id", "author", "at_ms", "at", "kind", "text")} == {
        "recording_id": api.rec,
        "author": "rita",
        "at_ms": 7000,
        "at": "00:07",
        "kind": "note",
        "text": "asks for a refund",
    }
    assert api.access()[-1]["detail"] == "api: note at 00:07"
    [stored] = [n for n in NoteStore(api.o.index).notes_for(api.rec) if n.id == note["id"]]
    assert (stored.author, stored.text, stored.at_ms) == ("rita", "asks for a refund", 7000)
    listed = client.get(url).json()["items"]
    assert note in listed
    r = client.post(url, json={"at_ms": 1500, "kind": "bookmark"})
    assert r.status_code == 201 and r.json()["kind"] == "bookmark"

    duration = int(api.o.manifest["duration_ms"])
    size, notes = len(api.access()), len(NoteStore(api.o.index).notes_for(api.rec))
    for body, status, words in (
        ({"at_ms": duration + 1, "text": "late"}, 400, "outside the call"),
        ({"at_ms": 0, "text": "x" * 2001}, 400, "too long"),
        ({"at_ms": 0, "text": "   "}, 400, "empty"),
        ({"at_ms": 0, "text": "nul\x00here"}, 422, "control characters"),
        ({"at_ms": 0, "text": "x", "kind": "scribble"}, 422, "kind"),
        ({"at_ms": -1, "text": "x"}, 422, "at_ms"),
        ({"text": "no position"}, 422, "at_ms"),
        ({"at_ms": 0, "text": "x", "colour": "red"}, 422, "colour"),
    ):
        error = error_of(client.post(url, json=body), status)
        assert words in error["error"], (body, error)
    assert len(api.access()) == size  # nothing done, nothing logged
    assert len(NoteStore(api.o.index).notes_for(api.rec)) == notes
    # An auditor may read notes (metadata) but not write them; out of scope: 404.
    aud = api.client(api.token("aud"))
    assert aud.get(url).status_code == 200
    error_of(aud.post(url, json={"at_ms": 0, "text": "audit"}), 403)
    error_of(api.client(api.token("olga")).post(url, json={"at_ms": 0, "text": "x"}), 404)
    assert [x["user"] for x in api.access()[size:]] == ["aud", "aud", "olga"]


def test_a_session_post_needs_the_csrf_header_a_token_post_does_not(api: ApiOffice):
    browser = TestClient(api.app(), follow_redirects=False)
    sign_in(browser, api.o.reviewer)
    url = f"{API}/recordings/{api.rec}/notes"
    assert browser.get(f"{API}/me").json()["auth"] == "session"
    assert browser.get(url).status_code == 200  # reading needs no CSRF token
    notes = len(NoteStore(api.o.index).notes_for(api.rec))
    body = {"at_ms": 2000, "text": "from the browser"}
    for headers in ({}, {"X-CSRF-Token": "0" * 64}):
        error = error_of(browser.post(url, json=body, headers=headers), 403)
        assert "CSRF" in error["error"]
    assert len(NoteStore(api.o.index).notes_for(api.rec)) == notes
    token = csrf_of(browser.get("/").text)
    r = browser.post(url, json=body, headers={"X-CSRF-Token": token})
    assert r.status_code == 201, r.text
    r = api.client(api.token("rita")).post(url, json={"at_ms": 2500, "text": "from a script"})
    assert r.status_code == 201, r.text
    assert len(NoteStore(api.o.index).notes_for(api.rec)) == notes + 2
    stored = {(n.author, n.at_ms, n.text) for n in NoteStore(api.o.index).notes_for(api.rec)}
    assert {("rita", 2000, "from the browser"), ("rita", 2500, "from a script")} <= stored


def test_the_openapi_document_holds_the_api_only(api: ApiOffice):
    client = TestClient(api.app())
    r = client.get(f"{API}/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert sorted(doc["paths"]) == [
        "/me",
        "/recordings",
        "/recordings/{recording_id}",
        "/recordings/{recording_id}/audio",
        "/recordings/{recording_id}/notes",
    ]
    assert doc["servers"] == [{"url": API}]
    assert doc["components"]["securitySchemes"]["apiToken"] | {"description": ""} == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "lt_ + 43 URL-safe base64 characters",
        "description": "",
    }
    operations = [op for path in doc["paths"].values() for op in path.values()]
    assert len(operations) == 6
    assert all(op["security"] == [{"apiToken": []}] for op in operations)
    assert all("401" in op["responses"] for op in operations)
    assert client.get("/openapi.json").status_code == 404  # the pages have none
    error_of(client.get(f"{API}/no-such-thing"), 404)


def test_odd_paths_get_json_errors_too(api: ApiOffice):
    """Found by schemathesis: a line break in the path once fell out of the API's mount
    into the pages' HTML 404."""
    client = api.client(api.token("rita"))
    error_of(client.get(f"{API}/recordings/a%0Ab/notes"), 422)
    error_of(client.post(f"{API}/recordings/%0A/notes", json={"at_ms": 0}), 422)
    error_of(client.get(f"{API}/x%0Ay"), 404)
    error_of(client.get(f"{API}/recordings/{api.rec}/notes/extra"), 404)
    error_of(client.delete(f"{API}/recordings/{api.rec}/notes"), 405)


# -- the command line -------------------------------------------------------------------------
def test_token_commands(
    api: ApiOffice,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    monkeypatch.setattr(sys, "stdin", io.StringIO())  # not a terminal: nobody is asked
    conf = tmp_path / "office.toml"
    conf.write_text(f'root = "{api.o.root}"\n{CHEAP_TOML}')
    clock = use_clock(monkeypatch, SteppingClock())
    boss = add_account(api.o.index, "boss", [Role.ADMIN], settings=CHEAP, clock=clock)

    def run(login: Login, *argv: str) -> tuple[int, str, str]:
        for key in (USER_ENV, PASSWORD_ENV, TOTP_ENV):
            monkeypatch.delenv(key, raising=False)
        login.apply(monkeypatch)
        code = office_main(["user", "token", *argv, "--config", str(conf)])
        out, err = capsys.readouterr()
        return code, out, err

    rita = api.o.reviewer
    code, out, err = run(rita, "create", "rita", "--label", "cron job")
    assert code == 0, err
    [token] = [line for line in out.splitlines() if TOKEN_RE.fullmatch(line)]
    assert api.client(token).get(f"{API}/me").json()["name"] == "rita"
    tid = token_digest(token)[:16]
    # rita may not make (or see) tokens of others: refused and logged.
    code, out, err = run(rita, "create", "sam", "--label", "for sam")
    assert (code, out) == (1, "") and "only sam can create tokens for sam" in err
    code, out, err = run(rita, "list", "sam")
    assert (code, out) == (1, "") and "may not manage_users" in err
    assert api.access()[-1]["user"] == "rita" and api.access()[-1]["detail"].startswith("refused")
    # Not even the admin may make a token for another account: it would borrow rights
    # (sam's listen and export) that an admin does not have. Only sam makes sam's.
    code, out, err = run(boss, "create", "sam", "--label", "backup")
    assert (code, out) == (1, "") and "only sam can create tokens for sam" in err
    sam = dataclasses.replace(api.sam, clock=clock)
    code, out, err = run(sam, "create", "sam", "--label", "backup", "--days", "7")
    assert code == 0, err
    [sam_token] = [line for line in out.splitlines() if TOKEN_RE.fullmatch(line)]
    assert api.client(sam_token).get(f"{API}/me").json()["name"] == "sam"
    # Lists: one's own by default; the admin's, everyone's.
    code, out, _ = run(rita, "list", "--json")
    mine = json.loads(out)["tokens"]
    assert code == 0 and {t["user"] for t in mine} == {"rita"} and tid in {t["id"] for t in mine}
    assert [t["state"] for t in mine if t["id"] == tid] == ["active"]
    code, out, _ = run(boss, "list", "--json")
    users = {t["user"] for t in json.loads(out)["tokens"]}
    assert code == 0 and {"rita", "sam"} <= users
    code, out, _ = run(boss, "list")
    assert code == 0 and tid in out and "backup" in out and token not in out
    # rita may not revoke sam's; she revokes hers by a prefix of its id.
    assert run(rita, "revoke", token_digest(sam_token)[:12])[0] == 1
    code, out, err = run(rita, "revoke", tid[:10])
    assert code == 0 and f"API token {tid} of rita" in out, err
    error_of(api.client(token).get(f"{API}/me"), 401)
    assert api.client(sam_token).get(f"{API}/me").status_code == 200
    code, _, err = run(rita, "revoke", tid[:10])
    assert code == 1 and "revoked already" in err
    # Each creation and revocation is an admin leaf naming the id, never the token.
    changes = [
        (x["user"], x["action"], x["subject"], x["detail"].split(";")[0])
        for x in leaves(api.o.index, "admin")
        if x["action"].startswith("api_token")
    ]
    assert changes == [
        ("rita", "api_token_created", "rita", f"token {tid}"),
        ("sam", "api_token_created", "sam", f"token {token_digest(sam_token)[:16]}"),
        ("rita", "api_token_revoked", "rita", f"token {tid}"),
    ]
    ledger = json.dumps(leaves(api.o.index))
    assert token not in ledger and sam_token not in ledger


# -- the store on both backends ---------------------------------------------------------------
def test_the_token_store(index_url: str):  # noqa: F811 - the imported fixture
    with open_index(index_url) as index:
        name = f"pat-{secrets.token_hex(3)}"
        add_account(index, name, [Role.REVIEWER], settings=CHEAP)
        store = TokenStore(Accounts(index, CHEAP))
        first = store.create(name, "one", days=3)
        second = store.create(name, "two")
        use = store.authenticate(first.token)
        assert use is not None and use.principal.name == name
        assert use.info.token_sha256 == token_digest(first.token) and use.info.last_used_at
        assert store.find(first.info.id[:8]).token_sha256 == first.info.token_sha256
        assert store.find(second.token).label == "two"
        assert [t.label for t in store.tokens_of(name)] == ["one", "two"]
        assert store.tokens_of("nobody-else") == []
        revoked = store.revoke(store.find(first.info.id))
        assert revoked.revoked_at is not None
        assert revoked.state(store.now()) == "revoked"
        assert store.authenticate(first.token) is None
        assert store.authenticate(second.token) is not None
        assert store.authenticate(second.token[:-1] + "x") is None
        assert store.authenticate("not-a-token") is None


# -- the OpenAPI document, checked by schemathesis --------------------------------------------
def test_the_api_keeps_to_its_openapi_document(api: ApiOffice, tmp_path: Path):
    """Generated requests, valid and not, to every operation of the real server
    (``linetap-office web`` over this office), as supervisor sam, who may do all of them:
    no 5xx, only documented status codes and content types, bodies that match their
    schemas. A case with a recording id is sent again for the real recording, so the
    answers with data are checked too, not only the 404s.

    Over HTTP rather than schemathesis's in-process ASGI transport: that one keeps an
    event loop and its worker threads for the rest of the process, which the suite's
    guard against left-behind threads (rightly) refuses. The cases come from the schema's
    own strategies under ``@given``."""
    sites = "".join(f"{name} = {json.dumps(list(devs))}\n" for name, devs in SITES.items())
    headers = {"Authorization": f"Bearer {api.token('sam', 'schemathesis')}"}
    seen: dict[str, set[int]] = {}
    with running_web(tmp_path, api.o, extra_toml=f"[sites]\n{sites}") as (base, _config):
        schema = schemathesis.openapi.from_url(f"{base}{API}/openapi.json")
        strategy = st.one_of(
            schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE)
        )

        @given(case=strategy)
        @settings(
            max_examples=120,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def conforms(case: schemathesis.Case[Any]) -> None:
            codes = seen.setdefault(f"{case.method} {case.path}", set())
            r = case.call_and_validate(base_url=base + API, headers=headers, checks=CHECKS)
            codes.add(r.status_code)
            if case.path_parameters and "recording_id" in case.path_parameters:
                case.path_parameters["recording_id"] = api.rec
                r = case.call_and_validate(base_url=base + API, headers=headers, checks=CHECKS)
                codes.add(r.status_code)

        conforms()
        # Answers random data rarely reaches, checked all the same.
        rid = {"recording_id": api.rec}
        notes = schema["/recordings/{recording_id}/notes"]["POST"]
        audio = schema["/recordings/{recording_id}/audio"]["GET"]
        for case, status in (
            (notes.Case(path_parameters=rid, body={"at_ms": 1000, "text": "checked"}), 201),
            (audio.Case(path_parameters=rid, query={"format": "wav"}), 200),
            (audio.Case(path_parameters=rid, query={"format": "opus"}), 200 if OPUS else 400),
        ):
            r = case.call_and_validate(base_url=base + API, headers=headers, checks=CHECKS)
            assert r.status_code == status, r.text
    assert len(seen) == 6, seen  # every operation was tried
    assert all(200 in codes for op, codes in seen.items() if op.startswith("GET")), seen
