"""The audio device and each line's signal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from drivers.audio import CaptureSource, Int16Frames
from firmware.config import (
    AudioConfig,
    LineConfig,
)
from firmware.dsp.levels import (
    SILENCE_DBFS,
    hum_is_bad,
    hum_is_noticeable,
    levels,
    line_is_silent,
)
from firmware.errors import AudioDeviceBusyError, AudioDeviceError, AudioFileError
from firmware.tools._checks.base import (
    CAPTURE_S,
    CLIP_FAIL_FRACTION,
    MIN_CAPTURE_S,
    Check,
    Status,
    _combine,
    split_fix,
)


def recorder_running(status: Mapping[str, Any]) -> bool:
    """Whether ``firmware.runstate.read_recorder_status`` found a fresh status file."""
    return "state" not in status and isinstance(status.get("lines"), list)


def _source_name(audio: AudioConfig) -> str:
    if audio.backend == "alsa":
        return f"audio.device {audio.device!r}"
    return f"audio.file {audio.file}"


def _read_frames(capture: CaptureSource, frames: int) -> tuple[Int16Frames, int]:
    """Up to ``frames`` frames (fewer if the source ends) and the frames lost to overruns."""
    blocks: list[Int16Frames] = []
    got = 0
    lost = 0
    while got < frames:
        block = capture.read()
        if block is None:
            break
        lost += block.gap_frames
        # Sources may reuse the block's buffer: keep a copy.
        blocks.append(block.samples[: frames - got].copy())
        got += blocks[-1].shape[0]
    if not blocks:
        return np.zeros((0, capture.channels), dtype=np.int16), lost
    return np.concatenate(blocks), lost


def check_audio(
    capture: CaptureSource,
    audio: AudioConfig,
    recorder: Mapping[str, Any] | None,
    *,
    seconds: float = CAPTURE_S,
) -> tuple[Check, Int16Frames | None]:
    """Open the capture source as configured, read ``seconds`` of audio, close it.

    Returns the check and the captured frames (``None`` when nothing could be read).
    ``recorder`` is the running recorder's status, if it runs: it holds the device.
    """
    where = _source_name(audio)
    try:
        capture.open()
    except (AudioDeviceError, AudioFileError) as exc:
        if isinstance(exc, AudioDeviceBusyError):
            if recorder is not None:
                fault = (recorder.get("faults") or {}).get("audio")
                state = f" (it reports: {fault})" if fault else " (it reports no audio fault)"
                return Check(
                    "audio",
                    Status.WARN,
                    f"{where} is busy: the running recorder (pid {recorder.get('pid', '?')})"
                    f" captures from it{state}, so line levels are not measured here",
                    "stop the recorder ('systemctl stop linetap-recorder') and run"
                    " 'linetap check' again to measure the lines",
                ), None
            return Check(
                "audio",
                Status.FAIL,
                f"{where} is busy, and the recorder is not running: another program holds it",
                "find it with 'fuser -v /dev/snd/*' and stop it: only the recorder may"
                " capture from the HAT",
            ), None
        message, fix = split_fix(str(exc))
        if audio.backend == "alsa" and fix is None:
            fix = "'arecord -L' lists the capture devices; set audio.device to the HAT's"
        return Check("audio", Status.FAIL, message, fix), None
    try:
        wanted = round(seconds * audio.sample_rate)
        samples, lost = _read_frames(capture, wanted)
    except (AudioDeviceError, AudioFileError) as exc:
        message, fix = split_fix(str(exc))
        return Check("audio", Status.FAIL, message, fix), None
    finally:
        capture.close()
    got_s = samples.shape[0] / audio.sample_rate
    opened = (
        f"{where}: {audio.channels} channel(s) at {audio.sample_rate} Hz"
        f" {audio.sample_format}, {got_s:.2f} s captured"
    )
    if samples.shape[0] == 0:
        return Check(
            "audio",
            Status.FAIL,
            f"{where}: opened, but it delivered no audio",
            "check the HAT's clock and 'dmesg' for I2S errors"
            if audio.backend == "alsa"
            else "audio.file is empty: give a recording of the line",
        ), None
    if got_s < MIN_CAPTURE_S:
        return Check(
            "audio",
            Status.WARN,
            f"{opened}: too little to judge the lines by (under {MIN_CAPTURE_S:g} s)",
            "give a longer audio.file" if audio.backend == "file" else None,
        ), samples
    if lost:
        return Check(
            "audio",
            Status.WARN,
            f"{opened}; {lost} frame(s) lost to overruns while capturing",
            "the system is too busy to read the HAT in time: check 'top' for runaway"
            " processes, or raise audio.periods",
        ), samples
    return Check("audio", Status.PASS, opened), samples


def check_signal(line: LineConfig, samples: Int16Frames, rate: int, off_hook: bool | None) -> Check:
    """One line's capture (a 1-D channel): not silent, not clipping, no strong hum.

    ``off_hook`` (from the hook input, ``None`` if unknown) decides how bad silence is:
    an on-hook line may be quiet, an off-hook one carries dial tone or speech.
    """
    check_id = f"signal.{line.name}"
    lv = levels(samples, rate)
    name = f"{line.name} (channel {line.channel})"
    hum_items = list(lv["hum"].items())
    hum_key, hum_dbfs = max(hum_items, key=lambda kv: kv[1]) if hum_items else ("", -120.0)
    hum_hz = hum_key.removesuffix("hz_dbfs")
    frames = int(samples.shape[0])
    clipped = int(lv["clipped_samples"])
    found: list[tuple[Status, str, str | None]] = []

    if line_is_silent(lv["silence_fraction"]):
        quiet = (
            f"{name} is silent: under {SILENCE_DBFS:g} dBFS {lv['silence_fraction']:.0%} of the"
            f" time (RMS {lv['rms_dbfs']} dBFS, peak {lv['peak_dbfs']} dBFS)"
        )
        wiring = (
            f"check the tap's wiring to this line (the HAT's channel {line.channel} input)"
            " and the capture gain ('alsamixer')"
        )
        if off_hook:
            found.append(
                (Status.FAIL, f"{quiet} although it is off-hook", f"{wiring}; dial tone must show")
            )
        elif off_hook is None:
            found.append(
                (Status.WARN, quiet, f"lift the handset (dial tone) and check again; {wiring}")
            )
        else:
            found.append(
                (
                    Status.WARN,
                    f"{quiet}, as an on-hook line may be",
                    "lift the handset (dial tone) and run 'linetap check' again: an off-hook"
                    f" line must not be silent; if it is, {wiring}",
                )
            )
    if clipped:
        share = clipped / frames if frames else 0.0
        status = Status.FAIL if share > CLIP_FAIL_FRACTION else Status.WARN
        found.append(
            (
                status,
                f"{name} clips: {clipped} sample(s) at full scale ({share:.2%})",
                "lower the capture gain ('alsamixer', capture controls) or the tap's level",
            )
        )
    if hum_is_noticeable(hum_dbfs, float(lv["rms_dbfs"])):
        status = Status.FAIL if hum_is_bad(hum_dbfs) else Status.WARN
        found.append(
            (
                status,
                f"{name} has {hum_hz} Hz mains hum at {hum_dbfs} dBFS",
                "earth the HAT and the Pi at one point, keep the line cable away from mains"
                " cables and power supplies, or put an isolating transformer in the tap",
            )
        )
    hum_text = f"{hum_hz} Hz hum {hum_dbfs} dBFS" if hum_items else "hum not measured"
    ok = (
        f"{name}: RMS {lv['rms_dbfs']} dBFS, peak {lv['peak_dbfs']} dBFS, no clipping,"
        f" {hum_text}, silent {lv['silence_fraction']:.0%} of the time"
    )
    return _combine(check_id, found, ok)


# -- GPIO ---------------------------------------------------------------------------------
