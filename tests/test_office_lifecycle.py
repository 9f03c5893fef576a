"""Retention, legal hold and deletion at the head office (issue 17), over the real
receiver, the filesystem blob store and both index backends: the purge deletes what
expired and nothing held; each deletion leaves a tombstone and a ledger leaf; the
device's hash chain and the whole audit still verify across the gaps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from headoffice.access import AccessDenied
from headoffice.authz import Principal, Role, Scope
from headoffice.cli import main as office_main
from headoffice.erasure import delete_recording
from headoffice.holds import HoldError, Holds, holds_of
from headoffice.purge import RETENTION_ACTOR, run_purge
from headoffice.retention import Decision, Policy, RetentionConfig
from sealedrec.manifest import GENESIS_HASH, manifest_hash
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

NOW = datetime.now(UTC)
AGES = (800, 400, 100, 10, 1)  # days, oldest first: seq 1..5
CFG = RetentionConfig(default_days=365, policy=(Policy(name="short", line="line9", days=30),))
COMPLIANCE = Principal("cora", frozenset({Role.COMPLIANCE}), Scope.all())
REVIEWER = Principal("rita", frozenset({Role.REVIEWER}), Scope.all())


class Chained(Audited):
    """An office whose honest device chained ``AGES`` recordings (seq 1..5)."""

    def __init__(self, root: Path, url: str) -> None:
        super().__init__(root, url, n=0)
        self.recs: list[str] = []
        prev = GENESIS_HASH
        for n, age in enumerate(AGES, 1):
            rec = f"rec-{n}"
            started = NOW - timedelta(days=age)
            ack = self.upload(
                HONEST, rec, prev_manifest_sha256=prev, started_utc=started.isoformat()
            )
            assert ack.status.value == "stored", ack
            record = self.index.get(rec)
            assert record is not None
            prev = manifest_hash(record.manifest)
            self.recs.append(rec)

    def problems(self) -> list[str]:
        return [str(p) for p in self.report().problems]

    def blob_files(self) -> set[str]:
        return {p.name.split(".")[0] for p in self.files("blobs")}


@pytest.fixture
def office(tmp_path: Path, index_url: str):  # noqa: F811 - the imported fixture
    o = Chained(tmp_path, index_url)
    yield o
    o.index.close()


def record(office: Chained, rec: str):
    r = office.index.get(rec)
    assert r is not None
    return r


def test_the_chain_verifies_before_anything_is_deleted(office: Chained):
    assert office.problems() == []
    assert office.blob_files() == set(office.recs)


def test_the_purge_deletes_what_expired_leaving_tombstones_and_a_clean_audit(office: Chained):
    holds = Holds(office.index, office.store, gate_for(office.index, COMPLIANCE))
    holds.set(record(office, "rec-1"), "CASE-7", "customer dispute")
    plan = run_purge(office.index, office.store, CFG, {}, NOW, dry_run=True)
    assert [
        (v.recording_id, v.decision) for v in plan.verdicts if v.decision is Decision.DELETE
    ] == [("rec-2", Decision.DELETE)]
    assert office.index.get("rec-2") is not None  # a plan deletes nothing
    report = run_purge(office.index, office.store, CFG, {}, NOW)
    assert (report.deleted, report.failures) == (1, [])
    assert office.index.get("rec-2") is None
    assert office.blob_files() == {"rec-1", "rec-3", "rec-4", "rec-5"}
    [kept] = [v for v in report.verdicts if v.recording_id == "rec-1"]
    assert kept.reason == "on legal hold"
    # the tombstone leaf names who and why; the audit and the chain verify across the gap
    [tomb] = [leaf for leaf in leaves(office.index, "admin") if leaf["action"] == "tombstone"]
    assert (tomb["user"], tomb["subject"]) == (RETENTION_ACTOR, "rec-2")
    assert '"cause":"retention: expired' in tomb["detail"] and '"seq":2' in tomb["detail"]
    assert office.problems() == []
    assert office.index.gaps() == []
    # released, the held one goes at the next run
    holds.release(record(office, "rec-1"), "CASE-7", "settled")
    assert run_purge(office.index, office.store, CFG, {}, NOW).deleted == 1
    assert office.blob_files() == {"rec-3", "rec-4", "rec-5"}
    assert office.problems() == []


def test_deleting_the_newest_keeps_the_device_head_verifiable(office: Chained):
    out = delete_recording(office.index, office.store, record(office, "rec-5"), by="t", cause="x")
    assert out.deleted
    assert office.problems() == []


def test_a_deletion_without_its_tombstone_row_is_found_by_the_audit(office: Chained):
    delete_recording(office.index, office.store, record(office, "rec-3"), by="t", cause="x")
    office.superuser("DELETE FROM tombstones WHERE recording_id = 'rec-3'")
    problems = office.problems()
    assert any("gap: seq 3 missing" in p for p in problems), problems


def test_the_store_refuses_on_its_own_even_when_the_index_says_nothing(office: Chained):
    office.store.set_legal_hold(record(office, "rec-2").path, True)
    out = delete_recording(office.index, office.store, record(office, "rec-2"), by="t", cause="x")
    assert not out.deleted and out.reason.startswith("the store refuses"), out
    assert office.index.get("rec-2") is not None and "rec-2" in office.blob_files()
    assert [leaf for leaf in leaves(office.index, "admin") if leaf["action"] == "tombstone"] == []


def test_holds_need_the_compliance_role_and_name_their_case(office: Chained):
    rec = record(office, "rec-3")
    with pytest.raises(AccessDenied):
        Holds(office.index, office.store, gate_for(office.index, REVIEWER)).set(rec, "C-1", "x")
    assert holds_of(office.index, "rec-3") == []
    assert not office.store.lifecycle(rec.path).legal_hold
    holds = Holds(office.index, office.store, gate_for(office.index, COMPLIANCE))
    with pytest.raises(HoldError, match="case reference is required"):
        holds.set(rec, "  ", "why")
    holds.set(rec, "C-1", "first case")
    holds.set(rec, "C-2", "second case")
    with pytest.raises(HoldError, match="already on hold for case C-1"):
        holds.set(rec, "C-1", "again")
    assert office.store.lifecycle(rec.path).legal_hold
    holds.release(rec, "C-1", "done")
    assert office.store.lifecycle(rec.path).legal_hold  # C-2 still holds it
    with pytest.raises(HoldError, match=r"not on hold for case C-1 \(holds: C-2\)"):
        holds.release(rec, "C-1", "again")
    holds.release(rec, "C-2", "done")
    assert not office.store.lifecycle(rec.path).legal_hold
    history = holds_of(office.index, "rec-3")
    assert [(h.case_ref, h.set_by, h.released_by) for h in history] == [
        ("C-1", "cora", "cora"),
        ("C-2", "cora", "cora"),
    ]
    actions = [leaf["action"] for leaf in leaves(office.index, "access")]
    assert actions.count("hold") == 3 and actions.count("release") == 2  # 1 refused hold


def test_the_command_line_plans_holds_and_purges(
    office: Chained,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    config = tmp_path / "office.toml"
    config.write_text(
        f'root = "{office.store.root}"\nindex = "{office.url}"\n{CHEAP_TOML}'
        "[retention]\ndefault_days = 365\n"
    )
    clock = use_clock(monkeypatch, SteppingClock())  # each command: the next 30 s step
    cora = add_account(office.index, "cora", [Role.COMPLIANCE], settings=CHEAP, clock=clock)
    rita = add_account(office.index, "rita", [Role.REVIEWER], settings=CHEAP)
    where = ["--config", str(config)]
    cora.apply(monkeypatch)
    assert office_main(["hold", "set", "rec-1", "--case", "C-9", "--reason", "audit", *where]) == 0
    assert "rec-1  case C-9  set" in capsys.readouterr().out
    cora.apply(monkeypatch)  # a fresh one-time code for each command
    assert office_main(["retention", "plan", *where]) == 0
    out = capsys.readouterr().out
    assert "delete  rec-2  default: expired" in out and "rec-1" not in out
    assert out.rstrip().endswith("UTC") and "1 to delete, 4 kept" in out
    rita.apply(monkeypatch)  # a reviewer may not hold
    assert office_main(["hold", "release", "rec-1", "--case", "C-9", "--reason", "x", *where]) == 1
    assert "may not release" in capsys.readouterr().err
    monkeypatch.delenv("LINETAP_OFFICE_USER")  # the run is the office's own job
    assert office_main(["retention", "run", *where]) == 0
    assert office.index.get("rec-2") is None and office.index.get("rec-1") is not None
    assert office.problems() == []
    cora.apply(monkeypatch)
    assert office_main(["hold", "list", *where]) == 0
    assert "rec-1  case C-9" in capsys.readouterr().out


def test_the_run_has_the_store_enforce_mandatory_retention(office: Chained):
    """min_days becomes the store's own lock (here the filesystem store's registry): an
    erasure-style delete of a locked recording is refused by the store even with no hold
    in the index; the lock is asked for once, not every run, and only while it runs."""
    cfg = RetentionConfig(default_days=3650, default_min_days=30)
    report = run_purge(office.index, office.store, cfg, {}, NOW)
    assert report.locked == 2  # rec-4 (10 days) and rec-5 (1 day); the others served 30 days
    locked = {r: office.store.lifecycle(record(office, r).path).retain_until for r in office.recs}
    assert locked["rec-3"] is None and locked["rec-4"] is not None
    assert locked["rec-4"] >= NOW + timedelta(days=19)
    out = delete_recording(office.index, office.store, record(office, "rec-5"), by="t", cause="x")
    assert not out.deleted and "the store refuses" in out.reason
    assert run_purge(office.index, office.store, cfg, {}, NOW).locked == 0  # nothing changed
    longer = RetentionConfig(default_days=3650, default_min_days=120)
    assert run_purge(office.index, office.store, longer, {}, NOW).locked == 3  # rec-3 too now
