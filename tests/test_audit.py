"""The audit ledger for real, on SQLite and PostgreSQL: ingest leaves written by the real
receiver, roots checked against pymerkle, append-only enforced by the databases, and each
kind of tampering named by `audit verify` (as a database superuser would do it:
bypassing the triggers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pymerkle  # type: ignore[import-untyped]
import pytest

from headoffice.accounts import Accounts
from headoffice.authz import Role, Scope
from headoffice.cli import main as office_main
from headoffice.config import AccountsConfig, OfficeConfig
from headoffice.index import IndexStoreError
from headoffice.index.schema import APPEND_ONLY, app_role_grants
from headoffice.ledger.audit import AuditReport, KeptCheckpoint, audit
from headoffice.ledger.checkpoint import keygen, load_verifier, make_checkpoint, proof_bundle
from headoffice.ledger.leaves import AccessLeaf, AdminLeaf, parse_leaf
from headoffice.ledger.merkle import leaf_hash, root
from headoffice.ledger.note import checkpoint_text, generate_signer_key, parse_signer_key, sign_note
from headoffice.ledger.store import Ledger
from headoffice.officeroot import CaLayout
from sealedrec.keys import public_key_b64
from tests.test_office_index import index_url, pg_dsn, reset_pg  # noqa: F401 - fixtures
from tests.test_receiver_hostile import HONEST, Office

ORIGIN = "office.test/ledger"
APP_ROLE = "linetap_app_test"


class Audited(Office):
    """An office whose honest device stored ``n`` recordings, with a ledger key."""

    def __init__(self, root: Path, url: str, n: int = 4) -> None:
        super().__init__(root, url)
        self.url = url
        self.key_file = root / "ledger.key"
        keygen(ORIGIN, self.key_file, self.store.root)
        self.verifier = load_verifier(self.store.root)
        self.ledger = Ledger(self.index)
        self.recs = [f"rec-{i}" for i in range(n)]
        for rec in self.recs:
            assert self.upload(HONEST, rec).status.value == "stored"
        # The honest device's manifests chain (seq 1..n) only if signed_manifest chained
        # them; Office uploads with prev = zeros, so chain problems are expected there:
        # these tests look only at what tampering adds.

    def checkpoint(self) -> None:
        make_checkpoint(self.ledger, ORIGIN, self.key_file.read_text())

    def report(
        self, *, blobs: bool = True, external: tuple[KeptCheckpoint, ...] = ()
    ) -> AuditReport:
        return audit(
            self.index, self.store if blobs else None, origin=ORIGIN, vkey=self.verifier,
            external=external,
        )  # fmt: skip

    def tampering(self) -> list[str]:
        """The problems beyond the expected chain ones (see __init__)."""
        return [str(p) for p in self.report().problems if "prev_manifest_sha256" not in p.message]

    def superuser(self, *sql: str, params: tuple[object, ...] = ()) -> None:
        """Run ``sql`` with the append-only triggers out of the way, as a database
        superuser could."""
        if self.url.startswith("sqlite"):
            import sqlite3

            lite = sqlite3.connect(self.url.removeprefix("sqlite:///"))
            with lite:
                for table in APPEND_ONLY:
                    for verb in ("update", "delete"):
                        lite.execute(f"DROP TRIGGER IF EXISTS {table}_no_{verb}")
                for statement in sql:
                    lite.execute(statement, params)
            lite.close()
        else:
            with psycopg.connect(self.url, autocommit=True) as conn:
                for table in APPEND_ONLY:
                    conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
                for statement in sql:
                    conn.execute(statement.replace("?", "%s"), params)
                for table in APPEND_ONLY:
                    conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")


@pytest.fixture
def office(tmp_path: Path, index_url: str):  # noqa: F811
    o = Audited(tmp_path, index_url)
    yield o
    o.index.close()


def test_ingest_leaves_and_roots_match_pymerkle(office: Audited):
    rows = list(office.ledger.rows())
    assert [r.idx for r in rows] == list(range(len(office.recs)))
    leaves = [parse_leaf(r.body) for r in rows]
    assert [leaf.recording_id for leaf in leaves] == office.recs  # type: ignore[union-attr]
    oracle = pymerkle.InmemoryTree(algorithm="sha256")
    for r in rows:
        oracle.append_entry(r.body)
    assert root([leaf_hash(r.body) for r in rows]) == oracle.get_root()
    office.checkpoint()
    [kept] = office.ledger.checkpoints()
    assert bytes.fromhex(kept.root_sha256) == oracle.get_root()


def test_a_clean_ledger_verifies(office: Audited):
    office.checkpoint()
    office.upload(HONEST, "later")
    office.checkpoint()
    report = office.report()
    assert report.leaves == 5 and report.checkpoints == 2 and report.blobs == 5
    assert office.tampering() == []


def test_the_databases_refuse_update_and_delete(office: Audited):
    for sql in ("UPDATE ledger SET kind = 'x' WHERE idx = 0", "DELETE FROM ledger WHERE idx = 0"):
        with (
            pytest.raises(IndexStoreError, match="append-only"),
            office.index.transaction(True) as q,
        ):
            q(sql, ())
    assert office.ledger.size() == len(office.recs)


def test_postgresql_app_role_has_insert_and_select_only(pg_dsn: str, tmp_path: Path):  # noqa: F811
    reset_pg(pg_dsn)
    office = Audited(tmp_path, pg_dsn, n=1)
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {APP_ROLE}")
            conn.execute(f"CREATE ROLE {APP_ROLE} LOGIN PASSWORD 'app-test-pw'")
            for grant in app_role_grants(APP_ROLE):
                conn.execute(grant)
            # Even with the triggers off, the application role cannot rewrite history.
            conn.execute("ALTER TABLE ledger DISABLE TRIGGER USER")
        app = pg_dsn.replace("postgresql://", f"postgresql://{APP_ROLE}:app-test-pw@", 1)
        if "@" not in app.split("//", 1)[1].split("/", 1)[0]:
            pytest.skip("the test database is reached through a socket without a user part")
        with psycopg.connect(app, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM ledger").fetchone() == (1,)
            for sql in ("UPDATE ledger SET kind = 'x'", "DELETE FROM ledger", "TRUNCATE ledger"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(sql)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE ledger ENABLE TRIGGER USER")
            conn.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {APP_ROLE}")
            conn.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {APP_ROLE}")
            conn.execute(f"DROP ROLE IF EXISTS {APP_ROLE}")
        office.index.close()


def test_an_edited_leaf_is_named(office: Audited):
    office.checkpoint()
    office.superuser("UPDATE ledger SET body = replace(body, 'rec-1', 'rec-X') WHERE idx = 1")
    problems = office.tampering()
    assert problems[0].startswith("leaf 1: its body does not hash"), problems


def test_an_edit_with_its_hash_recomputed_is_named_by_the_checkpoint(office: Audited):
    office.checkpoint()
    body = office.ledger.rows(1, 2).__next__().body.replace(b"rec-1", b"rec-X")
    office.superuser(
        "UPDATE ledger SET body = ?, leaf_sha256 = ? WHERE idx = 1",
        params=(body.decode(), leaf_hash(body).hex()),
    )
    problems = office.tampering()
    assert any(p.startswith("checkpoint 4 (kept): its root differs") for p in problems), problems


def test_a_deleted_row_is_named(office: Audited):
    office.superuser("DELETE FROM ledger WHERE idx = 2")
    assert office.tampering()[0] == "leaf 2: missing (the next row is leaf 3): deleted"


def test_a_truncated_tail_is_named(office: Audited):
    office.checkpoint()
    office.superuser("DELETE FROM ledger WHERE idx >= 2")
    problems = office.tampering()
    assert any("signed for 4 leaves, the ledger has 2: its tail was removed" in p for p in problems)


def test_a_checkpoint_resigned_with_another_key_is_named(office: Audited):
    office.checkpoint()
    skey, _vkey = generate_signer_key(ORIGIN)
    name, key = parse_signer_key(skey)
    hashes = [leaf_hash(r.body) for r in office.ledger.rows()]
    forged = sign_note(checkpoint_text(ORIGIN, len(hashes), root(hashes)), name, key)
    office.superuser("UPDATE checkpoints SET note = ?", params=(forged,))
    problems = office.tampering()
    assert problems and "not a valid signed checkpoint" in problems[0], problems


def test_a_fork_is_named(office: Audited):
    """Two checkpoints, both signed by the office key, that cannot both be the same log."""
    office.checkpoint()
    hashes = [leaf_hash(r.body) for r in office.ledger.rows()]
    forked = [*hashes[:2], leaf_hash(b'{"kind":"forged"}')]
    name, key = parse_signer_key(office.key_file.read_text())
    note = sign_note(checkpoint_text(ORIGIN, 3, root(forked)), name, key)
    # Kept elsewhere (e.g. mailed), or inserted: INSERT is what the app role may do.
    problems = [
        str(p)
        for p in office.report(external=(KeptCheckpoint("mailed.note", note),)).problems
        if "prev_manifest" not in p.message
    ]
    assert problems == [
        "checkpoint 3 (mailed.note): its root differs from the ledger's first 3 leaves: "
        "the log was rewritten or forked after it was signed"
    ]


def test_recordings_changed_behind_the_ledger_are_named(office: Audited):
    office.superuser("DELETE FROM recordings WHERE recording_id = 'rec-3'")
    office.superuser(
        "UPDATE recordings SET blob_sha256 = ? WHERE recording_id = 'rec-0'", params=("0" * 64,)
    )
    problems = office.tampering()
    assert "recording rec-0: differs from its ingest leaf: altered" in problems
    assert "recording rec-3: ingested but gone from the index, with no tombstone" in problems
    # A deletion with its tombstone is accounted for.
    office.ledger.append(AdminLeaf(user="compliance1", action="tombstone", subject="rec-3", at="x"))
    assert not any("rec-3" in p for p in office.tampering())


def test_a_replaced_blob_is_named(office: Audited):
    record = office.index.get("rec-2")
    assert record is not None
    path = office.store.resolve(record.path)
    path.chmod(0o600)
    path.write_bytes(os.urandom(path.stat().st_size))
    assert "recording rec-2: its stored blob is not the one ingested: altered" in office.tampering()


def test_an_evidence_bundle_verifies_standalone(office: Audited, tmp_path: Path):
    office.checkpoint()
    # The device's enrolment record, as enroll-device writes it.
    devices = CaLayout(office.store.root).devices
    devices.mkdir(parents=True, exist_ok=True)
    (devices / f"{HONEST}.json").write_text(
        json.dumps(
            {
                "device_id": HONEST,
                "signing_key": public_key_b64(office.devices[HONEST].key.public_key()),
            }
        )
    )
    out = proof_bundle(
        office.index, office.store, office.store.root, "rec-2", tmp_path / "b", origin=ORIGIN
    )
    device_pub = out / "device.pub"
    assert device_pub.exists()
    done = subprocess.run(
        [sys.executable, "-I", str(out / "verify_bundle.py"), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (out / "recording.age").write_bytes(b"x" + (out / "recording.age").read_bytes()[1:])
    done = subprocess.run(
        [sys.executable, "-I", str(out / "verify_bundle.py"), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1 and "blob-hash" in done.stdout


def test_audit_verify_on_the_command_line_is_itself_logged(office: Audited, monkeypatch):
    cfg = OfficeConfig(root=office.store.root, index=office.url)
    accounts = Accounts(office.index, AccountsConfig(totp_required_for=(Role.ADMIN,)))
    accounts.add_user("root-admin", "admin-password-1", [Role.ADMIN])
    accounts.add_user("aud1", "auditor-password", [Role.AUDITOR], Scope.all())
    toml = office.root / "office.toml"
    toml.write_text(
        f'root = "{cfg.root}"\nindex = "{office.url}"\n[accounts]\ntotp_required_for = ["admin"]\n'
    )
    office.checkpoint()
    before = office.ledger.size()
    monkeypatch.setenv("LINETAP_OFFICE_USER", "aud1")
    monkeypatch.setenv("LINETAP_OFFICE_PASSWORD", "auditor-password")
    assert office_main(["audit", "verify", "--config", str(toml), "--no-blobs"]) in (0, 1)
    leaf = parse_leaf(next(iter(office.ledger.rows(before))).body)
    assert isinstance(leaf, AccessLeaf)
    assert leaf.action == "read_audit" and leaf.user == "aud1"
    # A reviewer may not read the ledger, and the refusal is a leaf too.
    accounts.add_user("rev1", "reviewer-password", [Role.REVIEWER], Scope.all())
    monkeypatch.setenv("LINETAP_OFFICE_USER", "rev1")
    monkeypatch.setenv("LINETAP_OFFICE_PASSWORD", "reviewer-password")
    assert office_main(["audit", "log", "--config", str(toml)]) == 1
    last = parse_leaf(list(office.ledger.rows())[-1].body)
    assert last.user == "rev1" and last.detail.startswith("refused")  # type: ignore[union-attr]
