"""The one place the office turns ``[store]`` (office.toml) into a blob store.

``backend = "file"`` (the default): :class:`~headoffice.store.FileBlobStore` under the
office root. ``backend = "s3"``: :class:`~headoffice.s3store.S3BlobStore`, checked at
once (bucket there, Object Lock on, credentials accepted, endpoint answering), so a
misconfigured office says what to fix when it starts rather than at its first upload.

The S3 store's finishing lock (its :class:`~headoffice.s3support.FinishLock` seam):
with a PostgreSQL index, the index's advisory lock (:mod:`headoffice.index.pglock`: two
round trips to the database, nothing left behind by a killed worker); without one, a
conditional-create lock object in the bucket (:class:`~headoffice.s3support.ObjectLock`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from headoffice.blobstore import BlobStore, StoreError
from headoffice.config import OfficeConfig, StoreConfig
from headoffice.index import Index, IndexStoreError, PostgresIndex
from headoffice.index.pglock import LockTimeoutError
from headoffice.s3store import S3BlobStore
from headoffice.s3support import (
    FinishLock,
    S3Settings,
    check_bucket,
    make_client,
    read_credentials_file,
)
from headoffice.store import TMP, FileBlobStore

__all__ = ["IndexFinishLock", "open_s3_store", "open_store", "s3_settings"]


class IndexFinishLock:
    """The S3 store's finishing lock taken from a PostgreSQL index: its advisory lock.

    The receiver takes the store's lock and then the index's, in one thread; both are then
    the same lock, which nests (one lock on the server, not two). A timeout is a
    :class:`StoreError` (``lock``), as the store's own lock reports it."""

    def __init__(self, index: PostgresIndex) -> None:
        self.index = index

    @contextmanager
    def hold(self, name: str, timeout: float) -> Iterator[None]:
        device, rec = name.split("/", 1)  # the store's name: checked ids, "/" in neither
        with ExitStack() as stack:
            try:
                stack.enter_context(self.index.finish_lock(device, rec, timeout))
            except LockTimeoutError as exc:
                raise StoreError(str(exc), reason="lock") from exc
            except IndexStoreError as exc:
                raise StoreError(f"recording {rec}: {exc}", reason="io") from exc
            yield  # errors of the caller's block pass through untranslated

    def cleanup(self) -> int:
        """Nothing to clean: the server releases the locks of a session that ended."""
        return 0


def open_store(cfg: OfficeConfig | None, root: Path, *, index: Index | None = None) -> BlobStore:
    """The blob store ``cfg`` names (a filesystem store under ``root`` without a config);
    a :class:`~headoffice.blobstore.StoreError` (``config``) if it is unusable. ``index``:
    the index of a process that finishes recordings (``serve``); a PostgreSQL one then
    provides an S3 store's finishing lock."""
    if cfg is None or cfg.store.backend == "file":
        return FileBlobStore(root)
    finish_lock = IndexFinishLock(index) if isinstance(index, PostgresIndex) else None
    return open_s3_store(cfg.store, root, finish_lock=finish_lock)


def s3_settings(store: StoreConfig) -> S3Settings:
    """How to reach S3 as ``[store]`` says (its credentials file read now)."""
    key_id = store.access_key_id
    secret = store.secret_access_key.get_secret_value() if store.secret_access_key else None
    if store.credentials_file is not None:
        key_id, secret = read_credentials_file(store.credentials_file)
    return S3Settings(
        endpoint_url=store.endpoint_url,
        region=store.region,
        access_key_id=key_id,
        secret_access_key=secret,
        connect_timeout_s=store.connect_timeout_s,
        read_timeout_s=store.read_timeout_s,
        max_attempts=store.max_attempts,
    )


def open_s3_store(
    store: StoreConfig, root: Path, *, finish_lock: FinishLock | None = None
) -> S3BlobStore:
    """An S3 store from ``[store]``, its bucket checked; temp files under ``root/tmp``."""
    settings = s3_settings(store)
    client = make_client(settings)
    bucket = str(store.bucket)
    check_bucket(client, bucket, settings.where)
    return S3BlobStore(
        client,
        bucket,
        Path(root) / TMP,
        prefix=store.prefix,
        where=settings.where,
        lock_mode=store.lock_mode,
        commit_retain_days=store.commit_retain_days,
        multipart_part_bytes=store.multipart_part_mb * 1024 * 1024,
        lock_expiry_s=store.lock_expiry_s,
        finish_lock=finish_lock,
    )
