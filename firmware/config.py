"""The appliance configuration: /etc/linetap/linetap.toml, loaded and validated here only.

Models are frozen and forbid unknown keys; every field has limits and a description,
and the description doubles as the "how to fix" half of an error message. Errors come
back as one line per problem, mapped to the line of the file they concern::

    /etc/linetap/linetap.toml:23: lines[1].hook_pin: Input should be less than or
    equal to 63; BCM GPIO number of the hook switch input (0-63).
"""

from __future__ import annotations

import difflib
import os
import re
import socket
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from firmware.announce_config import CONFIG_DIR, AnnounceConfig, LineAnnounceKeys, announce_problems
from runtime.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/linetap/linetap.toml")
CONFIG_PATH_ENV = "LINETAP_CONFIG"
MAX_LINES = 4

ActiveLevel = Literal["low", "high"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=False)


# The capture period when nothing needs a short one: the recorder's cost is mostly per
# period (an idle line at 100 ms costs a quarter of what it does at 20 ms, bench/capture_rtf.py),
# hook edges are timestamped by the GPIO backend, and the LEDs' patterns are multiples of it.
IDLE_PERIOD_MS = 100
# A recording announcement is played a block per capture period behind half a buffer of
# prefill (firmware/announce_output.py): with 20 ms it starts about 110 ms after the
# off-hook, with 100 ms about 430 ms, over the caller's first words.
ANNOUNCE_PERIOD_MS = 20


class AudioConfig(_Model):
    backend: Literal["alsa", "file"] = Field(
        "alsa",
        description='capture backend: "alsa" (the HAT) or "file" (play audio.file as the line)',
    )
    device: str = Field(
        "default",
        min_length=1,
        description="ALSA capture PCM name, e.g. \"hw:CARD=linetap\" (see 'arecord -L')",
    )
    sample_rate: Literal[8000, 16000] = Field(
        8000, description="capture rate in Hz for every line: 8000 or 16000"
    )
    channels: int = Field(
        1, ge=1, le=8, description="interleaved channels the capture device delivers (1-8)"
    )
    sample_format: Literal["S16_LE", "S32_LE"] = Field(
        "S16_LE", description='capture sample format: "S16_LE" or "S32_LE"'
    )
    period_ms: int = Field(
        IDLE_PERIOD_MS,
        ge=5,
        le=100,
        description=f"capture period in ms (5-100), the recorder's tick; default {IDLE_PERIOD_MS},"
        f" or {ANNOUNCE_PERIOD_MS} when a line announces (the prompt starts a few periods late)",
    )
    periods: int = Field(
        8, ge=2, le=64, description="periods in the ALSA buffer (2-64); more survives longer stalls"
    )
    file: Path | None = Field(
        None, description='audio file played as the line when backend = "file" (WAV, FLAC or raw)'
    )
    file_realtime: bool = Field(
        True, description="play audio.file at real speed (true) or as fast as possible (false)"
    )
    reopen_s: float = Field(
        2.0, gt=0, le=60, description="seconds between attempts to reopen a missing device (0-60)"
    )

    @property
    def period_frames(self) -> int:
        return self.sample_rate * self.period_ms // 1000


class GpioConfig(_Model):
    backend: Literal["rpigpio", "gpiod", "sim"] = Field(
        "gpiod",
        description='GPIO backend: "gpiod" (any board, Pi 5), "rpigpio" (Pi 3/4) or "sim"',
    )
    chip: str = Field(
        "/dev/gpiochip0", min_length=1, description="GPIO character device for gpiod ('gpiodetect')"
    )
    script: Path | None = Field(
        None, description='events file that drives the pins when backend = "sim"'
    )
    status_led_pin: int | None = Field(
        None, ge=0, le=63, description="BCM GPIO number of the device status LED (0-63), or omit"
    )
    status_led_active: ActiveLevel = Field(
        "high", description='level that lights the status LED: "high" or "low"'
    )


class CallConfig(_Model):
    preroll_s: float = Field(
        5.0, ge=0, le=30, description="seconds of audio before the off-hook edge kept (0-30)"
    )
    debounce_ms: int = Field(
        30, ge=0, le=500, description="ms a hook / opt-out level must hold to count (0-500)"
    )
    flash_max_ms: int = Field(
        1000,
        ge=50,
        le=5000,
        description="on-hook shorter than this is a hook flash, not a hang-up (50-5000 ms)",
    )
    max_call_s: int = Field(
        3600,
        ge=10,
        le=86400,
        description="recordings longer than this roll over into a continued one (10-86400 s)",
    )
    opt_out_mode: Literal["pause", "discard"] = Field(
        "pause",
        description='opt-out input: "pause" cuts and marks the span, "discard" drops the call',
    )


class TelephonyConfig(_Model):
    mask_dtmf: bool = Field(
        True,
        description="replace key presses (DTMF) in the stored audio by silence/noise (PCI DSS)",
    )
    mask_after_n: int = Field(
        0,
        ge=0,
        le=32,
        description="leave the first N digits after off-hook readable (menu choices), mask the rest (0-32; 0: mask all)",
    )
    mask_mode: Literal["silence", "comfort_noise"] = Field(
        "comfort_noise",
        description='what replaces a masked digit: "silence" or "comfort_noise" (low noise, -65 dBm0)',
    )
    mask_guard_ms: int = Field(
        35,
        ge=15,
        le=200,
        description="ms masked before and after each detected digit (15-200); 35 leaves no tone",
    )
    fsk_caller_id: bool = Field(
        True, description="decode FSK caller ID (Bell 202 / V.23) heard on the line"
    )
    caller_id_window_s: float = Field(
        40.0,
        ge=1,
        le=300,
        description="a caller ID heard up to this many seconds before off-hook belongs to the call (1-300)",
    )
    outbound_window_s: float = Field(
        15.0,
        ge=1,
        le=120,
        description="a call without caller ID whose first digit comes within this many seconds of off-hook is outbound (1-120)",
    )


class StorageConfig(_Model):
    format: Literal["sealed", "wav"] = Field(
        "sealed",
        description='"sealed" (encrypted, signed, queued in the outbox) or "wav" (plain;'
        " development only: needs [development] allow_plain_audio = true)",
    )
    data_dir: Path = Field(
        Path("/var/lib/linetap"),
        description="data partition: journal/, outbox/, state/ and keys/ live here",
    )
    out_dir: Path | None = Field(
        None, description='where format = "wav" writes (default: data_dir/wav)'
    )
    keep_acked_days: float = Field(
        30.0,
        ge=0,
        le=3650,
        description="days to keep recordings the head office acknowledged (0-3650)",
    )
    min_free_mb: int = Field(
        256,
        ge=0,
        le=1_000_000,
        description="free space to keep on the data partition, in MB; acked recordings are deleted early to keep it",
    )
    ram_buffer_mb: int = Field(
        64,
        ge=1,
        le=2048,
        description="RAM for sealed audio while the data partition is full (1-2048 MB)",
    )

    runtime_dir: Path = Field(
        Path("/run/linetap"),
        description="tmpfs for short-lived plain state: the recorder's status file for the uploader and tools",
    )

    @property
    def status_file(self) -> Path:
        return self.runtime_dir / "recorder.json"

    @property
    def wav_dir(self) -> Path:
        return self.out_dir if self.out_dir is not None else self.data_dir / "wav"

    @property
    def journal_dir(self) -> Path:
        return self.data_dir / "journal"

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    @property
    def chain_file(self) -> Path:
        return self.data_dir / "state" / "chain.json"

    @property
    def head_file(self) -> Path:
        """The signed device head (firmware.headfile): the recorder writes, the uploader
        publishes it."""
        return self.data_dir / "state" / "head.json"


class SealingConfig(_Model):
    recipients: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="head-office age public keys ('age1…'), e.g. operational + escrow; from 'linetap-office enroll'",
    )
    codec: Literal["flac", "opus"] = Field(
        "flac", description='"flac" (lossless, default) or "opus" (smaller, lossy)'
    )
    opus_bitrate: int = Field(
        16000,
        ge=6000,
        le=64000,
        description="Opus bitrate in bit/s (6000-64000); 16000 suits 8 kHz speech",
    )
    journal_sync_s: float = Field(
        1.0,
        ge=0.1,
        le=10,
        description="seconds of audio between journal fsyncs (0.1-10): the most a power cut loses",
    )
    device_key: Path | None = Field(
        None,
        description="Ed25519 device signing key, mode 0600 (default: data_dir/keys/device.key)",
    )

    @field_validator("recipients")
    @classmethod
    def _recipients_parse(cls, value: list[str]) -> list[str]:
        if not value:
            return value
        from sealedrec.age import AgeError, parse_recipient

        for item in value:
            try:
                parse_recipient(item)
            except AgeError as exc:
                raise ValueError(
                    f"{exc}; paste the key exactly as 'linetap-office enroll' printed it"
                ) from None
        return value


class UploadConfig(_Model):
    host: str = Field("localhost", min_length=1, description="head-office MQTT broker host name")
    port: int = Field(8883, ge=1, le=65535, description="broker port (8883 = MQTT over TLS)")
    tls: bool = Field(True, description="TLS with a client certificate (always on in production)")
    ca_file: Path | None = Field(
        None, description="CA certificate that signed the broker's (from enroll)"
    )
    cert_file: Path | None = Field(
        None, description="this device's client certificate (from enroll)"
    )
    key_file: Path | None = Field(None, description="this device's TLS private key, mode 0600")
    chunk_kib: int = Field(256, ge=1, le=4096, description="upload chunk size in KiB (1-4096)")
    window: int = Field(
        16, ge=1, le=1024, description="chunks in flight before waiting for PUBACKs (1-1024)"
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive in seconds (5-3600)")
    ack_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="seconds to wait for the store's ack before asking again"
    )
    telemetry_s: float = Field(
        30.0, ge=1, le=3600, description="seconds between status telemetry messages"
    )
    backoff_max_s: float = Field(
        60.0, ge=1, le=3600, description="longest wait between reconnect attempts"
    )


class SerialCallerIdConfig(_Model):
    backend: Literal["pyserial", "sim"] = Field(
        "pyserial", description='"pyserial" (a real serial port) or "sim" (a script, for tests)'
    )
    device: str = Field(
        "/dev/ttyUSB0",
        min_length=1,
        description="serial device of the caller-ID unit; /dev/serial/by-id/... survives replugging",
    )
    baudrate: int = Field(
        1200, ge=300, le=921600, description="baud rate the unit prints at (300-921600)"
    )
    init: str | None = Field(
        None,
        max_length=64,
        description='sent after each open, e.g. "AT#CID=1\\r" for a modem; omit for a caller-ID box',
    )
    idle_gap_s: float = Field(
        0.5,
        ge=0.05,
        le=10,
        description="a record without a NAME line ends after this many quiet seconds (0.05-10)",
    )
    script: Path | None = Field(
        None, description='backend = "sim": the unit\'s output on a timeline (see README)'
    )


class LineConfig(LineAnnounceKeys):  # announce, announce_file, announce_channel
    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$",
        description="line name: lower-case letters, digits, '-' or '_', up to 32 characters",
    )
    channel: int = Field(ge=0, le=7, description="capture channel of this line (0-based)")
    hook_pin: int = Field(
        ge=0, le=63, description="BCM GPIO number of the hook switch input (0-63)"
    )
    hook_active: ActiveLevel = Field(
        "low", description='level the hook input has when the handset is off-hook: "low"/"high"'
    )
    hook_pull: Literal["up", "down", "off"] = Field(
        "up", description='bias on the hook input: "up", "down" or "off"'
    )
    led_pin: int | None = Field(
        None, ge=0, le=63, description="BCM GPIO number of this line's consent LED (0-63), or omit"
    )
    led_active: ActiveLevel = Field("high", description='level that lights the LED: "high"/"low"')
    opt_out_pin: int | None = Field(
        None, ge=0, le=63, description="BCM GPIO number of the opt-out input (0-63), or omit"
    )
    opt_out_active: ActiveLevel = Field(
        "low", description='level the opt-out input has when pressed: "low" or "high"'
    )
    opt_out_pull: Literal["up", "down", "off"] = Field(
        "up", description='bias on the opt-out input: "up", "down" or "off"'
    )
    caller_id_serial: SerialCallerIdConfig | None = Field(
        None,
        description="a modem or caller-ID box on a serial port for this line ([lines.caller_id_serial])",
    )


class DevelopmentConfig(_Model):
    """Switches for development machines. An appliance never sets any of them: the image
    ships none, and provisioning from the boot partition changes them only through a
    settings file the head office signed (firmware/tools/_boot_settings.py)."""

    allow_plain_audio: bool = Field(
        False,
        description='let storage.format = "wav" write plain recordings (development machines'
        " only: plain audio must never reach an appliance's storage)",
    )


class _CrossFieldProblems(ValueError):
    """Raised by the root validator; carries (key path, message) pairs."""

    def __init__(self, problems: list[tuple[tuple[str | int, ...], str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(m for _, m in problems))


class LinetapConfig(_Model):
    device_id: str = Field(
        default_factory=socket.gethostname,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="this appliance's id (letters, digits, '.', '_', '-'); defaults to the hostname",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description='log level: "debug", "info", "warning" or "error"'
    )
    audio: AudioConfig = Field(default_factory=AudioConfig, description="capture device")
    gpio: GpioConfig = Field(default_factory=GpioConfig, description="GPIO backend and pins")
    call: CallConfig = Field(default_factory=CallConfig, description="call detection")
    telephony: TelephonyConfig = Field(
        default_factory=TelephonyConfig,
        description="DTMF masking, caller ID and call direction",
    )
    storage: StorageConfig = Field(default_factory=StorageConfig, description="where recordings go")
    sealing: SealingConfig = Field(
        default_factory=SealingConfig, description="encryption and signing"
    )
    upload: UploadConfig = Field(
        default_factory=UploadConfig, description="MQTT upload to the head office"
    )
    announce: AnnounceConfig = Field(
        default_factory=AnnounceConfig, description="recording announcement playback and tone"
    )
    development: DevelopmentConfig = Field(
        default_factory=DevelopmentConfig,
        description="development-only switches ([development]); never on an appliance",
    )
    lines: list[LineConfig] = Field(
        min_length=1,
        max_length=MAX_LINES,
        description=f"the phone lines, 1 to {MAX_LINES} [[lines]] tables",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_period(cls, data: object) -> object:
        """``audio.period_ms`` left out: short when a line announces (see ANNOUNCE_PERIOD_MS)."""
        if not isinstance(data, dict):
            return data
        audio, lines = data.get("audio", {}), data.get("lines")
        if not isinstance(audio, dict) or "period_ms" in audio or not isinstance(lines, list):
            return data
        announcing = any(
            isinstance(line, dict) and line.get("announce", "off") != "off" for line in lines
        )
        period = ANNOUNCE_PERIOD_MS if announcing else IDLE_PERIOD_MS
        return {**data, "audio": {**audio, "period_ms": period}}

    @model_validator(mode="after")
    def _cross_field(self) -> LinetapConfig:
        problems = cross_field_problems(self)
        if problems:
            raise _CrossFieldProblems(problems)
        return self

    def line(self, name: str) -> LineConfig:
        for line in self.lines:
            if line.name == name:
                return line
        raise KeyError(name)


def cross_field_problems(cfg: LinetapConfig) -> list[tuple[tuple[str | int, ...], str]]:
    """Rules that involve more than one key, as (key path, message with the fix)."""
    out: list[tuple[tuple[str | int, ...], str]] = []
    names: dict[str, int] = {}
    channels: dict[int, int] = {}
    pins: dict[int, str] = {}
    if cfg.gpio.status_led_pin is not None:
        pins[cfg.gpio.status_led_pin] = "gpio.status_led_pin"
    for i, line in enumerate(cfg.lines):
        if line.name in names:
            out.append(
                (
                    ("lines", i, "name"),
                    f"duplicate line name {line.name!r}; give every line its own name",
                )
            )
        names.setdefault(line.name, i)
        if line.channel >= cfg.audio.channels:
            out.append(
                (
                    ("lines", i, "channel"),
                    f"channel {line.channel} does not exist: audio.channels = {cfg.audio.channels}"
                    f" (channels 0-{cfg.audio.channels - 1}); raise audio.channels or pick another channel",
                )
            )
        if line.channel in channels:
            out.append(
                (
                    ("lines", i, "channel"),
                    f"channel {line.channel} is already line {cfg.lines[channels[line.channel]].name!r}; "
                    "each line needs its own channel",
                )
            )
        channels.setdefault(line.channel, i)
        for key in ("hook_pin", "led_pin", "opt_out_pin"):
            pin = getattr(line, key)
            if pin is None:
                continue
            if pin in pins:
                out.append(
                    (
                        ("lines", i, key),
                        f"GPIO{pin} is already used by {pins[pin]}; each input/LED needs its own pin",
                    )
                )
            else:
                pins[pin] = f"lines[{i}].{key}"
    if cfg.call.flash_max_ms <= cfg.call.debounce_ms:
        out.append(
            (
                ("call", "flash_max_ms"),
                f"must be longer than call.debounce_ms ({cfg.call.debounce_ms}); a hook flash is "
                "a debounced on-hook that ends before flash_max_ms",
            )
        )
    if cfg.storage.format == "sealed" and not cfg.sealing.recipients:
        out.append(
            (
                ("sealing", "recipients"),
                'storage.format = "sealed" needs at least one head-office key: '
                "sealing.recipients = [\"age1…\"] (from 'linetap-office enroll')",
            )
        )
    if cfg.storage.format == "wav" and not cfg.development.allow_plain_audio:
        # Promise 3: plain audio never reaches persistent storage on the device.
        out.append(
            (
                ("storage", "format"),
                '"wav" writes plain recordings to storage, which an appliance must never'
                ' do; use format = "sealed" (or, on a development machine only, set'
                " [development] allow_plain_audio = true)",
            )
        )
    if cfg.audio.backend == "file" and cfg.audio.file is None:
        out.append(
            (("audio", "file"), 'audio.backend = "file" needs audio.file = "path/to/line.wav"')
        )
    serial_devices: dict[str, str] = {}
    for i, line in enumerate(cfg.lines):
        unit = line.caller_id_serial
        if unit is None:
            continue
        if unit.backend != "sim" and unit.script is not None:
            out.append(
                (
                    ("lines", i, "caller_id_serial", "script"),
                    'a script drives only backend = "sim"; a real port prints what the unit sends',
                )
            )
        if unit.backend == "pyserial":
            if unit.device in serial_devices:
                out.append(
                    (
                        ("lines", i, "caller_id_serial", "device"),
                        f"{unit.device} is already the caller-ID unit of "
                        f"{serial_devices[unit.device]}; one unit reports one line",
                    )
                )
            serial_devices[unit.device] = f"line {line.name}"
    return out + announce_problems(cfg)


# --------------------------------------------------------------------------------------
# Loading and error reporting

_HEADER_RE = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]?\s*(#.*)?$")
_KEY_RE = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*=")


def _key_lines(text: str) -> dict[tuple[str | int, ...], int]:
    """Map each table and key path of a TOML document to its 1-based line number.

    Enough TOML for error reporting: table headers, arrays of tables and plain keys.
    """
    where: dict[tuple[str | int, ...], int] = {}
    table: tuple[str | int, ...] = ()
    array_counts: dict[tuple[str, ...], int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        header = _HEADER_RE.match(raw)
        if header:
            parts = tuple(p.strip().strip("\"'") for p in header.group(2).split("."))
            if header.group(1) == "[[":
                index = array_counts.get(parts, -1) + 1
                array_counts[parts] = index
                table = (*parts, index)
            else:
                # [lines.caller_id_serial] is a sub-table of the latest [[lines]] element.
                table = parts
                for cut in range(len(parts) - 1, 0, -1):
                    if parts[:cut] in array_counts:
                        table = (*parts[:cut], array_counts[parts[:cut]], *parts[cut:])
                        break
            where.setdefault(table, number)
            continue
        key = _KEY_RE.match(raw)
        if key:
            where.setdefault((*table, key.group(1)), number)
    return where


def _locate(where: dict[tuple[str | int, ...], int], loc: tuple[str | int, ...]) -> int | None:
    for cut in range(len(loc), 0, -1):
        if loc[:cut] in where:
            return where[loc[:cut]]
    return None


def _key_name(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _model_at(loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class that owns the last key of ``loc``."""
    model: type[BaseModel] | None = LinetapConfig
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        candidates = [ann, *args]
        model = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
    return model


def _describe(loc: Sequence[str | int]) -> str | None:
    if not loc or isinstance(loc[-1], int):
        return None
    model = _model_at(loc)
    if model is None:
        return None
    field = model.model_fields.get(str(loc[-1]))
    return field.description if field else None


def _problem_text(err: Any) -> tuple[tuple[str | int, ...], str]:
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        model = _model_at(loc)
        known = list(model.model_fields) if model else []
        guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean {guess[0]!r}?" if guess else f"known keys here: {', '.join(known)}"
        return loc, f"unknown key; {hint}"
    if kind == "missing":
        desc = _describe(loc)
        return loc, "missing" + (f"; add it: {desc}" if desc else "")
    message = str(err["msg"])
    desc = _describe(loc)
    return loc, message + (f"; {desc}" if desc else "")


def parse_config(text: str, source: str = "<config>", base: Path | None = None) -> LinetapConfig:
    """Validate TOML ``text`` (relative prompt files are taken from ``base``); raises
    :class:`ConfigError` with one line per problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"at line (\d+)", str(exc))
        at = f":{match.group(1)}" if match else ""
        raise ConfigError([f"{source}{at}: not valid TOML ({exc}); fix the syntax"]) from None
    try:
        return LinetapConfig.model_validate(data, context={CONFIG_DIR: base})
    except ValidationError as exc:
        where = _key_lines(text)
        problems: list[str] = []
        for err in exc.errors():
            cause = (err.get("ctx") or {}).get("error")
            items = (
                cause.problems if isinstance(cause, _CrossFieldProblems) else [_problem_text(err)]
            )
            for loc, message in items:
                line_no = _locate(where, loc)
                prefix = f"{source}:{line_no}" if line_no else source
                problems.append(f"{prefix}: {_key_name(loc)}: {message}")
        raise ConfigError(problems) from None


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--config, else $LINETAP_CONFIG, else /etc/linetap/linetap.toml."""
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get(CONFIG_PATH_ENV)
    return Path(env) if env else DEFAULT_CONFIG_PATH


def load_config(path: str | os.PathLike[str] | None = None) -> LinetapConfig:
    """Read and validate the config file; relative paths inside it are taken from its folder
    (the real one: an appliance's /etc/linetap/linetap.toml is a link into the data
    partition, where first boot puts the files the config names)."""
    file = config_path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            [f"{file}: no such file; copy firmware/linetap.example.toml there or pass --config"]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            [f"{file}: cannot read ({exc}); check the path and its permissions"]
        ) from None
    folder = file.resolve().parent
    cfg = parse_config(text, str(file), folder)
    return _resolve_paths(cfg, folder)


def _resolve_paths(cfg: LinetapConfig, base: Path) -> LinetapConfig:
    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p)

    return cfg.model_copy(
        update={
            "audio": cfg.audio.model_copy(update={"file": fix(cfg.audio.file)}),
            "gpio": cfg.gpio.model_copy(update={"script": fix(cfg.gpio.script)}),
            "storage": cfg.storage.model_copy(
                update={
                    "out_dir": fix(cfg.storage.out_dir),
                    "data_dir": fix(cfg.storage.data_dir),
                    "runtime_dir": fix(cfg.storage.runtime_dir),
                }
            ),
            "sealing": cfg.sealing.model_copy(update={"device_key": fix(cfg.sealing.device_key)}),
            "upload": cfg.upload.model_copy(
                update={
                    "ca_file": fix(cfg.upload.ca_file),
                    "cert_file": fix(cfg.upload.cert_file),
                    "key_file": fix(cfg.upload.key_file),
                }
            ),
        }
    )
