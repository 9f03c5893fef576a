"""Signed checkpoints of the audit ledger in a WORM bucket (``[audit] worm_bucket``).

``linetap-office audit checkpoint`` writes each checkpoint it signs to
``checkpoints/{tree_size:020d}.note`` (zero-padded: the keys list in ledger order),
once (``If-None-Match: *``), with COMPLIANCE retention for ``worm_retain_days``: until
then nobody, the bucket's owner and the office's administrators included, can delete or
overwrite that version. A later rewrite of the ledger's history before it (with the
checkpoints table rewritten too, even re-signed with a stolen ledger key) is still
caught against these copies, which were written before it.

``linetap-office audit verify`` reads back every version under ``checkpoints/`` and
checks the ledger against each (``external=`` of :func:`headoffice.ledger.audit.audit`).
A version added under an existing key by someone holding the bucket's keys (bypassing
``If-None-Match``) is read and checked too; it can add, never replace.

The bucket is reached with ``[store]``'s endpoint and credentials
(:func:`headoffice.stores.s3_settings`). As for the blob store, Object Lock binds only
the S3 API: the storage servers' other ports must not be reachable from the office
(headoffice/INSTALL.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from headoffice.blobstore import StoreError, retention_date
from headoffice.config import OfficeConfig
from headoffice.ledger.audit import KeptCheckpoint
from headoffice.ledger.checkpoint import AuditError
from headoffice.s3objects import b64_sha256
from headoffice.s3support import as_store_error, error_code, http_status, make_client, translated
from headoffice.stores import s3_settings

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

PREFIX = "checkpoints/"
_NO_LOCK = {"ObjectLockConfigurationNotFoundError", "NoSuchObjectLockConfiguration"}
_EXISTS = (409, 412)  # If-None-Match refused (412), or a concurrent create (409)


def checkpoint_key(tree_size: int) -> str:
    return f"{PREFIX}{tree_size:020d}.note"


@dataclass(frozen=True, slots=True)
class WormWrite:
    """A checkpoint in the bucket: where, which version, retained until when, and
    whether it was there already (the timer ran again with no new leaves)."""

    key: str
    version: str
    retain_until: datetime
    already: bool


class WormCheckpoints:
    """The checkpoints in one WORM bucket."""

    def __init__(self, client: S3Client, bucket: str, where: str, retain_days: int) -> None:
        self.client = client
        self.bucket = bucket
        self.where = where
        self.retain_days = retain_days

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{PREFIX}"

    def check(self) -> None:
        """The bucket is reachable and has Object Lock, else a ``config`` error naming
        the fix (a default retention rule is welcome here: every object is a checkpoint)."""
        what = f"WORM bucket {self.bucket!r}"
        try:
            answer = self.client.get_object_lock_configuration(Bucket=self.bucket)
            lock = answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
        except ClientError as exc:
            if error_code(exc) not in _NO_LOCK:
                raise StoreError(
                    str(as_store_error(exc, what, self.where)), reason="config"
                ) from exc
            lock = None
        except BotoCoreError as exc:
            raise StoreError(str(as_store_error(exc, what, self.where)), reason="config") from exc
        if lock != "Enabled":
            raise StoreError(
                f"{what} has no Object Lock, so anyone with its keys could delete or replace "
                "a checkpoint; Object Lock can only be turned on when a bucket is created: "
                "create one with it (aws s3api create-bucket --object-lock-enabled-for-bucket "
                "…) and name it in [audit] worm_bucket",
                reason="config",
            )

    def put(self, tree_size: int, note: str) -> WormWrite:
        """Write the checkpoint of ``tree_size`` leaves once; the same one again changes
        nothing, a different one under that size is an :class:`AuditError` (the ledger
        was changed after that checkpoint was written)."""
        key = checkpoint_key(tree_size)
        data = note.encode()
        until = retention_date(datetime.now(UTC) + timedelta(days=self.retain_days))
        already = False
        with translated(f"checkpoint {tree_size}: cannot write {self.url}", self.where):
            try:
                made = self.client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=data,
                    IfNoneMatch="*",
                    ChecksumSHA256=b64_sha256(data),
                    ContentType="text/plain; charset=utf-8",
                    ObjectLockMode="COMPLIANCE",
                    ObjectLockRetainUntilDate=until,
                )
                version = str(made.get("VersionId") or "null")
            except ClientError as exc:
                if http_status(exc) not in _EXISTS:
                    raise
                version = self._same(key, data, tree_size)
                already = True
            mode, retained = self._retention(key, version)
        if mode != "COMPLIANCE" or retained is None:
            raise StoreError(
                f"WORM bucket {self.bucket!r}: {key} was stored without COMPLIANCE retention "
                f"(mode {mode}); the server does not honour Object Lock as asked",
                reason="config",
            )
        return WormWrite(key, version, retained, already)

    def _same(self, key: str, data: bytes, tree_size: int) -> str:
        """The version id of the first checkpoint stored under ``key`` if it is ``data``."""
        versions = self._versions(key)
        if not versions:  # a concurrent create not finished yet: the next run sees it
            raise StoreError(f"{key}: being written by another process", reason="io")
        first = versions[-1]  # listed newest first
        if self._read(key, first) != data:
            raise AuditError(
                f"the WORM bucket already holds a different checkpoint of {tree_size} "
                f"leaves ({self.url}{key.removeprefix(PREFIX)}): the ledger was changed after "
                "that one was signed; run 'linetap-office audit verify'"
            )
        return first

    def _versions(self, key: str) -> list[str]:
        found = []
        pages = self.client.get_paginator("list_object_versions").paginate(
            Bucket=self.bucket, Prefix=key
        )
        for page in pages:
            found += [str(v.get("VersionId")) for v in page.get("Versions", []) if v["Key"] == key]
        return found

    def _read(self, key: str, version: str) -> bytes:
        body = self.client.get_object(Bucket=self.bucket, Key=key, VersionId=version)["Body"]
        try:
            return body.read()
        finally:
            body.close()

    def _retention(self, key: str, version: str) -> tuple[str | None, datetime | None]:
        try:
            got = self.client.get_object_retention(Bucket=self.bucket, Key=key, VersionId=version)
        except ClientError as exc:
            if error_code(exc) in _NO_LOCK:
                return None, None
            raise
        retention = got.get("Retention", {})
        until = retention.get("RetainUntilDate")
        return retention.get("Mode"), until.astimezone(UTC) if until else None

    def kept(self) -> list[KeptCheckpoint]:
        """Every version of every object under ``checkpoints/``, as checkpoints to check
        (an object that is not one is reported by the audit as not a valid checkpoint)."""
        found: list[tuple[str, str]] = []
        with translated(f"reading the checkpoints in {self.url}", self.where):
            pages = self.client.get_paginator("list_object_versions").paginate(
                Bucket=self.bucket, Prefix=PREFIX
            )
            for page in pages:
                found += [(v["Key"], str(v.get("VersionId"))) for v in page.get("Versions", [])]
            counts: dict[str, int] = {}
            for key, _ in found:
                counts[key] = counts.get(key, 0) + 1
            out = []
            for key, version in sorted(found):
                source = f"WORM {key}" + (f" version {version}" if counts[key] > 1 else "")
                note = self._read(key, version).decode("utf-8", errors="replace")
                out.append(KeptCheckpoint(source, note))
        return out


def open_worm(cfg: OfficeConfig) -> WormCheckpoints | None:
    """The WORM bucket of ``[audit]`` (checked: reachable, Object Lock on), or None when
    none is configured."""
    if cfg.audit.worm_bucket is None:
        return None
    settings = s3_settings(cfg.store)
    worm = WormCheckpoints(
        make_client(settings), cfg.audit.worm_bucket, settings.where, cfg.audit.worm_retain_days
    )
    worm.check()
    return worm


__all__ = ["PREFIX", "WormCheckpoints", "WormWrite", "checkpoint_key", "open_worm"]
