"""`linetap analyze FILE [--json]`: the line detectors over a recorded file.

Caller ID (FSK Bell 202 / V.23, and DTMF CLIP), DTMF digits with times, and levels per
channel — the same detector code the recorder runs, fed in 20 ms blocks. Any sample
rate is accepted: audio is resampled (polyphase, numpy) to 8 kHz for the detectors;
levels are measured at the file's own rate.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile

from firmware.dsp.cid_messages import CallerIdMessage, parse_dtmf_clip
from firmware.dsp.dtmf import DtmfDetector, DtmfEvent
from firmware.dsp.fsk import CallerIdDecoder
from firmware.dsp.highpass import HumFilter
from firmware.dsp.levels import levels
from firmware.errors import AudioFileError

DETECTOR_RATES = (8000, 16000)
BLOCK_S = 0.02


RESAMPLE_CHUNK = 32768  # output samples per step: bounds memory whatever the file length


def resample(x: npt.NDArray[np.int16], rate: int, target: int) -> npt.NDArray[np.int16]:
    """Band-limited rational resampling (Kaiser-windowed sinc), polyphase: each output
    sample is computed from the ~taps/up input samples it depends on, in chunks, so
    memory stays bounded for long files."""
    if rate == target or x.shape[0] == 0:
        return x
    g = math.gcd(rate, target)
    up, down = target // g, rate // g
    cutoff = 0.5 / max(up, down) * 0.95
    taps = 32 * max(up, down) + 1
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(taps, 8.0) * up
    delay = (taps - 1) // 2  # linear phase: keep the output aligned with the input
    span = -(-taps // up) + 1
    xf = x.astype(np.float64)
    out_len = -(-x.shape[0] * up // down)
    out = np.empty(out_len, dtype=np.float64)
    back = np.arange(span)
    for start in range(0, out_len, RESAMPLE_CHUNK):
        pos = np.arange(start, min(out_len, start + RESAMPLE_CHUNK)) * down + delay
        m = (pos // up)[:, None] - back[None, :]  # input samples that can reach pos
        k = pos[:, None] - m * up  # their filter taps
        valid = (k < taps) & (m >= 0) & (m < x.shape[0])
        terms = xf[np.clip(m, 0, x.shape[0] - 1)] * h[np.clip(k, 0, taps - 1)]
        out[start : start + pos.shape[0]] = np.where(valid, terms, 0.0).sum(axis=1)
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)


def _detector_rate(rate: int) -> int:
    return rate if rate in DETECTOR_RATES else 8000


def analyze_channel(samples: npt.NDArray[np.int16], rate: int) -> dict[str, Any]:
    drate = _detector_rate(rate)
    x = resample(samples, rate, drate)
    dtmf = DtmfDetector(drate)
    cid = CallerIdDecoder(drate)
    # The detectors hear what the recorder's do: the line through the mains-hum high-pass
    # (firmware.dsp.analyser); the levels below see the raw line (they report the hum).
    hum_filter = HumFilter(drate)
    block = round(BLOCK_S * drate)
    digits: list[DtmfEvent] = []
    messages: list[CallerIdMessage] = []
    for start in range(0, x.shape[0], block):
        chunk = hum_filter.filter(x[start : start + block])
        digits += dtmf.process(chunk, start)
        messages += cid.process(chunk, start)
    digits += dtmf.flush()
    clips = parse_dtmf_clip(
        [(e.digit, e.start_frame / drate) for e in digits], rate=drate, errors=cid.errors
    )
    found = [*messages, *clips]
    return {
        "caller_id": [
            {
                "number": m.number,
                "name": m.name,
                "time": m.time,
                "standard": m.standard,
                "format": m.format,
                "start_s": round(m.start_frame / drate, 3),
                "absence_number": m.absence_number,
                "absence_name": m.absence_name,
            }
            for m in sorted(found, key=lambda m: m.start_frame)
        ],
        "dtmf": [
            {
                "digit": e.digit,
                "start_s": round(e.start_frame / drate, 3),
                "end_s": round(e.end_frame / drate, 3),
            }
            for e in digits
        ],
        "errors": [
            {"standard": e.standard, "reason": e.reason, "start_s": round(e.start_frame / drate, 3)}
            for e in cid.errors
        ],
        "levels": levels(samples, rate),
    }


def analyze_file(path: Path) -> dict[str, Any]:
    try:
        data, rate = soundfile.read(path, dtype="int16", always_2d=True)
    except (soundfile.SoundFileError, OSError) as exc:
        raise AudioFileError(f"audio file {path}: cannot read ({exc})") from None
    channels = [
        analyze_channel(np.ascontiguousarray(data[:, c]), int(rate)) for c in range(data.shape[1])
    ]
    return {
        "file": str(path),
        "sample_rate": int(rate),
        "seconds": round(data.shape[0] / rate, 3),
        # The issue's shape: one list each for the whole file, channel-tagged.
        "caller_id": [
            {**m, "channel": c} for c, ch in enumerate(channels) for m in ch["caller_id"]
        ],
        "dtmf": [{**d, "channel": c} for c, ch in enumerate(channels) for d in ch["dtmf"]],
        "errors": [{**e, "channel": c} for c, ch in enumerate(channels) for e in ch["errors"]],
        "levels": [ch["levels"] for ch in channels],
    }
