"""The recording announcement's settings: per line ``announce``, ``announce_file`` and
``announce_channel`` (:class:`LineAnnounceKeys`, a base of ``LineConfig``), the
``[announce]`` section (:class:`AnnounceConfig`), the rules that span both
(:func:`announce_problems`) and the prompt WAV's check (:func:`read_prompt_file`).

Only the standard library is used here (``wave`` reads the prompt): the uploader loads
``firmware.config`` and must not load numpy or soundfile with it.
"""

from __future__ import annotations

import hashlib
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

if TYPE_CHECKING:
    from firmware.config import LineConfig, LinetapConfig

AnnounceMode = Literal["off", "tone", "file", "file+tone"]
PROMPT_MODES = frozenset({"file", "file+tone"})
TONE_MODES = frozenset({"tone", "file+tone"})
MAX_PROMPT_S = 30.0
# The validation context key under which parse_config passes the config file's folder,
# which a relative announce_file is taken from (as load_config does for other paths).
CONFIG_DIR = "config_dir"

Problem = tuple[tuple[str | int, ...], str]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=False)


class LineAnnounceKeys(_Model):
    """The per-line announcement keys (``[[lines]]``)."""

    announce: AnnounceMode = Field(
        "off",
        description='tell callers the call is recorded: "off", "tone" (a beep every'
        ' announce.period_s), "file" (announce_file at the start) or "file+tone"',
    )
    announce_file: Path | None = Field(
        None,
        description='WAV prompt played when the recording starts (announce = "file" or'
        ' "file+tone"): 16-bit mono at audio.sample_rate, at most 30 s',
    )
    announce_channel: int | None = Field(
        None,
        ge=0,
        le=7,
        description="playback channel of this line's announcement (0-based; default: its capture channel)",
    )

    @field_validator("announce_file")
    @classmethod
    def _from_config_dir(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        base = (info.context or {}).get(CONFIG_DIR)
        if value is None or value.is_absolute() or base is None:
            return value
        return Path(base) / value


class AnnounceConfig(_Model):
    """``[announce]``: where and how announcements are played."""

    device: str | None = Field(
        None,
        min_length=1,
        description="ALSA playback PCM of the announcements ('aplay -L'); default: audio.device",
    )
    channels: int | None = Field(
        None,
        ge=1,
        le=8,
        description="interleaved channels the playback device takes (1-8); default: audio.channels",
    )
    tone_hz: int = Field(
        1400, ge=100, le=7900, description="tone frequency in Hz (100-7900); the convention is 1400"
    )
    tone_s: float = Field(
        0.5,
        ge=0.05,
        le=5,
        description="length of one tone in seconds (0.05-5); the convention is 0.5",
    )
    period_s: float = Field(
        15.0,
        ge=1,
        le=600,
        description="seconds from one tone's start to the next (1-600); the convention is 15",
    )
    level_dbfs: float = Field(
        -12.0,
        ge=-60,
        le=0,
        description="tone level in dBFS, a full-scale sine being 0 (-60-0); the prompt plays as recorded",
    )
    reopen_s: float | None = Field(
        None,
        gt=0,
        le=60,
        description="seconds between attempts to reopen a failed playback device (0-60); default: audio.reopen_s",
    )


@dataclass(frozen=True, slots=True)
class AnnounceDevice:
    """``[announce]`` with its defaults taken from ``[audio]``."""

    device: str
    channels: int
    sample_rate: int
    period_frames: int
    periods: int
    reopen_s: float


def announce_device(cfg: LinetapConfig) -> AnnounceDevice:
    a, audio = cfg.announce, cfg.audio
    return AnnounceDevice(
        device=a.device if a.device is not None else audio.device,
        channels=a.channels if a.channels is not None else audio.channels,
        sample_rate=audio.sample_rate,
        period_frames=audio.period_frames,
        periods=audio.periods,
        reopen_s=a.reopen_s if a.reopen_s is not None else audio.reopen_s,
    )


def playback_channel(line: LineConfig) -> int:
    return line.announce_channel if line.announce_channel is not None else line.channel


def announcing_lines(cfg: LinetapConfig) -> list[LineConfig]:
    return [line for line in cfg.lines if line.announce != "off"]


# -- the prompt -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PromptFile:
    """A checked prompt: little-endian int16 mono PCM at the capture rate."""

    path: Path
    sha256: str  # of the whole WAV file, as the manifest's announce events name it
    frames: int
    pcm: bytes


class PromptError(ValueError):
    """The prompt WAV cannot be played as it is; the message says why and how to fix it."""


def read_prompt_file(path: Path, rate: int) -> PromptFile:
    """Read and check ``path``: a 16-bit PCM mono WAV at ``rate`` Hz, 30 s at most."""
    convert = f"convert it: sox {path} -r {rate} -c 1 -b 16 {path.with_suffix('')}-{rate}.wav"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PromptError(
            f"{path}: cannot read ({exc.strerror or exc}); check the path and its permissions"
        ) from None
    try:
        with wave.open(str(path), "rb") as wav:
            channels, width = wav.getnchannels(), wav.getsampwidth()
            wav_rate, frames = wav.getframerate(), wav.getnframes()
            pcm = wav.readframes(frames)
    except (wave.Error, EOFError) as exc:
        raise PromptError(f"{path}: not a PCM WAV file ({exc}); {convert}") from None
    if channels != 1:
        raise PromptError(f"{path}: {channels} channels, a prompt must be mono; {convert}")
    if width != 2:
        raise PromptError(f"{path}: {8 * width}-bit samples, a prompt must be 16-bit; {convert}")
    if wav_rate != rate:
        raise PromptError(
            f"{path}: recorded at {wav_rate} Hz, but audio.sample_rate is {rate} Hz; {convert}"
        )
    frames = len(pcm) // 2
    if frames == 0:
        raise PromptError(f"{path}: holds no audio; record the prompt again")
    if frames > MAX_PROMPT_S * rate:
        raise PromptError(
            f"{path}: {frames / rate:.1f} s long, a prompt may last {MAX_PROMPT_S:g} s at most;"
            f" shorten it: sox {path} {path.with_suffix('')}-short.wav trim 0 {MAX_PROMPT_S:g}"
        )
    return PromptFile(path, hashlib.sha256(data).hexdigest(), frames, pcm)


# -- rules across keys ------------------------------------------------------------------


def announce_problems(cfg: LinetapConfig) -> list[Problem]:
    """Rules that involve the announcement and other keys, as (key path, message + fix)."""
    out: list[Problem] = []
    dev = announce_device(cfg)
    rate = cfg.audio.sample_rate
    used: dict[int, str] = {}
    for i, line in enumerate(cfg.lines):
        out += _prompt_problems(i, line, rate)
        if line.announce == "off":
            continue
        channel = playback_channel(line)
        key = "announce_channel" if line.announce_channel is not None else "channel"
        if channel >= dev.channels:
            out.append(
                (
                    ("lines", i, key),
                    f"playback channel {channel} does not exist: the announcement device has"
                    f" {dev.channels} channel(s) (announce.channels, default audio.channels);"
                    " set lines.announce_channel or raise announce.channels",
                )
            )
        if channel in used:
            out.append(
                (
                    ("lines", i, key),
                    f"playback channel {channel} already announces line {used[channel]!r};"
                    " give each announcing line its own announce_channel",
                )
            )
        used.setdefault(channel, line.name)
    a = cfg.announce
    if a.tone_hz >= rate / 2:
        out.append(
            (
                ("announce", "tone_hz"),
                f"{a.tone_hz} Hz cannot be played at audio.sample_rate {rate} Hz (it must stay"
                f" below {rate // 2} Hz); lower announce.tone_hz (the convention is 1400)",
            )
        )
    if a.tone_s >= a.period_s:
        out.append(
            (
                ("announce", "tone_s"),
                f"a {a.tone_s:g} s tone does not fit in announce.period_s = {a.period_s:g} s;"
                " make the tone shorter than the period",
            )
        )
    return out


def _prompt_problems(i: int, line: LineConfig, rate: int) -> list[Problem]:
    where = ("lines", i, "announce_file")
    if line.announce in PROMPT_MODES:
        if line.announce_file is None:
            return [
                (
                    where,
                    f'announce = "{line.announce}" plays a WAV prompt: set'
                    ' announce_file = "/etc/linetap/announce.wav"',
                )
            ]
        try:
            read_prompt_file(line.announce_file, rate)
        except PromptError as exc:
            return [(where, str(exc))]
        return []
    if line.announce_file is not None:
        return [
            (
                where,
                f'a prompt is played only when announce = "file" or "file+tone" (here'
                f' "{line.announce}"); remove announce_file or change announce',
            )
        ]
    return []
