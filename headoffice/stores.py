"""The one place the office turns ``[store]`` (office.toml) into a blob store.

``backend = "file"`` (the default): :class:`~headoffice.store.FileBlobStore` under the
office root. ``backend = "s3"``: :class:`~headoffice.s3store.S3BlobStore`, checked at
once (bucket there, Object Lock on, credentials accepted, endpoint answering), so a
misconfigured office says what to fix when it starts rather than at its first upload.
"""

from __future__ import annotations

from pathlib import Path

from headoffice.blobstore import BlobStore
from headoffice.config import OfficeConfig, StoreConfig
from headoffice.s3store import S3BlobStore
from headoffice.s3support import S3Settings, check_bucket, make_client, read_credentials_file
from headoffice.store import TMP, FileBlobStore

__all__ = ["open_s3_store", "open_store"]


def open_store(cfg: OfficeConfig | None, root: Path) -> BlobStore:
    """The blob store ``cfg`` names (a filesystem store under ``root`` without a config);
    a :class:`~headoffice.blobstore.StoreError` (``config``) if it is unusable."""
    if cfg is None or cfg.store.backend == "file":
        return FileBlobStore(root)
    return open_s3_store(cfg.store, root)


def open_s3_store(store: StoreConfig, root: Path) -> S3BlobStore:
    """An S3 store from ``[store]``, its bucket checked; temp files under ``root/tmp``."""
    key_id = store.access_key_id
    secret = store.secret_access_key.get_secret_value() if store.secret_access_key else None
    if store.credentials_file is not None:
        key_id, secret = read_credentials_file(store.credentials_file)
    settings = S3Settings(
        endpoint_url=store.endpoint_url,
        region=store.region,
        access_key_id=key_id,
        secret_access_key=secret,
        connect_timeout_s=store.connect_timeout_s,
        read_timeout_s=store.read_timeout_s,
        max_attempts=store.max_attempts,
    )
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
    )
