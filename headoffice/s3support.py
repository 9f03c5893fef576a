"""What :class:`headoffice.s3store.S3BlobStore` needs around the S3 calls themselves: the
client (timeouts, retries, credentials), S3 failures as :class:`StoreError`, the start-up
check of the bucket, and the finishing lock across workers.

Every wait is bounded: connect and read timeouts and a fixed number of attempts per
request (botocore's "standard" retry mode), so an unreachable store is an error within
seconds, never a hang. No message carries a credential.
"""

from __future__ import annotations

import configparser
import json
import secrets
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from headoffice.blobstore import StoreError

if TYPE_CHECKING:  # the stubs are a development dependency
    from mypy_boto3_s3.client import S3Client

_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
_FULL_CODES = {"QuotaExceeded", "XMinioStorageFull", "InsufficientStorage", "EntityTooLarge"}
_LOCK_POLL_S = (0.05, 0.5)  # first and longest wait between tries for a held lock


@dataclass(frozen=True, slots=True)
class S3Settings:
    """How to reach the bucket (from ``[store]`` in office.toml)."""

    endpoint_url: str | None
    region: str
    access_key_id: str | None = None
    secret_access_key: str | None = None
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    max_attempts: int = 3

    def __repr__(self) -> str:  # never print the secret
        return f"S3Settings(endpoint_url={self.endpoint_url!r}, region={self.region!r})"

    @property
    def where(self) -> str:
        return self.endpoint_url or f"AWS S3 ({self.region})"


def read_credentials_file(path: Path) -> tuple[str, str]:
    """(access key id, secret) from an AWS-format credentials file's ``[default]``."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as fh:
            parser.read_file(fh)
        section = parser["default"]
        return section["aws_access_key_id"].strip(), section["aws_secret_access_key"].strip()
    except OSError as exc:
        raise StoreError(
            f"S3 credentials file {path}: cannot read ({exc.strerror or exc})", reason="config"
        ) from exc
    except (KeyError, configparser.Error):
        raise StoreError(
            f"S3 credentials file {path}: needs a [default] section with aws_access_key_id "
            "and aws_secret_access_key",
            reason="config",
        ) from None


def make_client(settings: S3Settings) -> S3Client:
    """A thread-safe S3 client with bounded waits (path-style addressing, which every
    S3-compatible server speaks)."""
    config = Config(
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        retries={"max_attempts": settings.max_attempts, "mode": "standard"},
        s3={"addressing_style": "path"},
    )
    client: S3Client = boto3.session.Session().client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        config=config,
    )
    return client


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def as_store_error(exc: Exception, what: str, where: str) -> StoreError:
    """An S3 or network failure while doing ``what`` as a :class:`StoreError` whose
    message says what to fix."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
        return StoreError(
            f"{what}: S3 endpoint {where} unreachable ({exc}); is the server running and "
            "[store] endpoint_url right?",
            reason="io",
        )
    if isinstance(exc, ReadTimeoutError):
        return StoreError(f"{what}: S3 endpoint {where} did not answer in time", reason="io")
    if isinstance(exc, NoCredentialsError):
        return StoreError(
            f"{what}: no S3 credentials; set [store] access_key_id and secret_access_key "
            "or credentials_file",
            reason="config",
        )
    if isinstance(exc, ClientError):
        code = error_code(exc)
        message = exc.response.get("Error", {}).get("Message", "")
        if code in _AUTH_CODES:
            return StoreError(
                f"{what}: S3 endpoint {where} refused the credentials ({code}); check "
                "[store] access_key_id and secret_access_key (or credentials_file)",
                reason="config",
            )
        if code == "NoSuchBucket":
            return StoreError(
                f"{what}: the bucket does not exist at {where}; create it with Object "
                "Lock enabled, or fix [store] bucket",
                reason="config",
            )
        reason = "full" if code in _FULL_CODES or http_status(exc) == 507 else "io"
        return StoreError(f"{what}: S3 said {code or http_status(exc)} {message}", reason=reason)
    if isinstance(exc, BotoCoreError):
        return StoreError(f"{what}: S3 request failed ({exc})", reason="io")
    return StoreError(f"{what}: {exc}", reason="io")


@contextmanager
def translated(what: str, where: str) -> Iterator[None]:
    """Run S3 calls; their failures come out as :class:`StoreError`."""
    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise as_store_error(exc, what, where) from exc


def check_bucket(client: S3Client, bucket: str, where: str) -> None:
    """The bucket is reachable with these credentials and has Object Lock, without a
    default retention rule (which would lock the parked chunks and lock objects too):
    else a :class:`StoreError` (``config``) naming the fix."""
    what = f"S3 bucket {bucket!r}"
    try:
        answer = client.get_object_lock_configuration(Bucket=bucket)
    except ClientError as exc:
        code = error_code(exc)
        if code in {"ObjectLockConfigurationNotFoundError", "NoSuchObjectLockConfiguration"}:
            raise _no_lock(what) from exc
        if code == "AccessDenied":
            raise StoreError(
                f"{what}: the credentials may not read its Object Lock configuration; "
                "grant s3:GetBucketObjectLockConfiguration (and the object permissions)",
                reason="config",
            ) from exc
        error = as_store_error(exc, what, where)
        raise StoreError(str(error), reason="config") from exc
    except BotoCoreError as exc:
        error = as_store_error(exc, what, where)
        raise StoreError(str(error), reason="config") from exc
    lock = answer.get("ObjectLockConfiguration", {})
    if lock.get("ObjectLockEnabled") != "Enabled":
        raise _no_lock(what)
    if lock.get("Rule", {}).get("DefaultRetention"):
        raise StoreError(
            f"{what} has a default retention rule, which would also lock the parked chunks "
            "and the workers' lock objects (they could never be removed); remove the rule: "
            "the office sets each recording's retention itself",
            reason="config",
        )


def _no_lock(what: str) -> StoreError:
    return StoreError(
        f"{what} has no Object Lock, so it could not enforce retention and legal hold; "
        "Object Lock can only be turned on when a bucket is created: create a new bucket "
        "with it (aws s3api create-bucket --object-lock-enabled-for-bucket …) and name it "
        "in [store] bucket",
        reason="config",
    )


# -- the finishing lock ------------------------------------------------------------------
class FinishLock(Protocol):
    """Exclusive across workers while one finishes or drops a recording: the lock object
    below, or a PostgreSQL advisory lock (:class:`headoffice.stores.IndexFinishLock`)."""

    def hold(self, name: str, timeout: float) -> AbstractContextManager[None]:
        """Held for the ``with`` block; a :class:`StoreError` (``lock``) after ``timeout``."""
        ...

    def cleanup(self) -> int:
        """Remove locks their (crashed) holders left; how many."""
        ...


class ObjectLock:
    """A lock object per recording, created with ``If-None-Match: *`` (only one worker's
    create succeeds) and removed by its own version id on release.

    A worker that crashed while holding one leaves it behind: a lock older than
    ``expiry_s`` (the object's ``Last-Modified`` against the server's ``Date``, so one
    clock judges) is taken over by deleting that very version — never the key, so a
    fresh lock another worker took meanwhile stays. Finishing a recording must take
    less than ``expiry_s`` (uploading a blob of a few GB included), which the default
    (900 s) leaves room for. Used without a PostgreSQL index only: with one, its
    advisory lock takes this one's place (no objects, no expiry to wait out)."""

    def __init__(self, client: S3Client, bucket: str, prefix: str, where: str, expiry_s: float):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.where = where
        self.expiry_s = expiry_s

    def _key(self, name: str) -> str:
        return f"{self.prefix}locks/{name}.lock"

    @contextmanager
    def hold(self, name: str, timeout: float) -> Iterator[None]:
        key = self._key(name)
        body = json.dumps({"owner": secrets.token_hex(8)}).encode()
        deadline = time.monotonic() + timeout
        pause = _LOCK_POLL_S[0]
        while True:
            version = self._try_create(key, body)
            if version is not None:
                break
            if time.monotonic() >= deadline:
                raise StoreError(
                    f"lock {key} still held after {timeout:g} s (another worker is "
                    "finishing that recording, or is stuck)",
                    reason="lock",
                )
            time.sleep(pause)
            pause = min(pause * 2, _LOCK_POLL_S[1])
        try:
            yield
        finally:
            with translated(f"releasing lock {key}", self.where):
                self.client.delete_object(Bucket=self.bucket, Key=key, VersionId=version)

    def _try_create(self, key: str, body: bytes) -> str | None:
        """The new lock's version id, or None while another (live) lock holds the key."""
        with translated(f"taking lock {key}", self.where):
            try:
                made = self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*"
                )
                return str(made.get("VersionId") or "null")
            except ClientError as exc:
                if http_status(exc) not in (409, 412):  # 409: a concurrent create
                    raise
            self._remove_if_expired(key)
        return None

    def _remove_if_expired(self, key: str) -> bool:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if http_status(exc) == 404:
                return False  # released meanwhile: the next try takes it
            raise
        server_now = _server_date(head.get("ResponseMetadata", {}).get("HTTPHeaders", {}))
        age = (server_now - head["LastModified"]).total_seconds()
        if age <= self.expiry_s:
            return False
        self.client.delete_object(
            Bucket=self.bucket, Key=key, VersionId=str(head.get("VersionId") or "null")
        )
        return True

    def cleanup(self) -> int:
        """Remove expired lock objects (left by killed workers); how many."""
        removed = 0
        with translated("cleaning up lock objects", self.where):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=f"{self.prefix}locks/"
            )
            for page in pages:
                for entry in page.get("Contents", []):
                    if self._remove_if_expired(entry["Key"]):
                        removed += 1
        return removed


def _server_date(headers: dict[str, str]) -> datetime:
    """The server's clock from a response's ``Date`` header (else ours)."""
    try:
        return parsedate_to_datetime(headers["date"])
    except (KeyError, TypeError, ValueError):
        return datetime.now().astimezone()
