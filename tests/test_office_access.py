"""The office command line acts as a named account, and every access is authorized and
logged before bytes leave (issue 15), through the real CLI (``linetap-office ...``) over
a store of real sealed recordings (tests/test_office_query.py's) plus one recording of
another device.
"""

from __future__ import annotations

import io
import json
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import soundfile
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from headoffice.access import PASSWORD_ENV, TOTP_ENV, USER_ENV
from headoffice.authz import Role, Scope
from headoffice.cli import main as office_main
from sealedrec import durable
from tests.helpers import signed_manifest
from tests.office_accounts import (
    CHEAP,
    CHEAP_TOML,
    Login,
    SteppingClock,
    add_account,
    leaves,
    use_clock,
)
from tests.test_office_query import DEVICE, Office, make_office, sealed  # noqa: F401 - fixture

OTHER = "other-device"
OTHER_REC = "0f7e0c2a-other-device-rec"


@dataclass
class World:
    o: Office
    conf: Path
    rev: Login  # reviewer, scope: DEVICE only
    sup: Login  # supervisor of the whole office (TOTP)
    adm: Login  # admin only (TOTP)
    capsys: pytest.CaptureFixture[str]
    monkeypatch: pytest.MonkeyPatch

    def run(self, login: Login | None, *argv: str) -> tuple[int, str, str]:
        for key in (USER_ENV, PASSWORD_ENV, TOTP_ENV):
            self.monkeypatch.delenv(key, raising=False)
        if login is not None:
            login.apply(self.monkeypatch)
        code = office_main([*argv, "--config", str(self.conf)])
        captured = self.capsys.readouterr()
        return code, captured.out, captured.err

    def access(self, **match: Any) -> list[dict[str, Any]]:
        return [
            leaf
            for leaf in leaves(self.o.index, "access")
            if all(leaf.get(k) == v for k, v in match.items())
        ]

    @property
    def recs(self) -> list[str]:
        return [m["recording_id"] for m in self.o.manifests]


@pytest.fixture
def world(
    tmp_path: Path,
    sealed,  # noqa: F811 - the imported fixture
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(sys, "stdin", io.StringIO())  # not a terminal: nobody is asked
    o = make_office(tmp_path, sealed)
    key = Ed25519PrivateKey.generate()
    m = signed_manifest(key, device_id=OTHER, rec=OTHER_REC, seq=1, prev="0" * 64, blob=b"x")
    o.index.add(m, f"blobs/{OTHER}/2026/11/25/{OTHER_REC}.age")
    conf = tmp_path / "office.toml"
    conf.write_text(f'root = "{o.store.root}"\n{CHEAP_TOML}')
    clock = use_clock(monkeypatch, SteppingClock())
    adm = add_account(o.index, "adm", [Role.ADMIN], settings=CHEAP, clock=clock)
    rev = add_account(
        o.index, "rev", [Role.REVIEWER], Scope(devices=frozenset({DEVICE})), settings=CHEAP
    )
    sup = add_account(o.index, "sup", [Role.SUPERVISOR], Scope.all(), settings=CHEAP, clock=clock)
    yield World(o, conf, rev, sup, adm, capsys, monkeypatch)
    o.index.close()


def test_no_credentials_is_a_one_line_refusal(world: World):
    for argv in (["ls"], ["show", world.recs[0]], ["verify"], ["user", "list"]):
        code, out, err = world.run(None, *argv)
        assert (code, out) == (1, ""), argv
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert "acts as a named account" in err and USER_ENV in err
    wrong = Login("rev", "not the password at all")
    code, _, err = world.run(wrong, "ls")
    assert code == 1 and err.count("\n") == 1 and "login as rev refused" in err
    assert world.access() == []  # nobody logged in: nothing was accessed


def test_reviewer_sees_only_its_scope(world: World):
    code, out, _ = world.run(world.rev, "ls", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["count"] == 3 and {r["device_id"] for r in doc["recordings"]} == {DEVICE}
    code, out, _ = world.run(world.rev, "ls", "--device", OTHER)
    assert (code, out) == (0, "no recordings match\n")
    [search, _] = world.access(user="rev", action="search")
    assert search["detail"] == "ls limit=1000" and search["recording_id"] is None

    # show of another device's recording: exactly what an unknown id gets, and logged.
    code, out, err = world.run(world.rev, "show", OTHER_REC)
    _, _, unknown = world.run(world.rev, "show", "no-such-recording-id")
    assert (code, out) == (1, "")
    assert err == f"linetap-office: error: no recording {OTHER_REC!r} in the index\n"
    assert unknown == err.replace(OTHER_REC, "no-such-recording-id")
    [refusal] = world.access(user="rev", recording_id=OTHER_REC)
    assert refusal["action"] == "view_metadata"
    assert refusal["detail"].startswith("refused: out of scope")
    # A prefix never matches a hidden recording (nor makes another ambiguous).
    code, _, err = world.run(world.rev, "show", OTHER_REC[:12])
    assert code == 1 and "no recording" in err
    # verify leaves the other device out, as if absent.
    code, out, _ = world.run(world.rev, "verify", "--json")
    checked = json.loads(out)["recordings"]
    assert {r["device_id"] for r in checked} == {DEVICE}
    code, _, err = world.run(world.rev, "verify", "--device", OTHER)
    assert code == 1 and f"device {OTHER!r} has no recordings" in err


def test_reviewer_export_is_refused_and_nothing_written(world: World, office, tmp_path: Path):
    wav = tmp_path / "r.wav"
    code, out, err = world.run(
        world.rev, "export", world.recs[0], "-i", str(office[0]), "-o", str(wav)
    )
    assert (code, out) == (1, "") and err.count("\n") == 1
    assert "rev may not export" in err and "Traceback" not in err
    assert not wav.exists() and not list(tmp_path.glob(".r.wav*"))
    [refusal] = world.access(user="rev", action="export")
    assert refusal["recording_id"] == world.recs[0] and refusal["detail"].startswith("refused")
    # verify --identity decrypts audio: the export right again, refused before any decrypt.
    code, _, err = world.run(world.rev, "verify", "-i", str(office[0]))
    assert code == 1 and "may not export" in err
    assert len(world.access(user="rev", action="export")) == 2


def test_supervisor_export_is_logged_before_the_file_appears(world: World, office, tmp_path: Path):
    wav = tmp_path / "s.wav"
    rec = world.recs[0]
    # At the moment the output file is opened, the export's leaf must already be in the
    # ledger (a file's mtime cannot show the order: the kernel stamps it from a coarse
    # clock that can lag the leaf's time by milliseconds).
    seen_at_open: list[int] = []
    real_atomic_file = durable.atomic_file

    def watching_atomic_file(path: Path, **kwargs: Any) -> Any:
        seen_at_open.append(len(world.access(user="sup", action="export")))
        return real_atomic_file(path, **kwargs)

    world.monkeypatch.setattr("headoffice.export.atomic_file", watching_atomic_file)
    code, out, err = world.run(world.sup, "export", rec, "-i", str(office[0]), "-o", str(wav))
    assert code == 0, err
    assert seen_at_open == [1]
    assert soundfile.info(wav).frames == world.o.manifests[0]["audio_frames"]
    [leaf] = world.access(user="sup", action="export")
    assert leaf["recording_id"] == rec and leaf["roles"] == ["supervisor"]
    assert leaf["client"].startswith("cli:") and leaf["session"]

    # A failed append refuses the access: with the ledger refusing inserts, nothing leaves.
    db = sqlite3.connect(world.o.url.removeprefix("sqlite:///"))
    with db:
        db.execute(
            "CREATE TRIGGER ledger_full BEFORE INSERT ON ledger "
            "BEGIN SELECT RAISE(ABORT, 'ledger unavailable'); END"
        )
    db.close()
    before = len(leaves(world.o.index))
    refused = tmp_path / "refused.wav"
    code, out, err = world.run(world.sup, "export", rec, "-i", str(office[0]), "-o", str(refused))
    assert (code, out) == (1, "") and err.count("\n") == 1
    assert "could not be logged" in err and "Traceback" not in err
    assert not refused.exists() and not list(tmp_path.glob(".refused.wav*"))
    code, out, err = world.run(world.sup, "show", rec)
    assert (code, out) == (1, "") and "could not be logged" in err
    code, out, err = world.run(world.sup, "ls")
    assert (code, out) == (1, "") and "could not be logged" in err
    assert len(leaves(world.o.index)) == before


def test_admin_cannot_see_recordings(world: World):
    code, out, err = world.run(world.adm, "show", world.recs[0])
    assert (code, out) == (1, "")
    assert err == f"linetap-office: error: no recording {world.recs[0]!r} in the index\n"
    code, out, err = world.run(world.adm, "ls")
    assert (code, out) == (1, "") and "adm may not search" in err
    assert [leaf["detail"].split(":")[0] for leaf in world.access(user="adm")] == [
        "refused",
        "refused",
    ]


def test_every_allowed_show_adds_exactly_one_access_leaf(world: World):
    for n, rec in enumerate([*world.recs, world.recs[0]], start=1):
        before = len(leaves(world.o.index))
        code, out, _ = world.run(world.rev, "show", rec[:13] if n == 2 else rec)
        assert code == 0 and rec in out
        after = leaves(world.o.index)
        assert len(after) == before + 1
        assert after[-1]["kind"] == "access" and after[-1]["user"] == "rev"
        assert (after[-1]["action"], after[-1]["recording_id"]) == ("view_metadata", rec)
    assert len(world.access(user="rev", action="view_metadata")) == 4


def test_user_commands_need_an_admin_and_are_logged(world: World, monkeypatch):
    monkeypatch.setenv("LINETAP_OFFICE_NEW_PASSWORD", "another long passphrase")
    code, _, err = world.run(world.rev, "user", "add", "eve", "--role", "admin")
    assert code == 1 and "rev may not manage_users" in err and err.count("\n") == 1
    code, out, err = world.run(world.sup, "user", "list")
    assert code == 1 and out == "" and "may not manage_users" in err
    code, out, err = world.run(world.adm, "user", "add", "eve", "--role", "auditor")
    assert code == 0, err
    code, out, _ = world.run(world.adm, "user", "scope", "eve", "--device", OTHER)
    assert code == 0
    admin = [(x["user"], x["action"], x["subject"], x["detail"]) for x in leaves(world.o.index)
             if x["kind"] == "admin"]  # fmt: skip
    assert admin == [
        ("adm", "user_added", "eve", "roles auditor; scope nothing"),
        ("adm", "scope_set", "eve", f"scope devices {OTHER}"),
    ]
    assert "another long passphrase" not in json.dumps(leaves(world.o.index))
    assert [x["detail"] for x in world.access(user="adm", action="manage_users")] == [
        "user add eve",
        "user scope eve",
    ]
