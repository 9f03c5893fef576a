"""Object transfers for :class:`headoffice.s3store.S3BlobStore`: write-once uploads (one
PUT, or multipart for large blobs), streamed downloads, ranges, SHA-256 of a stored
version, and removing every version under a prefix.

Downloads stream through ``get_object`` in 1 MiB blocks (no transfer-manager threads),
so memory stays flat for a blob of any size.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from headoffice.blobstore import StoreError
from headoffice.s3support import http_status, translated

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, ObjectIdentifierTypeDef

log = logging.getLogger("linetap.office.s3")

_BLOCK = 1024 * 1024
_DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys
_EXISTS = (409, 412)  # If-None-Match refused (412), or a concurrent create (409)


def b64_sha256(data: bytes) -> str:
    """SHA-256 as S3's ``x-amz-checksum-sha256`` carries it (base64)."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _hex_to_b64(sha_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(sha_hex)).decode()


class S3Transfer:
    """Transfers to and from one bucket."""

    def __init__(self, client: S3Client, bucket: str, where: str, part_bytes: int) -> None:
        self.client = client
        self.bucket = bucket
        self.where = where
        self.part_bytes = part_bytes

    # -- writing once --------------------------------------------------------------------
    def put_once(self, key: str, path: Path, sha_hex: str, lock: dict[str, Any], what: str) -> None:
        """Upload ``path`` to ``key`` unless the key exists (``If-None-Match: *``): one PUT
        whose SHA-256 the server checks, or multipart above ``part_bytes``. An existing
        object is left alone; the caller compares it."""
        size = path.stat().st_size
        with translated(f"{what}: cannot store {key}", self.where):
            try:
                if size > self.part_bytes:
                    self._multipart(key, path, sha_hex, lock)
                    return
                with open(path, "rb") as fh:
                    self.client.put_object(
                        Bucket=self.bucket,
                        Key=key,
                        Body=fh,
                        IfNoneMatch="*",
                        ChecksumSHA256=_hex_to_b64(sha_hex),
                        Metadata={"sha256": sha_hex},
                        **lock,
                    )
            except ClientError as exc:
                if http_status(exc) not in _EXISTS:
                    raise

    def put_bytes_once(self, key: str, data: bytes, lock: dict[str, Any], what: str) -> None:
        with translated(f"{what}: cannot store {key}", self.where):
            try:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=data,
                    IfNoneMatch="*",
                    ChecksumSHA256=b64_sha256(data),
                    **lock,
                )
            except ClientError as exc:
                if http_status(exc) not in _EXISTS:
                    raise

    def _multipart(self, key: str, path: Path, sha_hex: str, lock: dict[str, Any]) -> None:
        """Parts of ``part_bytes`` (each checksummed by botocore and checked by the
        server); ``If-None-Match: *`` on the completion; aborted on any failure."""
        upload = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=key, Metadata={"sha256": sha_hex}, **lock
        )["UploadId"]
        try:
            parts: list[CompletedPartTypeDef] = []
            with open(path, "rb") as fh:
                number = 1
                while block := fh.read(self.part_bytes):
                    done = self.client.upload_part(
                        Bucket=self.bucket, Key=key, UploadId=upload, PartNumber=number, Body=block
                    )
                    parts.append({"ETag": done["ETag"], "PartNumber": number})
                    number += 1
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload,
                MultipartUpload={"Parts": parts},
                IfNoneMatch="*",
            )
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)
            except (ClientError, BotoCoreError) as exc:
                # The original failure is the one to report; this only leaves parts behind.
                log.warning("multipart upload %s of %s not aborted: %s", upload, key, exc)
            raise

    # -- reading -------------------------------------------------------------------------
    def version_sha256(self, key: str, version: str, what: str) -> str:
        """The SHA-256 (hex) of one version: the server's full-object checksum, else the
        one recorded at upload (multipart), else hashed from its bytes."""
        with translated(f"{what}: cannot read {key}", self.where):
            head = self.client.head_object(
                Bucket=self.bucket, Key=key, VersionId=version, ChecksumMode="ENABLED"
            )
        checksum = head.get("ChecksumSHA256")
        if checksum and "-" not in checksum and head.get("ChecksumType") != "COMPOSITE":
            return base64.b64decode(checksum).hex()
        recorded = head.get("Metadata", {}).get("sha256")
        if recorded:
            return recorded
        digest = hashlib.sha256()
        self._stream(key, version, [digest.update], what)
        return digest.hexdigest()

    def _stream(self, key: str, version: str | None, sinks: list[Any], what: str) -> int:
        """Feed every block of ``key`` (a version, or the latest) to ``sinks``; its size."""
        size = 0
        with translated(f"{what}: cannot read {key}", self.where):
            try:
                if version is None:
                    got = self.client.get_object(Bucket=self.bucket, Key=key)
                else:
                    got = self.client.get_object(Bucket=self.bucket, Key=key, VersionId=version)
            except ClientError as exc:
                if http_status(exc) == 404:
                    raise StoreError(f"{what}: {key} is gone", reason="missing") from exc
                raise
            body = got["Body"]
            try:
                while block := body.read(_BLOCK):
                    size += len(block)
                    for sink in sinks:
                        sink(block)
            finally:
                body.close()
        return size

    def download_concat(self, keys: Iterable[str], fh: IO[bytes], what: str) -> tuple[str, int]:
        """The latest versions of ``keys`` written one after the other to ``fh``; the
        SHA-256 (hex) and size of the whole. A key gone is a ``missing`` error."""
        digest = hashlib.sha256()
        size = 0
        for key in keys:
            size += self._stream(key, None, [digest.update, fh.write], what)
        return digest.hexdigest(), size

    def download_version(self, key: str, version: str, fh: IO[bytes], what: str) -> None:
        self._stream(key, version, [fh.write], what)

    def get_range(self, key: str, version: str, first: int, last: int, what: str) -> bytes:
        with translated(f"{what}: cannot read {key}", self.where):
            try:
                got = self.client.get_object(
                    Bucket=self.bucket, Key=key, VersionId=version, Range=f"bytes={first}-{last}"
                )
            except ClientError as exc:
                if http_status(exc) == 416:
                    raise StoreError(
                        f"{what}: byte range {first}-{last} is outside the blob", reason="range"
                    ) from exc
                if http_status(exc) == 404:
                    raise StoreError(f"{what}: {key} is gone", reason="missing") from exc
                raise
            body = got["Body"]
            try:
                return body.read()
            finally:
                body.close()

    # -- removing ------------------------------------------------------------------------
    def delete_all_versions(self, prefix: str, what: str, *, exact: bool = False) -> None:
        """Delete every version and delete marker under ``prefix`` (``exact``: of that one
        key). A version the store refuses to delete is an error naming it."""
        doomed: list[ObjectIdentifierTypeDef] = []
        with translated(f"{what}: listing {prefix}", self.where):
            pages = self.client.get_paginator("list_object_versions").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                    if exact and entry.get("Key") != prefix:
                        continue
                    doomed.append(
                        {"Key": entry["Key"], "VersionId": str(entry.get("VersionId") or "null")}
                    )
        for start in range(0, len(doomed), _DELETE_BATCH):
            batch = doomed[start : start + _DELETE_BATCH]
            with translated(f"{what}: deleting under {prefix}", self.where):
                answer = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            errors = answer.get("Errors", [])
            if errors:
                first = errors[0]
                raise StoreError(
                    f"{what}: the S3 store refused to delete {len(errors)} object version(s), "
                    f"e.g. {first.get('Key')} ({first.get('Code')}: {first.get('Message')})",
                    reason="held" if first.get("Code") == "AccessDenied" else "io",
                )

    def read_json(self, key: str, version: str, what: str) -> dict[str, Any]:
        """A stored JSON object (a manifest) as a dict."""
        chunks: list[bytes] = []
        self._stream(key, version, [chunks.append], what)
        try:
            data = json.loads(b"".join(chunks))
        except ValueError as exc:
            raise StoreError(f"{what}: {key} is not JSON ({exc})", reason="conflict") from exc
        if not isinstance(data, dict):
            raise StoreError(f"{what}: {key} is not a JSON object", reason="conflict")
        return data
