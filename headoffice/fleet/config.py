"""``[fleet]`` in office.toml: every alarm threshold of fleet health, the damping of the
alarm lifecycle, and the Prometheus endpoint.

The level limits default to the ones ``linetap check`` judges a line by
(``firmware/dsp/levels.py``: a window under -55 dBFS is silence, a line is silent when
95 % of it is; hum at -30 dBFS spoils recordings; ``firmware/tools/_checks/base.py``:
clipping on more than 0.1 % of the samples fails). The office imports no device code,
so they are written out here; ``tests/test_fleet_rules.py`` checks that they agree.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

__all__ = ["FleetConfig"]

DAY_S = 86400


class FleetConfig(BaseModel):
    """``[fleet]``: thresholds (each alarm's), damping, and ``/metrics``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # -- device offline ---------------------------------------------------------------
    offline_after_s: int = Field(
        300,
        ge=1,
        le=7 * DAY_S,
        description="no telemetry this long = offline (a device publishes every 30 s)",
    )
    # -- line levels, judged from the last calls' manifests ----------------------------
    level_calls: int = Field(
        5, ge=1, le=50, description="how many of a line's latest calls the level alarms judge"
    )
    level_share: float = Field(
        0.6,
        gt=0,
        le=1,
        description="share of those calls that must be silent (hum, clipping) to alarm",
    )
    min_call_s: float = Field(
        10.0, ge=0, le=3600, description="shorter calls are not judged (a hang-up is quiet)"
    )
    silence_fraction: float = Field(
        0.95, gt=0, le=1, description="a call is silent when this share of it is silence"
    )
    silent_rms_dbfs: float = Field(
        -55.0, ge=-120, le=0, description="or when its RMS is below this (dBFS)"
    )
    hum_dbfs: float = Field(
        -30.0, ge=-120, le=0, description="mains hum at or above this spoils a call (dBFS)"
    )
    clip_fraction: float = Field(
        0.001, gt=0, le=1, description="clipped samples above this share of a call's"
    )
    # -- no calls on a busy line (optional) --------------------------------------------
    no_calls: bool = Field(False, description="alarm a usually busy line without calls")
    no_calls_hours: float = Field(
        24.0, gt=0, le=24 * 60, description="no call for this long on such a line"
    )
    no_calls_min_per_day: float = Field(
        3.0, gt=0, le=100_000, description="'usually busy': at least this many calls a day"
    )
    baseline_days: int = Field(
        14, ge=1, le=365, description="the days before the silence the baseline averages"
    )
    # -- backlog ----------------------------------------------------------------------
    backlog_s: int = Field(
        6 * 3600,
        ge=1,
        le=365 * DAY_S,
        description="a recording unacknowledged on the device this long",
    )
    head_ahead_s: int = Field(
        3600,
        ge=1,
        le=365 * DAY_S,
        description="the device's signed head ahead of the office this long",
    )
    head_max_skew_s: int = Field(
        300, ge=0, le=DAY_S, description="a head signed further in the future is refused"
    )
    # -- the device itself ------------------------------------------------------------
    disk_min_free_mb: int = Field(
        512, ge=0, le=10**9, description="the device's data partition below this (MiB)"
    )
    cert_warn_days: int = Field(
        30, ge=1, le=3650, description="the device certificate expires within this"
    )
    event_hold_s: int = Field(
        DAY_S,
        ge=60,
        le=365 * DAY_S,
        description="a replay, chain break or forgery stays an alarm this long",
    )
    # -- the lifecycle ----------------------------------------------------------------
    raise_after_s: int = Field(
        60, ge=0, le=DAY_S, description="a condition must hold this long to be raised"
    )
    clear_after_s: int = Field(
        120, ge=0, le=DAY_S, description="and be gone this long to be cleared"
    )
    flap_window_s: int = Field(
        3600,
        ge=0,
        le=30 * DAY_S,
        description="raised again this soon after clearing: the same alarm, counted",
    )
    tick_s: int = Field(
        30, ge=1, le=3600, description="how often serve looks for time-based conditions"
    )
    # -- Prometheus -------------------------------------------------------------------
    metrics: bool = Field(True, description="serve /metrics on the web server")
    metrics_token: SecretStr | None = Field(
        None, description="bearer token /metrics asks of clients not on this machine"
    )
    metrics_token_file: Path | None = Field(None, description="or the file holding it (mode 0600)")

    @field_validator("metrics_token_file")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError("give the token file's absolute path")
        return value

    def token(self) -> str | None:
        """The bearer token /metrics asks of remote clients (None: loopback only);
        :class:`OSError` when the file cannot be read."""
        if self.metrics_token is not None:
            return self.metrics_token.get_secret_value()
        if self.metrics_token_file is not None:
            return self.metrics_token_file.read_text(encoding="utf-8").strip() or None
        return None
