"""Signed ledger checkpoints in a WORM bucket (``[audit] worm_bucket``), against a real
SeaweedFS: ``audit checkpoint`` writes each one once under COMPLIANCE retention, ``audit
verify`` checks the ledger against every one there, so a rewrite that also rewrote the
checkpoints table is still caught.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from pydantic import SecretStr

from headoffice.accounts import Accounts
from headoffice.authz import Role, Scope
from headoffice.cli import main as office_main
from headoffice.config import AccountsConfig, AuditConfig, OfficeConfig, StoreConfig
from headoffice.ledger.checkpoint import AuditError
from headoffice.ledger.merkle import leaf_hash
from headoffice.ledger.worm import WormCheckpoints, checkpoint_key, open_worm
from tests.seaweed import ACCESS_KEY, SECRET_KEY, Seaweed
from tests.test_audit import ORIGIN, Audited

PLAIN = "ledger-plain"
RETAIN_DAYS = 30


@pytest.fixture(scope="module")
def seaweed(seaweed_server: Seaweed) -> Seaweed:
    seaweed_server.make_bucket(PLAIN, lock=False)  # the session's server (tests/conftest.py)
    return seaweed_server


class WormOffice(Audited):
    """An office (SQLite index, file store, one stored recording: its chain is clean)
    whose checkpoints also go to a WORM bucket of its own (the keys are fixed, so no two
    tests share one), with an auditor account for ``audit verify``."""

    def __init__(self, root: Path, weed: Seaweed, bucket: str) -> None:
        super().__init__(root, f"sqlite:///{root / 'index.sqlite3'}", n=1)
        self.weed = weed
        self.bucket = bucket
        self.toml = root / "office.toml"
        self.toml.write_text(
            f'root = "{self.store.root}"\nindex = "{self.url}"\n'
            '[accounts]\ntotp_required_for = ["admin"]\n'
            f'[store]\nendpoint_url = "{weed.endpoint}"\naccess_key_id = "{ACCESS_KEY}"\n'
            f'secret_access_key = "{SECRET_KEY}"\nconnect_timeout_s = 2\nmax_attempts = 2\n'
            f'[audit]\nworm_bucket = "{bucket}"\nworm_retain_days = {RETAIN_DAYS}\n'
        )
        accounts = Accounts(self.index, AccountsConfig(totp_required_for=(Role.ADMIN,)))
        accounts.add_user("root-admin", "admin-password-1", [Role.ADMIN])
        accounts.add_user("aud1", "auditor-password", [Role.AUDITOR], Scope.all())

    @property
    def cfg(self) -> OfficeConfig:
        return OfficeConfig(
            root=self.store.root,
            store=StoreConfig(
                endpoint_url=self.weed.endpoint,
                access_key_id=ACCESS_KEY,
                secret_access_key=SecretStr(SECRET_KEY),
            ),
            audit=AuditConfig(worm_bucket=self.bucket, worm_retain_days=RETAIN_DAYS),
        )

    def cli_checkpoint(self) -> int:
        return office_main(
            ["audit", "checkpoint", "--config", str(self.toml), "--key", str(self.key_file)]
        )

    def cli_verify(self, monkeypatch: pytest.MonkeyPatch, *extra: str) -> int:
        monkeypatch.setenv("LINETAP_OFFICE_USER", "aud1")
        monkeypatch.setenv("LINETAP_OFFICE_PASSWORD", "auditor-password")
        return office_main(["audit", "verify", "--config", str(self.toml), "--no-blobs", *extra])


@pytest.fixture
def office(tmp_path: Path, seaweed: Seaweed) -> Iterator[WormOffice]:
    bucket = f"worm-{uuid.uuid4().hex[:12]}"
    seaweed.make_bucket(bucket, lock=True)
    o = WormOffice(tmp_path, seaweed, bucket)
    yield o
    o.index.close()


def test_checkpoint_is_written_once_under_compliance_retention(
    office: WormOffice, capsys: pytest.CaptureFixture[str]
):
    assert office.cli_checkpoint() == 0
    out = capsys.readouterr().out
    key = checkpoint_key(1)
    assert key == "checkpoints/00000000000000000001.note"
    assert f"written to the WORM bucket: s3://{office.bucket}/{key} (COMPLIANCE until" in out
    [kept] = office.ledger.checkpoints()
    client = office.weed.client()
    [version] = client.list_object_versions(Bucket=office.bucket, Prefix="checkpoints/")["Versions"]
    assert version["Key"] == key
    body = client.get_object(Bucket=office.bucket, Key=key)["Body"].read()
    assert body.decode() == kept.note
    retention = client.get_object_retention(
        Bucket=office.bucket, Key=key, VersionId=version["VersionId"]
    )["Retention"]
    assert retention["Mode"] == "COMPLIANCE"
    expected = datetime.now(UTC) + timedelta(days=RETAIN_DAYS)
    assert abs((retention["RetainUntilDate"] - expected).total_seconds()) < 120
    # Not even the bucket's owner can remove it before then.
    with pytest.raises(ClientError) as refused:
        client.delete_object(Bucket=office.bucket, Key=key, VersionId=version["VersionId"])
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    # Run again with no new leaves: the same checkpoint, already there, one version.
    assert office.cli_checkpoint() == 0
    assert "already in the WORM bucket" in capsys.readouterr().out
    office.upload("honest", "rec-later")
    assert office.cli_checkpoint() == 0
    keys = [
        v["Key"]
        for v in client.list_object_versions(Bucket=office.bucket, Prefix="checkpoints/")[
            "Versions"
        ]
    ]
    assert sorted(keys) == [checkpoint_key(1), checkpoint_key(2)]


def test_a_different_checkpoint_of_the_same_size_is_refused(office: WormOffice):
    assert office.cli_checkpoint() == 0
    worm = open_worm(office.cfg)
    assert isinstance(worm, WormCheckpoints)
    [kept] = office.ledger.checkpoints()
    with pytest.raises(AuditError, match="already holds a different checkpoint of 1 leaves"):
        worm.put(1, kept.note.replace("\n\n", "\n\nx", 1))
    assert worm.put(1, kept.note).already


def test_verify_reads_them_back_and_catches_a_rewrite_that_hid_its_tracks(
    office: WormOffice, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    assert office.cli_verify(monkeypatch) == 0  # leaf 1: aud1 read the audit ledger
    assert office.cli_checkpoint() == 0  # of 2 leaves, in the database and the bucket
    capsys.readouterr()
    assert office.cli_verify(monkeypatch) == 0
    assert f"1 from s3://{office.bucket}/checkpoints/" in capsys.readouterr().out
    # A database superuser hides who read the ledger: leaf 1 rewritten with its hash
    # recomputed, and the checkpoints kept in the database removed. Inside the office,
    # nothing shows it ...
    body = next(office.ledger.rows(1, 2)).body
    assert b'"user":"aud1"' in body
    forged = body.replace(b'"user":"aud1"', b'"user":"aud2"')
    office.superuser(
        "UPDATE ledger SET body = ?, leaf_sha256 = ? WHERE idx = 1",
        params=(forged.decode(), leaf_hash(forged).hex()),
    )
    office.superuser("DELETE FROM checkpoints")
    assert office.cli_verify(monkeypatch, "--no-worm") == 0
    capsys.readouterr()
    # ... but the checkpoint in the WORM bucket was signed before.
    assert office.cli_verify(monkeypatch) == 1
    out = capsys.readouterr().out
    assert (
        f"FAIL  checkpoint 2 (WORM {checkpoint_key(2)}): its root differs from the ledger's "
        "first 2 leaves"
    ) in out


def test_a_bucket_without_object_lock_is_refused_before_anything_is_signed(
    office: WormOffice, seaweed: Seaweed, capsys: pytest.CaptureFixture[str]
):
    office.toml.write_text(office.toml.read_text().replace(office.bucket, PLAIN))
    assert office.cli_checkpoint() == 1
    err = capsys.readouterr().err
    assert f"WORM bucket '{PLAIN}' has no Object Lock" in err
    assert "create one with it" in err
    assert office.ledger.checkpoints() == []
    listed = seaweed.client().list_objects_v2(Bucket=PLAIN, Prefix="checkpoints/")
    assert listed.get("KeyCount", 0) == 0


def test_no_worm_bucket_configured_changes_nothing(
    office: WormOffice, capsys: pytest.CaptureFixture[str]
):
    office.toml.write_text(office.toml.read_text().split("[audit]")[0])
    assert office.cli_checkpoint() == 0
    assert "WORM" not in capsys.readouterr().out
    [kept] = office.ledger.checkpoints()
    assert kept.tree_size == 1 and kept.note.startswith(ORIGIN + "\n")
