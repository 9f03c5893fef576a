"""The head office's configuration (office.toml): store, index and broker connection."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from headoffice.authz import Role
from headoffice.fleet.config import FleetConfig
from headoffice.notify.model import NotifyConfig
from headoffice.retention import RetentionConfig
from runtime.errors import ConfigError


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BrokerConfig(_Model):
    host: str = Field("localhost", min_length=1, description="MQTT broker host")
    port: int = Field(8883, ge=1, le=65535, description="broker port (8883 = MQTT over TLS)")
    tls: bool = Field(True, description="TLS with the office's client certificate")
    ca_file: Path | None = Field(None, description="CA certificate (enroll: ca/ca.crt)")
    cert_file: Path | None = Field(None, description="office client certificate (enroll)")
    key_file: Path | None = Field(None, description="office client key, mode 0600")
    client_id: str = Field(
        "office-receiver", min_length=1, description="MQTT client id; unique per worker"
    )
    shared: bool = Field(
        True,
        description="MQTT 5 shared subscription (secret group from the store root) so workers split the load",
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive in seconds")


class LimitsConfig(_Model):
    """What any one device can make the office hold. An enrolled device's keys sit on an
    SD card anyone can pull, so each bound assumes a hostile device with valid keys."""

    max_blob_bytes: int = Field(
        2 * 1024**3,
        ge=1024,
        le=2**40,
        description="largest recording accepted (a 16 kHz FLAC hour is ~60 MB)",
    )
    max_chunks: int = Field(
        16_384,
        ge=1,
        le=16_384,
        description="most chunks per recording (a 'missing' answer lists them all)",
    )
    max_open_uploads: int = Field(
        8, ge=1, le=10_000, description="unfinished uploads one device may have parked"
    )
    max_parked_bytes: int = Field(
        4 * 1024**3,
        ge=1024,
        le=2**44,
        description="bytes of unfinished uploads one device may have parked (by their inits)",
    )
    parked_expiry_s: int = Field(
        7 * 86400,
        ge=60,
        le=365 * 86400,
        description="an upload untouched this long is dropped (the device still has it)",
    )
    housekeeping_s: int = Field(
        600, ge=1, le=86400, description="how often expired uploads are looked for"
    )
    alarm_interval_s: int = Field(
        300,
        ge=0,
        le=86400,
        description="the same alarm for the same device is raised at most this often",
    )
    busy_retry_s: int = Field(
        15, ge=1, le=3600, description="what a refused device is told to wait (full disk, quota)"
    )


class AccountsConfig(_Model):
    """Head-office accounts (headoffice/accounts.py): sessions, lock-out, second factor,
    password hashing."""

    idle_timeout_s: int = Field(
        30 * 60, ge=60, le=86400, description="a session unused this long ends (30 min)"
    )
    absolute_timeout_s: int = Field(
        12 * 3600,
        ge=300,
        le=7 * 86400,
        description="a session ends this long after login, used or not (12 h)",
    )
    lockout_after: int = Field(
        5, ge=1, le=100, description="failed logins in a row before the account is locked"
    )
    lockout_first_s: int = Field(
        60, ge=1, le=86400, description="the first lock's length; doubled per further failure"
    )
    lockout_max_s: int = Field(3600, ge=1, le=7 * 86400, description="the longest lock (1 h)")
    totp_required_for: tuple[Role, ...] = Field(
        (Role.ADMIN, Role.SUPERVISOR, Role.COMPLIANCE),
        description="roles that must log in with a TOTP code (those that can export or "
        "administer); others use one when enrolled",
    )
    totp_issuer: str = Field(
        "linetap", min_length=1, max_length=64, description="issuer name shown in the TOTP app"
    )
    min_password_length: int = Field(
        12, ge=8, le=128, description="shortest password accepted for a new or changed one"
    )
    password_time_cost: int = Field(
        3, ge=1, le=20, description="argon2id passes (RFC 9106: 3); a change rehashes at login"
    )
    password_memory_kib: int = Field(
        64 * 1024,
        ge=1024,
        le=4 * 1024 * 1024,
        description="argon2id memory in KiB (RFC 9106: 65536); a change rehashes at login",
    )
    password_parallelism: int = Field(
        4, ge=1, le=64, description="argon2id lanes (RFC 9106: 4); a change rehashes at login"
    )


class WebConfig(_Model):
    """``[web]``: the review web server (``linetap-office web``, headoffice/web/)."""

    listen: str = Field("127.0.0.1", min_length=1, description="address to listen on")
    port: int = Field(8443, ge=1, le=65535, description="TCP port (8443)")
    tls_cert: Path | None = Field(
        None, description="TLS certificate chain (PEM); with tls_key the server speaks HTTPS"
    )
    tls_key: Path | None = Field(None, description="TLS private key (PEM), mode 0600")
    cookie_secure: bool = Field(
        False,
        description="mark the session cookie Secure even over plain HTTP (set it behind a "
        "TLS-terminating reverse proxy; over TLS the cookie is Secure anyway)",
    )
    trusted_proxies: tuple[str, ...] = Field(
        (),
        description="addresses or networks of reverse proxies whose X-Forwarded-For is "
        'believed (e.g. ["127.0.0.1"]); from anyone else it is ignored',
    )
    office_name: str = Field(
        "linetap head office",
        min_length=1,
        max_length=100,
        description="the name shown in every page's header",
    )

    @model_validator(mode="after")
    def _check(self) -> WebConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set both tls_cert and tls_key, or neither")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(
                    f"trusted_proxies: {proxy!r} is not an address or network"
                ) from None
        return self


class StoreConfig(_Model):
    """``[store]``: where recordings are kept. ``file`` (the default, nothing to install):
    under ``root``. ``s3``: an S3 bucket created with Object Lock (headoffice/s3store.py),
    whose lock enforces retention and legal hold; ``root`` still holds the keys and CA and
    the workers' temp files. Credentials: ``access_key_id`` + ``secret_access_key``, or
    ``credentials_file`` (AWS format, ``[default]`` section), or neither (the AWS
    environment variables); the secret is never logged."""

    backend: Literal["file", "s3"] = Field("file", description='"file" or "s3"')
    endpoint_url: str | None = Field(
        None, description="S3 endpoint, e.g. https://s3.example.net (default: AWS)"
    )
    bucket: str | None = Field(
        None, min_length=3, max_length=63, description="bucket (created with Object Lock)"
    )
    region: str = Field("us-east-1", min_length=1, description="the bucket's region")
    access_key_id: str | None = Field(None, min_length=1, description="S3 access key id")
    secret_access_key: SecretStr | None = Field(None, description="S3 secret key")
    credentials_file: Path | None = Field(
        None, description="AWS-format credentials file, mode 0600 (instead of the two keys)"
    )
    lock_mode: Literal["COMPLIANCE", "GOVERNANCE"] = Field(
        "COMPLIANCE",
        description="Object Lock mode of retention dates: COMPLIANCE (nobody can shorten "
        "or delete early) or GOVERNANCE (accounts with the bypass permission can)",
    )
    prefix: str = Field(
        "",
        max_length=200,
        pattern=r"^([A-Za-z0-9_.-]+/)*$",
        description='key prefix, e.g. "office/"',
    )
    commit_retain_days: int = Field(
        0,
        ge=0,
        le=100 * 366,
        description="Object Lock retention every recording gets as it is written (days); "
        "0: none until the retention job sets one",
    )
    multipart_part_mb: int = Field(
        64, ge=5, le=5120, description="blobs larger than this go up in parts of this size"
    )
    connect_timeout_s: float = Field(5.0, gt=0, le=120, description="connect timeout")
    read_timeout_s: float = Field(60.0, gt=0, le=3600, description="read timeout")
    max_attempts: int = Field(3, ge=1, le=10, description="tries per request (retries + 1)")
    lock_expiry_s: int = Field(
        900,
        ge=10,
        le=86400,
        description="a worker's finishing lock older than this is taken over (it crashed)",
    )

    @model_validator(mode="after")
    def _check(self) -> StoreConfig:
        if self.backend == "s3" and not self.bucket:
            raise ValueError('backend = "s3" needs a bucket')
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("set both access_key_id and secret_access_key, or neither")
        if self.credentials_file is not None and self.access_key_id is not None:
            raise ValueError("set access_key_id/secret_access_key or credentials_file, not both")
        return self


class AuditConfig(_Model):
    """``[audit]``: where signed checkpoints of the audit ledger are kept besides the
    index (headoffice/ledger/worm.py). ``worm_bucket``: ``linetap-office audit
    checkpoint`` also writes each one there, write-once, under COMPLIANCE retention
    (nobody, the bucket's owner included, can delete or overwrite it before the date),
    and ``audit verify`` checks the ledger against every one found there. The bucket is
    reached with ``[store]``'s ``endpoint_url``, ``region`` and credentials (also with
    ``backend = "file"``); it must be created with Object Lock."""

    worm_bucket: str | None = Field(
        None,
        min_length=3,
        max_length=63,
        description="bucket (created with Object Lock) for the signed checkpoints",
    )
    worm_retain_days: int = Field(
        3653,
        ge=1,
        le=100 * 366,
        description="COMPLIANCE retention of each checkpoint in the bucket, days (10 years)",
    )


class OfficeConfig(_Model):
    root: Path = Field(
        Path("/var/lib/linetap-office"),
        description="store root: blobs/, parking/, devices/, ca/, keys/",
    )
    index: str | None = Field(
        None, description="index URL: sqlite:///path or postgresql://… (default: sqlite in root)"
    )
    broker: BrokerConfig = Field(default_factory=BrokerConfig, description="broker connection")
    limits: LimitsConfig = Field(
        default_factory=LimitsConfig, description="bounds on what a device can make us hold"
    )
    recipients: tuple[str, ...] | None = Field(
        None,
        description="the age recipients every manifest must name exactly (default: the "
        "office identity's, keys/office.key); add escrow recipients here",
    )
    sites: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description="[sites]: site name -> the device ids at that site (user scopes name sites)",
    )
    accounts: AccountsConfig = Field(
        default_factory=AccountsConfig,
        description="[accounts]: sessions, lock-out, TOTP and password hashing",
    )
    web: WebConfig = Field(
        default_factory=WebConfig,
        description="[web]: the review web server (listen address, TLS, proxies)",
    )
    retention: RetentionConfig = Field(
        default_factory=RetentionConfig,
        description="[retention]: how long recordings are kept (headoffice/retention.py)",
    )
    store: StoreConfig = Field(
        default_factory=StoreConfig,
        description="[store]: the blob store (filesystem under root, or an S3 bucket)",
    )
    audit: AuditConfig = Field(
        default_factory=AuditConfig,
        description="[audit]: signed ledger checkpoints also kept in a WORM bucket",
    )
    fleet: FleetConfig = Field(
        default_factory=FleetConfig,
        description="[fleet]: fleet health thresholds, alarm damping, /metrics",
    )
    notify: NotifyConfig = Field(
        default_factory=NotifyConfig,
        description="[notify]: alarms by e-mail and signed webhook (headoffice/notify/)",
    )

    @model_validator(mode="after")
    def _policy_sites(self) -> OfficeConfig:
        unknown = sorted({p.site for p in self.retention.policy if p.site} - set(self.sites))
        if unknown:
            raise ValueError(
                f"[retention] policy names unknown site {', '.join(unknown)}: add it under "
                '[sites], e.g. hq = ["dev-1", "dev-2"]'
            )
        return self

    @property
    def index_url(self) -> str:
        return self.index or f"sqlite:///{self.root / 'index.sqlite3'}"


def load_office_config(path: Path) -> OfficeConfig:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file; pass --config with the office config"]) from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read ({exc})"]) from None
    try:
        cfg = OfficeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            [f"{path}: {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        ) from None
    base = path.parent

    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else base / p

    return cfg.model_copy(
        update={
            "root": fix(cfg.root),
            "broker": cfg.broker.model_copy(
                update={
                    k: fix(getattr(cfg.broker, k)) for k in ("ca_file", "cert_file", "key_file")
                }
            ),
            "web": cfg.web.model_copy(
                update={k: fix(getattr(cfg.web, k)) for k in ("tls_cert", "tls_key")}
            ),
            "store": cfg.store.model_copy(
                update={"credentials_file": fix(cfg.store.credentials_file)}
            ),
        }
    )


# --------------------------------------------------------------------------- where the office is
# Every linetap-office command finds the store root and the index the same way:
# resolve_office() below (the CLI passes its --config / --root|--store / --index values).

CONFIG_ENV = "LINETAP_OFFICE_CONFIG"
DEFAULT_CONFIG = Path("/etc/linetap-office/office.toml")
# Older ways to name the store without a config file (kept working).
STORE_ENV = "LINETAP_OFFICE_STORE"
INDEX_ENV = "LINETAP_OFFICE_INDEX"


def sqlite_index_url(root: Path) -> str:
    """The default index: ``index.sqlite3`` in the store root."""
    return f"sqlite:///{Path(root).resolve() / 'index.sqlite3'}"


def office_config_path(config: Path | None, environ: Mapping[str, str] | None = None) -> Path:
    """``config``, else ``$LINETAP_OFFICE_CONFIG``, else /etc/linetap-office/office.toml;
    a default that does not exist is a one-line :class:`ConfigError` saying what to pass."""
    if config is not None:
        return config
    env = os.environ if environ is None else environ
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    if not DEFAULT_CONFIG.exists():
        raise ConfigError(
            [
                f"no office config: {DEFAULT_CONFIG} does not exist and ${CONFIG_ENV} is not"
                " set; pass --config office.toml (or --root DIR for a store without one)"
            ]
        )
    return DEFAULT_CONFIG


@dataclass(frozen=True, slots=True)
class OfficeLocation:
    """Where a command finds the office: store root, index URL, and the config they came
    from (``None`` when the root was given directly)."""

    root: Path
    index_url: str
    config: OfficeConfig | None


def resolve_office(
    config: Path | None = None,
    root: Path | None = None,
    index: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> OfficeLocation:
    """The one place that turns ``--config`` / ``--root`` (``--store``) / ``--index`` into
    an :class:`OfficeLocation`.

    ``--config`` loads office.toml (``--root`` and ``--index`` given as well override its
    values). ``--root`` alone uses that directory, with ``--index`` or
    ``$LINETAP_OFFICE_INDEX`` or ``ROOT/index.sqlite3``. Neither: ``$LINETAP_OFFICE_CONFIG``,
    then ``$LINETAP_OFFICE_STORE`` (a root), then /etc/linetap-office/office.toml.
    Raises :class:`ConfigError` (one line per problem, exit status 2)."""
    env = os.environ if environ is None else environ
    if config is None and root is None and not env.get(CONFIG_ENV) and env.get(STORE_ENV):
        root = Path(env[STORE_ENV])
    if config is None and root is not None:
        return OfficeLocation(root, index or env.get(INDEX_ENV) or sqlite_index_url(root), None)
    cfg = load_office_config(office_config_path(config, env))
    final_root = root if root is not None else cfg.root
    url = index or cfg.index or sqlite_index_url(final_root)
    return OfficeLocation(final_root, url, cfg)
