"""The head office's configuration (office.toml): store, index and broker connection."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from firmware.errors import ConfigError


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


class OfficeConfig(_Model):
    root: Path = Field(
        Path("/var/lib/linetap-office"),
        description="store root: blobs/, parking/, devices/, ca/, keys/",
    )
    index: str | None = Field(
        None, description="index URL: sqlite:///path or postgresql://… (default: sqlite in root)"
    )
    broker: BrokerConfig = Field(default_factory=BrokerConfig, description="broker connection")

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
        }
    )
