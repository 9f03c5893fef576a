"""The recording announcement: a short test tone on each announcing line's channel."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from drivers.audio.playback import AlsaPlayback
from firmware.announce import ToneSpec, tone_burst
from firmware.announce_config import playback_channel
from firmware.config import LineConfig
from firmware.errors import AudioDeviceError
from firmware.tools._checks.base import Check, Status, split_fix

# Long enough to hear and to tell the line by, short enough not to annoy a caller on it.
CHECK_TONE_S = 0.3
# Silence after each test tone, so two lines' tones are heard apart.
CHECK_GAP_S = 0.2


def check_announce(
    lines: Sequence[LineConfig],
    playback: AlsaPlayback,
    tone: ToneSpec,
    recorder: Mapping[str, Any] | None,
) -> list[Check]:
    """Play a ``tone`` on each of ``lines``' playback channels, one after the other, on
    ``playback`` (opened blocking here, closed after); one check ``announce.LINE`` each.

    ``recorder`` is the running recorder's status, if it runs: it holds the device.
    """
    where = f"announce.device {playback.device!r}"
    if recorder is not None:
        return [
            Check(
                f"announce.{line.name}",
                Status.SKIP,
                f"the running recorder (pid {recorder.get('pid', '?')}) holds {where}",
                "stop it ('systemctl stop linetap-recorder') to play the test tones",
            )
            for line in lines
        ]
    try:
        playback.open()
    except AudioDeviceError as exc:
        message, fix = split_fix(str(exc))
        return [Check(f"announce.{line.name}", Status.FAIL, message, fix) for line in lines]
    out: list[Check] = []
    try:
        gap = np.zeros((round(CHECK_GAP_S * tone.rate), playback.channels), dtype=np.int16)
        for line in lines:
            channel = playback_channel(line)
            block = np.zeros((tone.frames, playback.channels), dtype=np.int16)
            block[:, channel] = tone_burst(tone)
            try:
                playback.write(block)
                playback.write(gap)
            except AudioDeviceError as exc:
                message, fix = split_fix(str(exc))
                out.append(Check(f"announce.{line.name}", Status.FAIL, message, fix))
                continue
            out.append(
                Check(
                    f"announce.{line.name}",
                    Status.PASS,
                    f"played a {tone.frames / tone.rate:g} s {tone.hz} Hz tone on {where}"
                    f" channel {channel} ({line.name}, announce = {line.announce!r}):"
                    " it should be heard on the line",
                )
            )
        playback.drain()
    finally:
        playback.close()
    return out
